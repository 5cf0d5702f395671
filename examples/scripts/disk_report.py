"""Reports how full a filesystem is."""

import json
import shutil
import sys

request = json.load(sys.stdin)
usage = shutil.disk_usage(request.get("path", "/"))
print(
    json.dumps(
        {
            "path": request.get("path", "/"),
            "total_gb": round(usage.total / 1e9, 1),
            "free_gb": round(usage.free / 1e9, 1),
            "used_pct": round(100 * usage.used / usage.total, 1),
        }
    )
)

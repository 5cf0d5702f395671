"""Says it is alive: echoes its input with the time and where it ran."""

import json
import os
import sys
import time

request = json.load(sys.stdin)
print(
    json.dumps(
        {
            "alive": True,
            "greeting": request.get("greeting"),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pid": os.getpid(),
            "run_id": os.environ.get("ACTOR_RUN_ID"),
        }
    )
)

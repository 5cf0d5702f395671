"""Fails on purpose: a permanent failure (exit 1) with an explanation on stdout and stderr."""

import json
import sys

print("about to fail on purpose", file=sys.stderr)
print(json.dumps({"error": "this actor always fails, to show failure handling"}))
sys.exit(1)

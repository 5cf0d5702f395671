"""Runs once at start-up: checks that the sandbox looks as expected."""

import json
import os
import sys

json.load(sys.stdin)
print(
    json.dumps(
        {
            "cwd": os.getcwd(),
            "uid": os.getuid(),
            "env": sorted(os.environ),
        }
    )
)

"""Greets someone in their language, with phrases from a helper module next to this file."""

import json
import sys

from phrases import greet  # resolved from this script's own folder

request = json.load(sys.stdin)
print(json.dumps({"message": greet(request.get("name", "world"), request.get("language", "en"))}))

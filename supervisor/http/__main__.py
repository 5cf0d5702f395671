"""``python -m supervisor.http``: the HTTP process (settings arrive as JSON on stdin)."""

import sys

from supervisor.http.server import main

sys.exit(main())

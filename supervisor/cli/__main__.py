"""``python -m supervisor.cli``: the same as the ``actor-supervisor`` console script."""

import sys

from supervisor.cli import main

sys.exit(main())

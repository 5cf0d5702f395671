"""Shared fixtures. The environment is scrubbed first so a developer's settings never leak in."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

for _name in [n for n in os.environ if n.startswith("ACTOR_SUPERVISOR_")]:
    if _name not in ("ACTOR_SUPERVISOR_TEST_DSN", "ACTOR_SUPERVISOR_REQUIRE_POSTGRES"):
        del os.environ[_name]


@pytest.fixture
def public_tmp() -> Iterator[Path]:
    """A temporary folder every user can read and enter.

    When the tests run as root, scripts run as ``nobody``, which cannot enter pytest's private
    ``tmp_path`` (mode 0700); script folders must live here instead.
    """
    path = Path(tempfile.mkdtemp(prefix="actor-supervisor-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

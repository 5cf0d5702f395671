"""Shared fixtures. The environment is scrubbed first so a developer's settings never leak in."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests by cost (README, Development). ``unit``: everything under tests/unit/ -- in-process, no
# child processes. ``e2e``: these modules start a real supervisor (or a browser against one), as
# does a test using one of _E2E_FIXTURES or marked ``@pytest.mark.e2e`` itself.
# ``integration``: the rest -- real processes, files or PostgreSQL, but no supervisor (store
# conformance, launcher, worker, codec, config, CLI commands that need no running supervisor).
_E2E_MODULES = frozenset(
    {
        "tests/hostile/test_disk.py",
        "tests/hostile/test_reach.py",
        "tests/hostile/test_run_isolation.py",
        "tests/http/test_api.py",
        "tests/http/test_dashboard.py",
        "tests/http/test_hostile.py",
        "tests/http/test_lifecycle.py",
        "tests/http/test_metrics.py",
        "tests/http/test_postgres.py",
        "tests/http/test_workflows.py",
        "tests/supervisor/test_alerts.py",
        "tests/supervisor/test_bounds.py",
        "tests/supervisor/test_breaker.py",
        "tests/supervisor/test_bundles.py",
        "tests/supervisor/test_check.py",
        "tests/supervisor/test_cli_runs.py",
        "tests/supervisor/test_code_runs.py",
        "tests/supervisor/test_core.py",
        "tests/supervisor/test_curve.py",
        "tests/supervisor/test_floods.py",
        "tests/supervisor/test_ops_e2e.py",
        "tests/supervisor/test_deploy.py",
        "tests/supervisor/test_lease.py",
        "tests/supervisor/test_outage.py",
        "tests/supervisor/test_recovery.py",
        "tests/supervisor/test_reload.py",
        "tests/supervisor/test_retries.py",
        "tests/supervisor/test_scheduler.py",
        "tests/supervisor/test_store_faults.py",
        "tests/test_benchmarks.py",
    }
)
# Fixtures that start a supervisor: a test using one is e2e wherever it lives.
_E2E_FIXTURES = frozenset({"supervisors", "http_sup"})
_ROOT = Path(__file__).resolve().parent.parent


def _cost(item: pytest.Item) -> str:
    module = item.path.resolve().relative_to(_ROOT).as_posix()
    if module.startswith("tests/unit/"):
        return "unit"
    if module in _E2E_MODULES or _E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "e2e"
    if item.get_closest_marker("e2e"):  # one test of a module that otherwise starts none
        return "e2e"
    return "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(_cost(item))


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

"""``actor-supervisor check`` and ``start --dry-run``: what they report, and that they touch
nothing (no database file created, an existing one unchanged)."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.supervisor.harness import ECHO, write_script

CONFIG = """\
[[actors]]
name = "nightly"
script = "scripts/echo.py"
schedule = { type = "cron", expression = "30 2 * * *" }
timezone = "Europe/Berlin"

[[actors]]
name = "on-demand"
script = "scripts/echo.py"
mode = "exec"
"""


def _cli(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", *args, "--config", str(folder / "s.toml")],
        capture_output=True, text=True, timeout=60, cwd=folder,
    )  # fmt: skip


def _setup(folder: Path, config: str = CONFIG) -> None:
    write_script(folder, "echo.py", ECHO)
    (folder / "s.toml").write_text(config)


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    for path in sorted((folder / "state").rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path)] = (digest, path.stat().st_mtime_ns)
    return found


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(result.stdout)
    return data


def test_check_reports_scripts_interpreters_fires_and_pending_migrations_creating_nothing(
    public_tmp: Path,
) -> None:
    _setup(public_tmp)
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(result)
    assert report["ok"] is True and report["problems"] == []
    nightly, on_demand = report["actors"]
    assert nightly["readable"] is True and on_demand["readable"] is True
    assert on_demand["interpreter"] and "python" in on_demand["interpreter"]
    assert len(nightly["next_fires"]) == 5 and on_demand["next_fires"] == []
    first = nightly["next_fires"][0]
    assert first["local"][11:19] == "02:30:00" and first["local"][19:] in ("+01:00", "+02:00")
    assert first["utc"][11:19] in ("00:30:00", "01:30:00") and first["utc"].endswith("+00:00")
    assert report["store"]["exists"] is False
    assert report["store"]["pending_migrations"][0] == "0001_initial"
    assert not (public_tmp / "state").exists(), "check created the state folder"

    text = _cli(public_tmp, "start", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "next: " in text.stdout and "Europe/Berlin" in text.stdout
    assert text.stdout.endswith("ok\n")
    assert not (public_tmp / "state").exists(), "start --dry-run created the state folder"


def test_check_reads_an_existing_store_without_changing_it(public_tmp: Path) -> None:
    _setup(public_tmp)
    migrated = _cli(public_tmp, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    before = _snapshot(public_tmp)
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = _report(result)
    assert (report["store"]["exists"], report["store"]["pending_migrations"]) == (True, [])
    assert _snapshot(public_tmp) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox user exists only for root")
def test_a_script_the_sandbox_user_cannot_read_is_a_problem(public_tmp: Path) -> None:
    _setup(public_tmp)
    (public_tmp / "scripts" / "echo.py").chmod(0o600)
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 4
    problems = _report(result)["problems"]
    assert any("nightly" in p and "echo.py" in p for p in problems), problems


def test_an_invalid_configuration_exits_2_with_the_error(public_tmp: Path) -> None:
    _setup(public_tmp, CONFIG + "timout_s = 3\n")
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 2
    [problem] = _report(result)["problems"]
    assert "timout_s" in problem and "did you mean 'timeout_s'" in problem
    missing = _cli(public_tmp, "start", "--dry-run")
    assert missing.returncode == 2 and "PROBLEM" in missing.stdout


def test_an_unreachable_postgres_store_is_a_problem(public_tmp: Path) -> None:
    _setup(public_tmp, "[supervisor]\ndatabase = 'postgresql://nobody@127.0.0.1:1/none'\n" + CONFIG)
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 4
    report = _report(result)
    assert report["store"]["reachable"] is False
    assert any("127.0.0.1" in p for p in report["problems"]), report["problems"]


def test_the_deployment_example_configuration_passes_check(public_tmp: Path) -> None:
    """examples/deploy/supervisor.toml, laid out as the Dockerfile lays it out."""
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo / "examples" / "scripts", public_tmp / "scripts")
    for path in [public_tmp / "scripts", *(public_tmp / "scripts").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    (public_tmp / "s.toml").write_text((repo / "examples/deploy/supervisor.toml").read_text())
    (public_tmp / "s.toml").chmod(0o600)  # its webhooks are secrets: the Dockerfile's mode
    result = _cli(public_tmp, "check", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [a["name"] for a in _report(result)["alerts"]] == ["chat", "incidents"]
    assert (
        "chmod 600 /srv/actor-supervisor/supervisor.toml"
        in (repo / "examples/deploy/Dockerfile").read_text()
    )
    unit = (repo / "examples/deploy/actor-supervisor.service").read_text()
    for line in ("Type=notify", "KillMode=mixed", "WatchdogSec=", "ProtectSystem=strict",
                 "ReadWritePaths=/srv/actor-supervisor/state", "OOMScoreAdjust=-500"):  # fmt: skip
        assert f"\n{line}" in unit

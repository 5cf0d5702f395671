"""Code bundles and command actors end to end, on one real supervisor shared by the module.

A script's code is its bundle (the entry and the modules it imports from its folder): editing
a helper is drift, ``deploy`` records it, ``rollback --write-file`` restores every file, and
``exec_mode = "database"`` runs the stored helpers in both sandbox modes even after the files
on disk changed. A ``command`` actor runs any program with the same JSON contract, limits,
user and timeout.
"""

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from protocol.client import RunOutcome
from supervisor.code.sync import read_snapshot
from tests.supervisor.harness import RunningSupervisor, session_uids, start_supervisor

MAIN = """\
import json, sys
from phrases import greet
from lib import shout
request = json.load(sys.stdin)
print(json.dumps({"message": shout(greet(request.get("name", "world")))}))
"""
MAIN_V2 = MAIN.replace('{"message"', '{"v": 2, "message"')
PHRASES = 'def greet(name):\n    return "Hello, " + name\n'
PHRASES_V2 = 'def greet(name):\n    return "Howdy, " + name\n'
LIB = {
    "lib/__init__.py": "from .fmt import shout\n",
    "lib/fmt.py": "def shout(s):\n    return s + '!'\n",
}
ECHO = """\
#!/bin/sh
input=$(cat)
printf '{"input": %s, "arg": "%s", "actor": "%s", "uid": %s}\\n' \\
    "$input" "$1" "$ACTOR_NAME" "$(id -u)"
"""
ACTORS = """
[[actors]]
name = "greeter"
script = "scripts/greeter/main.py"
exec_mode = "database"

[[actors]]
name = "greeter-exec"
script = "scripts/greeter/main.py"
exec_mode = "database"
mode = "exec"

[[actors]]
name = "greeter-file"
script = "scripts/greeter/main.py"
sync = "before_run"

[[actors]]
name = "shell"
command = ["scripts/echo.sh", "first arg"]

[[actors]]
name = "sleeper"
command = ["/bin/sleep", "60"]
timeout_s = 1
max_retries = 0

[[actors]]
name = "limited"
command = ["/bin/sh", "-c", "printf '{\\"nofile\\": %s, \\"cwd\\": \\"%s\\"}' $(ulimit -n) $PWD"]
limits = { nofile = 77 }

[[actors]]
name = "nowhere"
command = ["scripts/nowhere.sh"]
"""


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    path.write_text(text)
    path.chmod(mode)


@pytest.fixture(scope="module")
def sup() -> Iterator[RunningSupervisor]:
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bundles-"))
    greeter = folder / "scripts" / "greeter"
    for rel, text in {"main.py": MAIN, "phrases.py": PHRASES, **LIB}.items():
        write(greeter / rel, text)
    write(folder / "scripts" / "echo.sh", ECHO, 0o755)
    running = start_supervisor(folder, ACTORS)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()
        shutil.rmtree(folder, ignore_errors=True)


def submit(sup: RunningSupervisor, actor: str, payload: Any = None) -> RunOutcome:
    with sup.client() as client:
        outcome = client.submit(actor, payload or {"name": "Ada"}, wait=True)
    assert isinstance(outcome, RunOutcome)
    return outcome


def cli(sup: RunningSupervisor, *args: str, code: int = 0) -> Any:
    done = sup.cli(*args, "--json")
    assert done.returncode == code, done.stdout + done.stderr
    return orjson.loads(done.stdout or done.stderr)


def drift(sup: RunningSupervisor, actor: str) -> dict[str, Any]:
    (row,) = cli(sup, "drift", actor)
    return dict(row)


@pytest.mark.timeout(180)
def test_a_helper_module_is_code_deploy_records_it_and_rollback_restores_every_file(
    sup: RunningSupervisor,
) -> None:
    folder = sup.folder / "scripts" / "greeter"
    originals = {p: p.read_bytes() for p in (folder / "main.py", folder / "phrases.py")}
    snap = read_snapshot(folder / "main.py")
    assert snap is not None
    for actor in ("greeter", "greeter-exec"):  # fork and exec mode, both from the stored bundle
        first = submit(sup, actor)
        assert first.succeeded and first.output == {"message": "Hello, Ada!"}
        assert (first.code_sha256, first.code_source) == (snap.sha256, "database")
    row = drift(sup, "greeter")
    assert row["status"] == "synced"
    assert row["files"] == ["main.py", "lib/__init__.py", "lib/fmt.py", "phrases.py"]

    write(folder / "phrases.py", PHRASES_V2)  # an edit to the helper alone is drift
    assert drift(sup, "greeter")["status"] == "drift_detected"
    for actor in ("greeter", "greeter-exec"):  # the stored helper runs, not the edited file
        assert submit(sup, actor).output == {"message": "Hello, Ada!"}
    # file mode runs the files; before_run records the helper's edit as a version first
    on_disk = submit(sup, "greeter-file")
    edited = read_snapshot(folder / "main.py")
    assert on_disk.output == {"message": "Howdy, Ada!"} and edited is not None
    assert (on_disk.code_sha256, on_disk.code_source) == (edited.sha256, "file")
    synced = cli(sup, "versions", "greeter-file")
    assert [(v["version_tag"], v["change_type"]) for v in synced] == [
        ("1.0.1", "auto_sync"), ("1.0.0", "initial"),
    ]  # fmt: skip
    assert synced[0]["history_id"] == on_disk.code_history_id

    write(folder / "main.py", MAIN_V2)
    deployed = cli(sup, "deploy", "greeter", "--changelog", "howdy")
    assert (deployed["recorded"], deployed["version"]) == (True, "1.0.1")
    assert deployed["supervisor"].startswith("the running supervisor uses it now")
    assert submit(sup, "greeter").output == {"v": 2, "message": "Howdy, Ada!"}
    assert submit(sup, "greeter-exec").output == {"message": "Hello, Ada!"}  # not deployed
    shown = cli(sup, "show-code", "greeter")
    assert shown["version_tag"] == "1.0.1" and list(shown["files"]) == [
        "main.py", "lib/__init__.py", "lib/fmt.py", "phrases.py",
    ]  # fmt: skip
    assert shown["files"]["phrases.py"] == PHRASES_V2 and shown["files"]["main.py"] == MAIN_V2
    text = sup.cli("show-code", "greeter", "--version", "1.0.0")
    assert text.returncode == 0 and f"==> phrases.py <==\n{PHRASES}" in text.stdout
    one = sup.cli("show-code", "greeter", "--file", "phrases.py")
    assert one.returncode == 0 and one.stdout == PHRASES_V2

    back = cli(sup, "rollback", "greeter", "--to-version", "1.0.0", "--write-file")
    assert (back["version"], back["rolled_back_to"], back["file_written"]) == (
        "1.0.2",
        "1.0.0",
        True,
    )
    assert {p: p.read_bytes() for p in originals} == originals  # both files as they were
    assert drift(sup, "greeter")["status"] == "synced"
    again = submit(sup, "greeter")
    assert again.output == {"message": "Hello, Ada!"} and again.code_sha256 == snap.sha256
    versions = cli(sup, "versions", "greeter")
    assert [(v["version_tag"], v["change_type"]) for v in versions] == [
        ("1.0.2", "rollback"), ("1.0.1", "manual_deploy"), ("1.0.0", "initial"),
    ]  # fmt: skip
    assert versions[1]["files"] == ["main.py", "lib/__init__.py", "lib/fmt.py", "phrases.py"]
    assert "script_code" not in versions[1] and "bundle_files" not in versions[1]


@pytest.mark.timeout(120)
def test_a_shell_command_actor_keeps_the_json_contract_limits_user_and_timeout(
    sup: RunningSupervisor,
) -> None:
    shell = submit(sup, "shell", {"x": [1, 2]})
    assert shell.succeeded, shell
    assert shell.output["input"] == {"x": [1, 2]}
    assert (shell.output["arg"], shell.output["actor"]) == ("first arg", "shell")
    if os.geteuid() == 0:  # a uid of its own from the range, as every script's run
        assert shell.output["uid"] in session_uids()
    program = sup.folder / "scripts" / "echo.sh"
    assert shell.code_sha256 == read_snapshot(program, scan=False).sha256  # type: ignore[union-attr]

    limited = submit(sup, "limited")
    assert limited.output == {"nofile": 77, "cwd": str(sup.folder)}  # the config's folder

    slept = submit(sup, "sleeper")
    assert (slept.status, slept.reason, slept.attempts) == ("failed_retryable", "timeout", 1)
    assert (slept.duration_ms or 0) < 30_000

    missing = submit(sup, "nowhere")
    assert (missing.status, missing.reason) == ("failed_permanent", "file_missing")

    assert drift(sup, "shell") | {"files": ["echo.sh"]} == drift(sup, "shell")
    assert drift(sup, "shell")["status"] == "synced"
    assert drift(sup, "sleeper")["status"] == "unversioned"
    refused = sup.cli("deploy", "sleeper")
    assert refused.returncode == 5 and "not versioned" in refused.stderr

    program.chmod(stat.S_IMODE(program.stat().st_mode) & ~0o111)  # and check says so
    report = orjson.loads(sup.cli("check", "--json").stdout)
    found = {a["name"]: a for a in report["actors"]}
    assert found["shell"]["executable"] is False and found["sleeper"]["executable"] is True
    assert any("shell" in p and "cannot execute" in p for p in report["problems"])
    denied = submit(sup, "shell")
    assert (denied.status, denied.reason) == ("failed_permanent", "sandbox_error")
    assert "Permission denied" in (denied.error or "")
    program.chmod(0o755)

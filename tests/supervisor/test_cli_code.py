"""The code commands straight on the database (no supervisor running), on SQLite and on
PostgreSQL: real script files, real stores, the real ``main()``."""

import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from supervisor.cli import main
from supervisor.store import open_store
from tests import pg

Cli = Callable[..., tuple[int, str, str]]


class Project:
    """A folder with ``supervisor.toml``, script files and a database URL."""

    def __init__(self, folder: Path, database: str) -> None:
        self.folder, self.database = folder, database
        self.config = folder / "supervisor.toml"
        (folder / "scripts").mkdir()

    def actors(self, **exec_modes: str) -> None:
        """One actor per name, script ``scripts/<name>.py``, in the given exec mode."""
        text = f'[supervisor]\ncontrol = "ipc://{self.folder}/none.sock"\n'
        for name, mode in exec_modes.items():
            text += f'[[actors]]\nname = "{name}"\nscript = "scripts/{name}.py"\n'
            text += f'exec_mode = "{mode}"\n'
        self.config.write_text(text)

    def script(self, name: str, body: str) -> Path:
        path = self.folder / "scripts" / f"{name}.py"
        path.write_text(body)
        return path


@pytest.fixture(params=["sqlite", "postgres"])
def project(request: pytest.FixtureRequest, public_tmp: Path) -> Iterator[Project]:
    if request.param == "sqlite":
        yield Project(public_tmp, "sqlite:state/actors.db")
        return
    with pg.fresh_database() as name:
        yield Project(public_tmp, pg.database_url(name))


@pytest.fixture
def cli(project: Project, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("deploy", "job", ...)`` -> (exit code, stdout, stderr), on the project."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([*args, "--config", str(project.config), "--database", project.database])
        out, err = capsys.readouterr()
        return code, out, err

    project.config.write_text("")
    assert run("migrate")[0] == 0  # a new database, as an operator would start one
    return run


def js(cli: Cli, *args: str) -> Any:
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return orjson.loads(out)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_deploy_with_and_without_versions(project: Project, cli: Cli) -> None:
    project.actors(job="database")
    project.script("job", "print(1)\n")
    code, out, err = cli("deploy", "job", "--changelog", "first")
    assert code == 0, err
    assert "deployed version 1.0.0" in out
    # what was tried, and where that endpoint came from
    assert (
        f"no supervisor listening at ipc://{project.folder}/none.sock (control from the "
        f"config file, {project.config}: supervisor.control)" in out
    )

    code, out, _ = cli("deploy", "job")
    assert code == 0 and "unchanged" in out and "nothing recorded" in out
    assert js(cli, "deploy", "job")["recorded"] is False

    project.script("job", "print(2)\n")
    assert js(cli, "deploy", "job")["version"] == "1.0.1"
    project.script("job", "print(3)\n")
    big = js(cli, "deploy", "job", "--version", "2.0.0", "--changelog", "big", "--by", "ada")
    assert (big["version"], big["previous_version"], big["recorded"]) == ("2.0.0", "1.0.1", True)
    project.script("job", "print(4)\n")
    assert js(cli, "deploy", "job")["version"] == "2.0.1"

    project.script("job", "print(5)\n")
    code, _, err = cli("deploy", "job", "--version", "2.0.0")
    assert code == 5 and "version_exists" in err
    code, _, err = cli("deploy", "job", "--version", "v3")
    assert code == 2 and "MAJOR.MINOR.PATCH" in err

    versions = js(cli, "versions", "job")
    assert [v["version_tag"] for v in versions] == ["2.0.1", "2.0.0", "1.0.1", "1.0.0"]
    assert [v["active"] for v in versions] == [True, False, False, False]
    assert {v["change_type"] for v in versions} == {"manual_deploy"}
    assert (versions[1]["changed_by"], versions[1]["change_reason"]) == ("ada", "big")
    assert versions[-1]["changed_by"] and versions[-1]["change_reason"] == "first"
    assert versions[0]["source_file_path"] == str(project.folder / "scripts" / "job.py")
    assert versions[0]["script_code_hash"] == sha("print(4)\n")
    code, out, _ = cli("versions", "job")
    assert code == 0 and out.splitlines()[1].split()[:3] == ["2.0.1", "*", "manual_deploy"]

    code, out, _ = cli("show-code", "job", "--version", "1.0.1")
    assert (code, out) == (0, "print(2)\n")
    assert cli("show-code", "job")[1] == "print(4)\n"
    code, _, err = cli("show-code", "job", "--version", "7.7.7")
    assert code == 5 and "not_found" in err
    code, _, err = cli("deploy", "nope")
    assert code == 5 and "unknown_actor" in err and "job" in err


def test_deploy_all_records_changed_actors_and_skips_the_rest(project: Project, cli: Cli) -> None:
    project.actors(a="file", b="file", c="auto", gone="database")
    for name in "abc":
        project.script(name, f"print('{name}')\n")
    first = js(cli, "deploy", "--all", "--changelog", "release 1")
    assert [(r["actor"], r["recorded"], r["skipped"]) for r in first] == [
        ("a", True, None), ("b", True, None), ("c", True, None), ("gone", False, "file_missing"),
    ]  # fmt: skip

    project.script("b", "print('b2')\n")
    second = js(cli, "deploy", "--all")
    assert {r["actor"]: r["skipped"] for r in second} == {
        "a": "unchanged", "b": None, "c": "unchanged", "gone": "file_missing",
    }  # fmt: skip
    assert {r["actor"]: r["version"] for r in second} == {
        "a": "1.0.0", "b": "1.0.1", "c": "1.0.0", "gone": None,
    }  # fmt: skip
    code, out, _ = cli("deploy", "--all")
    assert code == 0 and out.count(": unchanged") == 3 and "skipped: file_missing" in out
    # the last line: one summary of counts
    assert out.splitlines()[-1] == "code: 4 actors, 0 changed, 3 unchanged, 0 drifted, 1 failed"
    code, _, err = cli("deploy", "--all", "--version", "1.2.3")
    assert code == 2 and "--version applies to one actor" in err
    code, _, err = cli("deploy")
    assert code == 2 and "give one ACTOR, or --all" in err


def test_drift_reports_synced_drift_and_missing(project: Project, cli: Cli) -> None:
    project.actors(same="file", edited="database", gone="auto", new="file")
    for name in ("same", "edited", "gone"):
        project.script(name, f"print('{name}')\n")
    js(cli, "deploy", "--all")
    project.script("edited", "print('edited again')\n")
    (project.folder / "scripts" / "gone.py").unlink()
    project.script("new", "print('never deployed')\n")

    report = {r["actor"]: r for r in js(cli, "drift")}
    assert {name: r["status"] for name, r in report.items()} == {
        "same": "synced", "edited": "drift_detected", "gone": "file_missing",
        "new": "drift_detected",
    }  # fmt: skip
    edited = report["edited"]
    assert edited["changed_since_sync"] is True and edited["active_version"] == "1.0.0"
    assert edited["file_sha256"] == sha("print('edited again')\n")
    assert report["new"]["active_version"] is None
    assert [r["actor"] for r in js(cli, "drift", "gone", "same")] == ["gone", "same"]
    code, out, _ = cli("drift")
    assert code == 0 and "drift_detected" in out and "file_missing" in out


def test_rollback_makes_an_old_version_active_as_a_new_row(project: Project, cli: Cli) -> None:
    project.actors(db="database", plain="file")
    for body in ("print('v1')\n", "print('v2')\n"):
        project.script("db", body)
        plain = project.script("plain", body)
        js(cli, "deploy", "--all")
    plain.chmod(0o640)

    back = js(cli, "rollback", "db", "--to-version", "1.0.0", "--reason", "v2 is broken")
    assert (back["version"], back["rolled_back_to"], back["recorded"]) == ("1.0.2", "1.0.0", True)
    assert "no supervisor listening at ipc://" in back["supervisor"]
    versions = js(cli, "versions", "db")
    assert [(v["version_tag"], v["change_type"], v["active"]) for v in versions] == [
        ("1.0.2", "rollback", True), ("1.0.1", "manual_deploy", False),
        ("1.0.0", "manual_deploy", False),
    ]  # fmt: skip
    assert versions[0]["change_reason"].endswith(": v2 is broken")
    assert cli("show-code", "db")[1] == "print('v1')\n"
    assert (project.folder / "scripts" / "db.py").read_text() == "print('v2')\n"  # untouched
    assert js(cli, "drift", "db")[0]["status"] == "drift_detected"
    again = js(cli, "rollback", "db", "--to-history", versions[2]["history_id"])
    assert again["recorded"] is False  # that code is active already

    code, _, err = cli("rollback", "plain", "--to-version", "1.0.0")
    assert code == 5 and "file_mode" in err and "--write-file" in err
    assert len(js(cli, "versions", "plain")) == 2  # nothing recorded
    written = js(cli, "rollback", "plain", "--to-version", "1.0.0", "--write-file")
    assert written["recorded"] and written["file_written"]
    assert plain.read_text() == "print('v1')\n"
    assert stat.S_IMODE(plain.stat().st_mode) == 0o640  # the file keeps its mode
    assert js(cli, "drift", "plain")[0]["status"] == "synced"
    code, _, err = cli("rollback", "plain", "--to-version", "9.9.9")
    assert code == 5 and "not_found" in err


def test_deploy_records_the_git_commit_of_the_file(project: Project, cli: Cli) -> None:
    project.actors(job="file")
    script = project.script("job", "print('committed')\n")
    git = ["git", "-C", str(project.folder), "-c", "user.name=t", "-c", "user.email=t@e.x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", str(script)], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "add job"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    js(cli, "deploy", "job")
    assert js(cli, "versions", "job")[0]["git_commit_hash"] == head


_RACER = """
import os, sys, time
from supervisor.cli import main
print("ready", flush=True)
while not os.path.exists(sys.argv[3]):
    time.sleep(0.001)
sys.exit(main(["deploy", "job", "--config", sys.argv[1], "--database", sys.argv[2], "--json"]))
"""


@pytest.mark.timeout(90)
def test_racing_cli_deploys_leave_exactly_one_active_version(project: Project, cli: Cli) -> None:
    """Four processes deploy the same actor at once, each from its own checkout."""
    project.actors(job="database")  # (the cli fixture migrated the database)
    configs = []
    for n in range(4):
        folder = project.folder / f"checkout{n}"
        (folder / "scripts").mkdir(parents=True)
        (folder / "scripts" / "job.py").write_text(f"print({n})\n")
        config = folder / "supervisor.toml"
        config.write_text(project.config.read_text().replace("none.sock", f"none{n}.sock"))
        configs.append(config)
    database = project.database
    if database.startswith("sqlite:"):  # one database for all checkouts
        database = f"sqlite:{project.folder / 'state' / 'actors.db'}"
    go = project.folder / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(config), database, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ},
        )
        for config in configs
    ]
    for proc in procs:  # a real barrier: every process is up before any deploys
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    go.touch()
    results = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, [err for _, err in results]
    tags = sorted(orjson.loads(out)["version"] for out, _ in results)
    assert tags == ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]

    store = open_store(database, base_dir=project.folder)
    try:
        history = store.code_history("job")
        state = store.load_code_states()["job"]
    finally:
        store.close()
    assert sum(v.is_active for v in history) == 1 and len(history) == 4
    assert state.active_history_id == history[0].history_id
    assert state.script_code == history[0].script_code


@pytest.mark.skipif(os.geteuid() != 0, reason="a file only root may read needs root")
def test_deploy_refuses_a_script_linked_to_a_file_its_runs_may_not_read(
    project: Project, cli: Cli
) -> None:
    """Run as root, ``deploy`` would store a symlinked private file as code its runs execute
    (and show in tracebacks): it records only what the runs' user could read itself."""
    project.actors(job="database")
    secret = project.folder / "secret.txt"
    secret.write_text("TOPSECRET = 1\n")
    secret.chmod(0o600)
    (project.folder / "scripts" / "job.py").symlink_to(secret)
    code, _, err = cli("deploy", "job")
    assert code != 0 and "no script file its runs may read" in err
    secret.chmod(0o644)  # now any user may read it: it is the actor's code
    assert js(cli, "deploy", "job")["version"] == "1.0.0"

"""Alert commands are confined like a run: a real supervisor, real alert commands.

One command reports what it is (uid, gid, groups, NoNewPrivs, CapBnd, rlimits -- the
``[supervisor]`` ones under its own ``limits`` --, umask, IPC namespace) and tries
what a hostile one would (the state folder, the control socket, the database, signalling the
supervisor and another uid's running actor run): all of it fails, and its alert is still
delivered. Another hangs with a forked grandchild: both die at its timeout, the attempt is
retried and the alert recorded failed; and the leftover the first command left in a session of
its own dies when the next command of that uid starts. A range with no uid left for alert
commands is refused at start-up.
"""

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from protocol.client import RunOutcome
from supervisor.alerts.records import AlertRecord
from tests.helpers import join_new_session_keyring, wait_for
from tests.supervisor.harness import RunningSupervisor, session_uids, write_script
from tests.supervisor.test_alerts import FAILING, SYSTEM_PYTHON
from workers.confine import command
from workers.sandbox import EXIT_SANDBOX, SYS_KEYCTL

Start = Callable[..., RunningSupervisor]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="own uids need root")

LIMITS = """
shutdown_grace_s = 1
[supervisor.limits]
memory_mb = 900
nofile = 99
nproc = 77
fsize_mb = 7
"""

SPY = """\
    import json, os, resource, signal, socket, subprocess, sys
    alert = json.load(sys.stdin)
    inbox, state = sys.argv[1], sys.argv[2]

    def attempt(action):
        try:
            action()
        except OSError as exc:
            return "denied: " + type(exc).__name__
        return "ALLOWED"

    def connect():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(os.path.join(state, "control.sock"))

    def keyring_id():  # KEYCTL_GET_KEYRING_ID of @s, without creating one; None: no keyctl
        import ctypes
        number = SYS_KEYCTL
        return ctypes.CDLL(None).syscall(number, 0, -3, 0) if number else None

    status = dict(
        line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line
    )
    victim = int(open(os.path.join(inbox, "sleeper.pid")).read())
    umask = os.umask(0)
    # a leftover in a session of its own, outside the command's process group
    leftover = subprocess.Popen(
        ["sleep", "300"], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    report = {
        "ids": [os.getuid(), os.getgid(), os.getgroups()],
        "no_new_privs": status["NoNewPrivs"].strip(),
        "cap_bnd": status["CapBnd"].strip(),
        "umask": umask,
        "limits": {
            name: list(resource.getrlimit(getattr(resource, "RLIMIT_" + name)))
            for name in ("AS", "NOFILE", "NPROC", "FSIZE", "CORE")
        },
        "ipc": os.readlink("/proc/self/ns/ipc"),
        "session_keyring": keyring_id(),
        "cwd": os.getcwd(),
        "home": os.environ.get("HOME"),
        "event": os.environ.get("ACTOR_SUPERVISOR_ALERT_EVENT"),
        "state": attempt(lambda: os.listdir(state)),
        "control": attempt(connect),
        "database": attempt(lambda: open(os.path.join(state, "actor-supervisor.db"), "rb")),
        "kill_supervisor": attempt(lambda: os.kill(alert["supervisor"]["pid"], signal.SIGKILL)),
        "kill_run": attempt(lambda: os.kill(victim, signal.SIGKILL)),
        "supervisor_pid": alert["supervisor"]["pid"],
        "leftover": leftover.pid,
    }
    with open(os.path.join(inbox, "spy.tmp"), "w") as out:
        json.dump(report, out)
    os.rename(os.path.join(inbox, "spy.tmp"), os.path.join(inbox, "spy.json"))
""".replace("SYS_KEYCTL", str(SYS_KEYCTL))  # keyctl's number here (None: not probed)

HANG = """\
    import os, sys, time, uuid
    inbox = sys.argv[1]
    sys.stdin.read()
    if os.fork() == 0:
        name = "grandchild"
    else:
        name = "child"
    path = os.path.join(inbox, f"{name}-{uuid.uuid4().hex}.pid")
    with open(path + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(300)
"""

SLEEPER = """\
    import json, os, sys, time
    inbox = json.load(sys.stdin)["inbox"]
    path = os.path.join(inbox, "sleeper.pid")
    with open(path + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.chmod(path + ".tmp", 0o644)
    os.rename(path + ".tmp", path)
    time.sleep(60)  # the test stops the supervisor long before
    print("{}")
"""


def _alive(pid: int) -> bool:
    """Running (a zombie is dead: only its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _alerts(sup: RunningSupervisor, destination: str) -> list[AlertRecord]:
    store = sup.store()
    try:
        return [a for a in store.list_alerts(limit=1000) if a.destination == destination]
    finally:
        store.close()


def _fail(sup: RunningSupervisor, actor: str) -> None:
    with sup.client() as client:
        outcome = client.submit(actor, {}, wait=True)
    assert isinstance(outcome, RunOutcome) and outcome.status == "failed_permanent"


@needs_root
@pytest.mark.timeout(180)
def test_an_alert_command_is_confined_like_a_run_and_killed_with_its_group(
    public_tmp: Path, supervisors: Start
) -> None:
    ours = join_new_session_keyring()  # the supervisor inherits it, as a login's
    write_script(public_tmp, "failing.py", FAILING)
    write_script(public_tmp, "sleeper.py", SLEEPER)
    spy = write_script(public_tmp, "spy.py", SPY)
    hang = write_script(public_tmp, "hang.py", HANG)
    inbox = public_tmp / "inbox"
    inbox.mkdir()
    inbox.chmod(0o777)
    state = public_tmp / "state"
    sup = supervisors(
        f"""
        [[actors]]
        name = "sleeper"
        script = "scripts/sleeper.py"
        timeout_s = 120

        [[actors]]
        name = "broken"
        script = "scripts/failing.py"
        max_retries = 0

        [[actors]]
        name = "stuck"
        script = "scripts/failing.py"
        max_retries = 0

        [[alerts]]
        name = "spy"
        command = ["{SYSTEM_PYTHON}", "{spy}", "{inbox}", "{state}"]
        events = ["run_failed"]
        actors = ["broken"]
        max_attempts = 1
        limits = {{ nofile = 55, fsize_mb = "unlimited" }}

        [[alerts]]
        name = "hang"
        command = ["{SYSTEM_PYTHON}", "{hang}", "{inbox}"]
        events = ["run_failed"]
        actors = ["stuck"]
        timeout_s = 2
        max_attempts = 2
        retry_backoff_s = 0.2
        """,
        settings=LIMITS,
    )
    with sup.client() as client:
        client.submit("sleeper", {"inbox": str(inbox)})
    sleeper = int(str(wait_for(lambda: _read(inbox / "sleeper.pid"), 30, "the sleeper to run")))

    _fail(sup, "broken")
    report = orjson.loads(str(wait_for(lambda: _read(inbox / "spy.json"), 30, "the spy's report")))
    own = session_uids()[-1]
    assert report["ids"] == [own, own, []]
    assert report["no_new_privs"] == "1"
    assert int(report["cap_bnd"], 16) == 0
    assert report["umask"] == 0o077
    assert report["limits"] == {
        "AS": [900 << 20] * 2, "NOFILE": [55, 55], "NPROC": [77, 77], "CORE": [0, 0],
        "FSIZE": list(resource.getrlimit(resource.RLIMIT_FSIZE)),  # "unlimited": ours, inherited
    }  # fmt: skip
    assert report["ipc"] != os.readlink(f"/proc/{sup.proc.pid}/ns/ipc")  # System V IPC: its own
    if ours is not None:  # a session keyring of its own, not the supervisor's
        assert report["session_keyring"] not in (ours, None), report["session_keyring"]
    assert (report["cwd"], report["home"], report["event"]) == ("/", "/", "run_failed")
    for hostile in ("state", "control", "database", "kill_supervisor", "kill_run"):
        assert report[hostile].startswith("denied"), (hostile, report[hostile])
    assert report["supervisor_pid"] == sup.proc.pid
    assert _alive(sleeper) and sup.proc.poll() is None
    wait_for(lambda: [a.status for a in _alerts(sup, "spy")] == ["delivered"], 10, "delivered")
    assert _alive(report["leftover"])  # in a session of its own: not killed with the group

    _fail(sup, "stuck")
    [row] = wait_for(
        lambda: [a for a in _alerts(sup, "hang") if a.status == "failed"], 60, "hang recorded"
    )
    assert row.attempts == 2 and "timed out after 2" in (row.last_error or "")
    pids = [int(path.read_text()) for path in inbox.glob("*child-*.pid")]
    assert len(pids) == 4  # two attempts, each a command and its grandchild
    wait_for(lambda: not any(_alive(pid) for pid in pids), 10, "the hung groups to die")
    # the next command of that uid killed what the first one left
    assert not _alive(report["leftover"])
    assert _alive(sleeper)
    assert sup.stop() == 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text() or None
    except FileNotFoundError:
        return None


@needs_root
@pytest.mark.timeout(60)
def test_a_range_that_workers_fill_leaves_no_uid_for_alert_commands(
    public_tmp: Path, supervisors: Start
) -> None:
    low = session_uids()[0]
    sup = supervisors(
        """
        [[alerts]]
        name = "pager"
        command = ["/bin/true"]
        events = ["*"]
        """,
        settings=f'run_as_range = "{low}-{low + 3}"\nconcurrency = 2\n',
        wait_ready=False,
    )
    assert sup.proc.wait(timeout=30) != 0
    log = sup.log()
    assert "run_as_range" in log and "(2 x 2)" in log and "pager" in log, log
    checked = sup.cli("check", "--json")  # check reports what start refuses
    assert checked.returncode != 0
    [problem] = [p for p in orjson.loads(checked.stdout)["problems"] if "run_as_range" in p]
    assert "(2 x 2)" in problem and "pager" in problem


def test_the_entry_point_keeps_our_user_but_applies_the_rest_and_names_what_failed(
    tmp_path: Path,
) -> None:
    """As the alert sender starts it, with no uid to switch to (a non-root supervisor); a
    PYTHONPATH (say, let through by env_allow) cannot shadow what the root interpreter imports."""
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed json imported')\n")
    probe = (
        "import os, resource; "
        "status = open('/proc/self/status').read(); "
        "print(os.getuid(), os.getsid(0) == os.getpid(), os.umask(0), "
        "'NoNewPrivs:\\t1' in status, resource.getrlimit(resource.RLIMIT_NOFILE), "
        "resource.getrlimit(resource.RLIMIT_CORE), os.getcwd())"
    )
    limits = {"cpu_s": 30, "memory_mb": None, "nofile": 40, "nproc": None, "fsize_mb": 1}
    argv = command(sys.executable, [sys.executable, "-c", probe], uid=None, run_as=None,
                   limits=limits)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        argv, capture_output=True, text=True, start_new_session=True, timeout=30, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(None, 1) == [str(os.getuid()), "True 63 True (40, 40) (0, 0) /\n"]
    missing = command(sys.executable, ["/no/such/program"], uid=None, run_as=None, limits={})
    done = subprocess.run(missing, capture_output=True, text=True, timeout=30)
    assert done.returncode == EXIT_SANDBOX
    assert "program" in done.stderr and "/no/such/program" in done.stderr

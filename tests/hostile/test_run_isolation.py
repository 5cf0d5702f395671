"""Hostile scripts against a real supervisor: each attack runs inside a real sandboxed run.

Every test asserts two things: that the probe really ran (the script reports what it tried)
and that the attack had no effect. Most isolation needs a root supervisor (a uid per run);
those tests are skipped otherwise.
"""

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from protocol.client import RunOutcome
from supervisor.records import RunRecord
from tests.helpers import wait_for
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="a uid per run needs root")


@pytest.fixture
def drop(public_tmp: Path) -> Path:
    """A folder every run may write to (markers the test waits on)."""
    folder = public_tmp / "drop"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def _actor(name: str, script: str, **keys: Any) -> str:
    lines = [f'[[actors]]\nname = "{name}"\nscript = "scripts/{script}"']
    for key, value in keys.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _submit(sup: RunningSupervisor, actor: str, data: Any = None) -> RunOutcome:
    with sup.client(timeout_s=90) as client:
        outcome = client.submit(actor, data, wait=True)
    assert isinstance(outcome, RunOutcome)
    return outcome


def _in_background(sup: RunningSupervisor, actor: str, data: Any = None) -> list[RunOutcome]:
    answers: list[RunOutcome] = []
    threading.Thread(target=lambda: answers.append(_submit(sup, actor, data)), daemon=True).start()
    return answers


def _running_child(sup: RunningSupervisor, actor: str) -> dict[str, Any]:
    """The scoreboard slot of the worker running ``actor``'s run, once its child exists."""
    store = sup.store()
    try:
        run_id = wait_for(lambda: store.list_runs(actor=actor), 30, f"a run of {actor}")[0].run_id
    finally:
        store.close()

    def slot() -> list[dict[str, Any]]:
        return [w for w in sup.status()["workers"] if w["current_run"] == run_id and w["child_pid"]]

    found = wait_for(slot, 30, f"{actor}'s child")[0]
    found["run_id"] = run_id
    return found


def _attempts(sup: RunningSupervisor, run_id: str) -> list[RunRecord]:
    store = sup.store()
    try:
        return sorted(store.list_runs(run_id=run_id), key=lambda r: r.attempt)
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


WAIT_FOR_RELEASE = """\
    import json, os, sys, time
    release = sys.argv[0] + ".release"
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"released": os.path.exists(release)}))
"""


@pytest.mark.timeout(120)
def test_a_fork_mode_run_finds_nothing_of_the_previous_run_in_gc(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "secretive.py", "import json, sys; json.load(sys.stdin); print('{}')")
    write_script(
        public_tmp,
        "spy.py",
        """\
        import gc, json, os
        # built at run time, so that the script's own constants hold no copy of them
        SECRETS = tuple(s[::-1] for s in ("f1d7-t3rc3s-tupni", "ba29-t3rc3s-vne"))
        mine = os.environ["ACTOR_RUN_ID"]
        found, scanned = [], 0
        gc.unfreeze()  # the launcher froze its objects: thaw them so that nothing hides
        for obj in gc.get_objects():
            scanned += 1
            if obj is SECRETS or obj is found:
                continue
            kind = type(obj).__name__
            if kind in ("Run", "Flight", "Order") and getattr(obj, "run_id", "") != mine:
                found.append(repr(obj)[:200])
            if isinstance(obj, dict):
                values = list(obj.values())
            elif isinstance(obj, (list, tuple)):
                values = list(obj)
            else:
                continue
            for value in values:
                if isinstance(value, str) and any(s in value for s in SECRETS):
                    found.append(value[:80])
        print(json.dumps({"found": found, "scanned": scanned}))
        """,
    )
    actors = _actor("secretive", "secretive.py", env='{ TOKEN = "env-s3cr3t-92ab" }', mode='"fork"')
    actors += _actor("spy", "spy.py", mode='"fork"')
    sup = supervisors(actors, workers=1)
    for _ in range(3):  # the reproduction found the previous run 3 times out of 3
        secret = _submit(sup, "secretive", {"token": "input-s3cr3t-7d1f"})
        assert secret.status == "succeeded"
        spy = _submit(sup, "spy")
        assert spy.status == "succeeded", spy
        assert spy.output["scanned"] > 1000  # it really looked
        assert spy.output["found"] == []


PROBE = """\
    import ctypes, json, os, signal, sys
    pid = json.load(sys.stdin)["pid"]
    tried = {}
    for name, path in (("environ", f"/proc/{pid}/environ"), ("stdin", f"/proc/{pid}/fd/0")):
        try:
            with open(path, "rb") as f:
                f.read()
            tried[name] = "read"
        except OSError as exc:
            tried[name] = "denied: " + exc.__class__.__name__
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
        tried["ptrace"] = "attached"
    else:
        tried["ptrace"] = "denied: errno " + str(ctypes.get_errno())
    try:
        os.kill(pid, signal.SIGKILL)
        tried["kill"] = "killed"
    except OSError as exc:
        tried["kill"] = "denied: " + exc.__class__.__name__
    print(json.dumps(tried))
"""


@root_only
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["exec", "fork"])
def test_a_run_cannot_read_trace_or_kill_another_actors_live_run(
    public_tmp: Path, supervisors: Start, mode: str
) -> None:
    victim = write_script(public_tmp, "victim.py", WAIT_FOR_RELEASE)
    write_script(public_tmp, "probe.py", PROBE)
    actors = _actor("victim", "victim.py", mode=f'"{mode}"', env='{ TOKEN = "victim-secret" }')
    actors += _actor("probe", "probe.py", mode=f'"{mode}"')
    sup = supervisors(actors, workers=2)
    answers = _in_background(sup, "victim", {"secret": "victim-input"})
    child = _running_child(sup, "victim")["child_pid"]
    probe = _submit(sup, "probe", {"pid": child})
    assert probe.status == "succeeded", probe
    tried = probe.output
    assert set(tried) == {"environ", "stdin", "ptrace", "kill"}
    assert all(str(v).startswith("denied") for v in tried.values()), tried
    assert _alive(child)
    Path(f"{victim}.release").touch()
    wait_for(lambda: answers, 60, "the victim's outcome")
    assert (answers[0].status, answers[0].output) == ("succeeded", {"released": True})


@root_only
@pytest.mark.timeout(120)
def test_one_actor_holding_its_nproc_quota_does_not_stop_another_forking(
    public_tmp: Path, supervisors: Start, drop: Path
) -> None:
    hog = write_script(
        public_tmp,
        "hog.py",
        f"""\
        import json, os, sys, time
        held = 0
        while held < 200:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            held += 1
        with open("{drop}/hog.ready.tmp", "w") as f:  # renamed: never seen half-written
            f.write(str(held))
        os.rename("{drop}/hog.ready.tmp", "{drop}/hog.ready")
        deadline = time.monotonic() + 60
        while not os.path.exists(sys.argv[0] + ".release") and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.dumps({{"held": held}}))
        """,
    )
    write_script(
        public_tmp,
        "forks.py",
        """\
        import json, os
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        print(json.dumps({"child": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}))
        """,
    )
    limits = "{ nproc = 16 }"
    actors = _actor("hog", "hog.py", limits=limits) + _actor("forks", "forks.py", limits=limits)
    sup = supervisors(actors, workers=2)
    answers = _in_background(sup, "hog")
    wait_for(lambda: (drop / "hog.ready").exists(), 30, "the hog to hold its quota")
    assert 0 < int((drop / "hog.ready").read_text()) < 16  # it hit its limit
    forks = _submit(sup, "forks")
    assert (forks.status, forks.output) == ("succeeded", {"child": 7}), forks
    Path(f"{hog}.release").touch()
    wait_for(lambda: answers, 60, "the hog's outcome")


@root_only
@pytest.mark.timeout(120)
def test_a_daemon_spoofing_another_live_runs_id_dies_when_its_own_run_ends(
    public_tmp: Path, supervisors: Start
) -> None:
    long = write_script(public_tmp, "long.py", WAIT_FOR_RELEASE)
    write_script(
        public_tmp,
        "daemon.py",
        """\
        import json, os, sys
        run_id = json.load(sys.stdin)["run_id"]
        pid = os.fork()
        if pid == 0:
            os.setsid()
            os.execve("/bin/sleep", ["sleep", "120"], {"ACTOR_RUN_ID": run_id})
        print(json.dumps({"daemon": pid}))
        """,
    )
    sup = supervisors(_actor("long", "long.py") + _actor("daemon", "daemon.py"), workers=2)
    answers = _in_background(sup, "long")
    live = _running_child(sup, "long")
    outcome = _submit(sup, "daemon", {"run_id": live["run_id"]})
    assert outcome.status == "succeeded", outcome
    daemon = outcome.output["daemon"]
    try:
        assert wait_for(lambda: not _alive(daemon), 10, "the spoofing daemon to die")
        assert _alive(live["child_pid"])  # the run it claimed to belong to goes on
    finally:
        if _alive(daemon):
            os.kill(daemon, signal.SIGKILL)
    Path(f"{long}.release").touch()
    wait_for(lambda: answers, 60, "the long run's outcome")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["exec", "fork"])
def test_writing_notes_to_fd_3_cannot_hide_a_timeout(
    public_tmp: Path, supervisors: Start, mode: str
) -> None:
    write_script(
        public_tmp,
        "forger.py",
        """\
        import os, sys, time
        for note in (b"Eforged setup error", b"Fforged missing", b"M"):
            try:
                os.write(3, note)
                print("wrote", note, file=sys.stderr, flush=True)
            except OSError as exc:
                print("fd 3:", exc.__class__.__name__, file=sys.stderr, flush=True)
        time.sleep(30)
        """,
    )
    sup = supervisors(
        _actor("forger", "forger.py", mode=f'"{mode}"', timeout_s=1, max_retries=0), workers=1
    )
    outcome = _submit(sup, "forger")
    assert (outcome.status, outcome.reason) == ("failed_retryable", "timeout"), outcome
    assert outcome.stderr_tail.count("fd 3: OSError") == 3  # it tried: fd 3 was closed


def _worker_pids(sup: RunningSupervisor) -> list[int]:
    return [w["pid"] for w in sup.status()["workers"]]


@pytest.mark.timeout(120)
def test_json_nested_too_deeply_to_re_encode_is_invalid_output(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "deep.py", "print('{\"a\":' + '[' * 300 + ']' * 300 + '}')\n")
    sup = supervisors(_actor("deep", "deep.py", max_retries=0), workers=1)
    before = _worker_pids(sup)
    for _ in range(2):
        outcome = _submit(sup, "deep")
        assert (outcome.status, outcome.reason) == ("failed_permanent", "invalid_output"), outcome
        assert "nested too deeply" in (outcome.error or "")
    assert _worker_pids(sup) == before
    assert sup.status()["counters"]["worker_deaths"] == 0


@pytest.mark.timeout(180)
def test_the_largest_result_the_limits_allow_is_delivered(
    public_tmp: Path, supervisors: Start
) -> None:
    """output_kb and stderr_kb at their configuration bounds, with JSON escaping making the
    stderr tail six times larger on the wire: still one deliverable result."""
    write_script(
        public_tmp,
        "big.py",
        """\
        import json, sys
        sys.stderr.write("\\x01" * (2 << 20))
        print(json.dumps("x" * ((8 << 20) - 64)))
        """,
    )
    limits = "{ output_kb = 8192, stderr_kb = 1024 }"
    sup = supervisors(_actor("big", "big.py", limits=limits, max_retries=0), workers=1)
    before = _worker_pids(sup)
    outcome = _submit(sup, "big")
    assert outcome.status == "succeeded", (outcome.status, outcome.reason, outcome.error)
    assert len(outcome.output) == (8 << 20) - 64
    assert outcome.stderr_tail == "\x01" * (1 << 20)
    assert _worker_pids(sup) == before


STUCK_ONCE = """\
    import json, os, sys, time
    quick = (json.load(sys.stdin) or {}).get("quick")  # the run that checks the slot serves
    if os.environ["ACTOR_ATTEMPT"] == "1" and not quick:
        time.sleep(120)
    print(json.dumps({"attempt": os.environ["ACTOR_ATTEMPT"]}))
"""


@pytest.mark.timeout(120)
def test_a_stopped_launcher_is_replaced_within_the_heartbeat_timeout(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "stuck.py", STUCK_ONCE)
    actors = _actor("stuck", "stuck.py", retry_backoff_s=0.1, retry_jitter="false")
    sup = supervisors(actors, workers=1, settings="heartbeat_timeout_s = 2\n")
    answers = _in_background(sup, "stuck")
    held = _running_child(sup, "stuck")
    launcher, child = held["launcher_pid"], held["child_pid"]
    os.kill(launcher, signal.SIGSTOP)
    try:
        # 2 s of silence, the worker's poll interval, a respawn, and a loaded machine
        wait_for(lambda: answers, 20, "the run to be retried on a fresh worker")
    finally:
        if _alive(launcher):
            os.kill(launcher, signal.SIGCONT)
    assert (answers[0].status, answers[0].output) == ("succeeded", {"attempt": "2"})
    first, second = _attempts(sup, held["run_id"])
    assert (first.status, first.reason) == ("failed_retryable", "worker_lost")
    assert second.worker_id != held["worker_id"]
    assert not _alive(child) and not _alive(launcher)
    workers = sup.status()["workers"]
    assert len(workers) == 1 and workers[0]["ready"]  # the slot is back, not lost
    assert _submit(sup, "stuck", {"quick": True}).output == {"attempt": "1"}  # and it serves


@root_only
@pytest.mark.timeout(120)
def test_a_killed_launcher_takes_a_setsid_grandchild_with_it(
    public_tmp: Path, supervisors: Start, drop: Path
) -> None:
    write_script(
        public_tmp,
        "escape.py",
        f"""\
        import json, os, time
        if os.environ["ACTOR_ATTEMPT"] == "1":
            pid = os.fork()
            if pid == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", "300"])
            with open("{drop}/grandchild", "w") as f:
                f.write(str(pid))
            time.sleep(120)
        print("{{}}")
        """,
    )
    sup = supervisors(_actor("escape", "escape.py", retry_backoff_s=0.1), workers=1)
    answers = _in_background(sup, "escape")
    held = _running_child(sup, "escape")
    wait_for(lambda: (drop / "grandchild").exists(), 30, "the grandchild")
    grandchild = int(wait_for(lambda: (drop / "grandchild").read_text(), 10, "its pid"))
    assert _alive(grandchild)
    try:
        os.kill(held["launcher_pid"], signal.SIGKILL)
        assert wait_for(lambda: not _alive(grandchild), 15, "the grandchild to die")
        wait_for(lambda: answers, 60, "the retry")
        assert answers[0].status == "succeeded"
        sup.stop()
        assert not _alive(grandchild)
    finally:
        if _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_status_says_which_protections_apply(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "noop.py", "print('{}')\n")
    sup = supervisors(_actor("noop", "noop.py"), workers=1)
    shown = sup.status()["supervisor"]["protections"]
    root = os.geteuid() == 0
    assert shown["uid_per_run"] is root and shown["network_none_available"] is root
    assert shown["pristine_fork"] and shown["private_tmpdir"] and shown["no_new_privs"]
    assert _submit(sup, "noop").status == "succeeded"


OOM_PROBE = """\
    import json
    path = "/proc/self/oom_score_adj"
    tried = {"start": int(open(path).read())}
    for value in (-1000, -1):
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            tried[str(value)] = "denied: " + type(exc).__name__
        else:
            tried[str(value)] = int(open(path).read())
    print(json.dumps(tried))
"""


@pytest.mark.parametrize("mode", ["exec", "fork"])
@pytest.mark.timeout(120)
def test_a_run_is_the_oom_killers_first_pick_and_cannot_go_below_the_default(
    public_tmp: Path, supervisors: Start, mode: str
) -> None:
    """When runs exhaust the host's memory, the kernel kills one of them first. A run may
    give its 1000 back down to 0, never below: under the systemd unit (OOMScoreAdjust=-500)
    the supervisor stays behind every run."""
    write_script(public_tmp, "oom.py", OOM_PROBE)
    sup = supervisors(_actor("oom", "oom.py", mode=f'"{mode}"'))
    outcome = _submit(sup, "oom")
    assert outcome.status == "succeeded", outcome
    tried = outcome.output
    assert tried["start"] == 1000
    assert str(tried["-1000"]).startswith("denied") and str(tried["-1"]).startswith("denied")
    with open(f"/proc/{sup.proc.pid}/oom_score_adj") as own:
        assert int(own.read()) <= 0  # the supervisor itself is not volunteered

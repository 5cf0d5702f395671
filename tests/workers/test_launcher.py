"""The sandbox against nasty scripts, through one real launcher per module.

Every test forks real children from a real launcher and runs real scripts written to disk. The
module-scoped launcher must survive all of them; the last test proves it still runs a normal
script, and an autouse fixture checks after each test that nothing it spawned is left alive.
"""

import hashlib
import os
import signal
import time
from pathlib import Path

import orjson
import psutil
import pytest

from protocol.codec import encode
from protocol.messages import Limits
from tests.helpers import shared_folder, wait_for, write_script
from tests.workers.conftest import (
    IS_ROOT,
    RUN_AS,
    SECRET_NAME,
    collect,
    descendants,
    is_idle_spare,
    is_running,
    make_run,
    run_script,
    wait_started,
)
from workers.launcher_handle import Finished, Launcher, LauncherGone, SandboxConfig, start_launcher
from workers.sandbox import COMPILE_MAX_BYTES

ECHO = """\
import json, sys
data = json.load(sys.stdin)
print(json.dumps({"echo": data, "argv": sys.argv, "path0": sys.path[0], "name": __name__}))
"""


@pytest.mark.timeout(30)
def test_noop_script_succeeds_with_its_output_and_input(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "echo.py", ECHO)
    run = make_run(script, mode, input_json='{"n": 41, "s": "h\\u00e9"}')
    before = time.time()
    result = run_script(launcher, run)
    assert (result.status, result.reason, result.exit_code) == ("succeeded", None, 0)
    assert result.output == {
        "echo": {"n": 41, "s": "hé"},
        "argv": [str(script)],
        "path0": str(public_tmp),
        "name": "__main__",
    }
    assert (result.run_id, result.attempt, result.worker_id) == (run.run_id, 1, "test-worker")
    assert before <= result.started_at <= result.finished_at <= time.time()
    assert result.duration_ms > 0 and result.child_pid is not None
    assert result.rusage.maxrss_kb > 0


@pytest.mark.timeout(30)
def test_large_input_reaches_the_script(launcher: Launcher, public_tmp: Path) -> None:
    script = write_script(public_tmp, "size.py", "import sys; print(len(sys.stdin.read()))")
    text = '"' + "x" * (3 << 20) + '"'
    result = run_script(launcher, make_run(script, "fork", input_json=text))
    assert result.output == len(text)


@pytest.mark.timeout(30)
def test_local_helper_modules_import_from_cwd(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    home = public_tmp / "home"
    home.mkdir(mode=0o755)
    elsewhere = public_tmp / "materialized"
    elsewhere.mkdir(mode=0o755)
    write_script(home, "helper.py", "ANSWER = 42\n")
    script = write_script(elsewhere, "main.py", "import helper, json; print(helper.ANSWER)")
    result = run_script(launcher, make_run(script, mode, cwd=str(home)))
    assert (result.status, result.output) == ("succeeded", 42)


@pytest.mark.timeout(30)
def test_script_sees_only_allowed_env_and_runs_unprivileged_in_its_folder(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    assert os.environ.get(SECRET_NAME) is None  # only the launcher's environment had it
    script = write_script(
        public_tmp,
        "who.py",
        """\
        import json, os
        try:
            with open("/proc/self/environ", "rb") as f:
                initial = f.read().decode("utf-8", "replace")
        except OSError:
            initial = ""  # not readable at all after the switch to an unprivileged user
        print(json.dumps({"env": dict(os.environ), "uid": os.getuid(), "gid": os.getgid(),
                          "groups": os.getgroups(), "cwd": os.getcwd(), "initial": initial}))
        """,
    )
    result = run_script(launcher, make_run(script, mode, env={"GREETING": "hi"}, attempt=3))
    assert result.status == "succeeded", result.error
    env = result.output["env"]
    assert SECRET_NAME not in env
    assert SECRET_NAME not in result.output["initial"]  # fork mode: the launcher's scrubbed block
    assert "PATH" in env and env["GREETING"] == "hi"
    assert env["ACTOR_NAME"] == "test-actor"
    assert env["ACTOR_RUN_ID"] == result.run_id
    assert env["ACTOR_ATTEMPT"] == "3"
    assert result.output["cwd"] == str(public_tmp)
    if RUN_AS is not None:
        assert (result.output["uid"], result.output["gid"]) == RUN_AS
        assert result.output["groups"] == []
        assert env["HOME"] == "/nonexistent"


@pytest.mark.timeout(30)
def test_endless_loop_times_out_and_its_group_is_gone(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "loop.py", "import time\nwhile True: time.sleep(0.05)\n")
    result = run_script(launcher, make_run(script, mode, timeout_s=0.5))
    assert (result.status, result.reason) == ("failed_retryable", "timeout")
    assert result.signal == signal.SIGTERM
    assert 500 <= result.duration_ms < 5000
    assert result.child_pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(result.child_pid, 0)


@pytest.mark.timeout(30)
def test_script_ignoring_sigterm_is_killed_after_the_grace(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(
        public_tmp,
        "stubborn.py",
        """\
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.05)
        """,
    )
    result = run_script(launcher, make_run(script, mode, timeout_s=0.5))
    assert (result.status, result.reason) == ("failed_retryable", "timeout")
    assert result.signal == signal.SIGKILL
    assert result.duration_ms >= 1000  # timeout + kill_grace_s
    assert "SIGKILL" in (result.error or "")


@pytest.mark.timeout(30)
def test_timeout_wins_even_if_the_script_then_exits_cleanly(
    launcher: Launcher, public_tmp: Path
) -> None:
    script = write_script(
        public_tmp,
        "polite.py",
        """\
        import signal, sys, time
        def bye(*_):
            print("{}")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        while True:
            time.sleep(0.05)
        """,
    )
    result = run_script(launcher, make_run(script, "fork", timeout_s=0.5))
    assert (result.status, result.reason, result.exit_code) == ("failed_retryable", "timeout", 0)


@pytest.mark.timeout(30)
def test_allocating_past_memory_mb_is_memory_limit(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(
        public_tmp,
        "hog.py",
        """\
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))
        """,
    )
    limits = Limits(memory_mb=600)
    result = run_script(launcher, make_run(script, mode, limits=limits))
    assert (result.status, result.reason) == ("failed_permanent", "memory_limit"), result
    assert "MemoryError" in result.stderr_tail


@pytest.mark.timeout(30)
def test_burning_cpu_past_cpu_s_is_cpu_limit(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "burn.py", "while True:\n    pass\n")
    result = run_script(launcher, make_run(script, mode, limits=Limits(cpu_s=1), timeout_s=15))
    assert (result.status, result.reason) == ("failed_permanent", "cpu_limit")
    assert result.signal == signal.SIGXCPU
    # rusage's user/system split is sampled per tick, and under load it reads below the
    # scheduler's exact runtime that RLIMIT_CPU is enforced on: ask only that it burned CPU.
    assert result.rusage.utime_s + result.rusage.stime_s >= 0.5


@pytest.mark.timeout(30)
@pytest.mark.skipif(not IS_ROOT, reason="RLIMIT_NPROC counts all of the user's processes")
def test_fork_bomb_is_contained(launcher: Launcher, public_tmp: Path, mode: str) -> None:
    script = write_script(
        public_tmp,
        "bomb.py",
        """\
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
    )
    run = make_run(script, mode, limits=Limits(nproc=12), timeout_s=1.5)
    result = run_script(launcher, run)
    assert result.status != "succeeded"
    assert result.reason == "timeout"
    # The autouse fixture then checks that not one bomb process is left.


@pytest.mark.timeout(30)
def test_flooding_stdout_is_output_limit_promptly(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(
        public_tmp,
        "flood.py",
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
    )
    run = make_run(script, mode, limits=Limits(output_kb=64), timeout_s=30)
    result = run_script(launcher, run)
    assert (result.status, result.reason) == ("failed_permanent", "output_limit")
    assert result.signal == signal.SIGKILL and result.output is None
    assert result.duration_ms < 5000


@pytest.mark.timeout(30)
def test_output_past_the_limit_is_caught_even_after_a_quick_exit(
    launcher: Launcher, public_tmp: Path
) -> None:
    script = write_script(public_tmp, "burst.py", "print('[' + '1,' * 60000 + '1]')\n")
    result = run_script(launcher, make_run(script, "fork", limits=Limits(output_kb=16)))
    assert (result.status, result.reason) == ("failed_permanent", "output_limit")


@pytest.mark.timeout(30)
def test_flooding_stderr_keeps_only_the_tail(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(
        public_tmp,
        "noisy.py",
        """\
        import sys
        for i in range(40000):
            sys.stderr.write("line %d of noise\\n" % i)
        sys.stderr.write("THE END\\n")
        print("{}")
        """,
    )
    result = run_script(launcher, make_run(script, mode, limits=Limits(stderr_kb=4)))
    assert result.status == "succeeded"
    assert 0 < len(result.stderr_tail.encode()) <= 4096
    assert result.stderr_tail.endswith("line 39999 of noise\nTHE END\n")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print('not json at all')", "not json at all"),
        ("pass", "printed nothing"),
        ("import sys; sys.stdout.buffer.write(b'\\xff\\xfe\\x00\\x01garbage')", "not one JSON"),
        ("print('{} {}')", "not one JSON"),
    ],
    ids=["text", "nothing", "binary", "two-documents"],
)
def test_bad_stdout_is_invalid_output(
    launcher: Launcher, public_tmp: Path, code: str, expected: str
) -> None:
    script = write_script(public_tmp, "bad.py", code)
    result = run_script(launcher, make_run(script, "fork"))
    assert (result.status, result.reason, result.exit_code) == (
        "failed_permanent",
        "invalid_output",
        0,
    )
    assert expected in (result.error or "")


@pytest.mark.timeout(30)
def test_exit_75_is_retryable(launcher: Launcher, public_tmp: Path, mode: str) -> None:
    script = write_script(public_tmp, "tempfail.py", "import sys; sys.exit(75)")
    result = run_script(launcher, make_run(script, mode))
    assert (result.status, result.reason, result.exit_code) == ("failed_retryable", "exit_code", 75)


@pytest.mark.timeout(30)
def test_exit_3_is_permanent(launcher: Launcher, public_tmp: Path, mode: str) -> None:
    script = write_script(
        public_tmp, "three.py", "import os; print('partial'); raise SystemExit(3)"
    )
    result = run_script(launcher, make_run(script, mode))
    assert (result.status, result.reason, result.exit_code) == ("failed_permanent", "exit_code", 3)
    assert result.output is None and result.error == "exited with code 3"


@pytest.mark.timeout(30)
def test_json_asking_for_a_retry_with_exit_1_is_retryable(
    launcher: Launcher, public_tmp: Path
) -> None:
    script = write_script(
        public_tmp,
        "busy.py",
        """\
        import json, sys
        print(json.dumps({"retryable": True, "error": "upstream busy"}))
        sys.exit(1)
        """,
    )
    result = run_script(launcher, make_run(script, "fork"))
    assert (result.status, result.reason, result.exit_code) == ("failed_retryable", "exit_code", 1)
    assert result.error == "upstream busy"
    assert result.output == {"retryable": True, "error": "upstream busy"}


@pytest.mark.timeout(30)
def test_uncaught_exception_prints_a_traceback_from_the_script(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "boom.py", "def f():\n    raise ValueError('boom')\nf()\n")
    result = run_script(launcher, make_run(script, mode))
    assert (result.status, result.reason, result.exit_code) == ("failed_permanent", "exit_code", 1)
    lines = result.stderr_tail.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith(f'  File "{script}", line 3')  # no sandbox frames before it
    assert lines[-1] == "ValueError: boom"


@pytest.mark.timeout(30)
def test_an_edited_script_runs_its_new_code_never_a_cached_one(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """The launcher compiles each script once per content: the same path edited (same size,
    within the same second) runs the new text, and a broken then mended script runs mended."""
    seen = []
    for body in ("print(1)", "print(2)", "print(", "print(3)", "print(2)"):
        script = write_script(public_tmp, "edited.py", body)
        result = run_script(launcher, make_run(script, mode))
        seen.append(result.output if result.status == "succeeded" else result.reason)
    assert seen == [1, 2, "exit_code", 3, 2]


@pytest.mark.timeout(30)
def test_a_run_names_the_script_it_ran_when_it_is_not_the_version_sent(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """The supervisor hashes a script when it sends a run; the file may change before the
    run's child opens it. The result then carries the SHA256 of what ran (None when it is the
    version sent), whether the launcher's compiled copy ran or the child read the file itself
    (a script too big for the launcher's cache)."""
    small = write_script(public_tmp, "small.py", "print(1)")
    big = write_script(public_tmp, "big.py", "x = 1\n" * (COMPILE_MAX_BYTES // 6 + 1) + "print(2)")
    for script, output in ((small, 1), (big, 2)):
        actual = hashlib.sha256(script.read_bytes()).hexdigest()
        same = run_script(launcher, make_run(script, mode, script_sha256=actual))
        assert (same.status, same.output, same.code_sha256) == ("succeeded", output, None)
        other = run_script(launcher, make_run(script, mode, script_sha256="0" * 64))
        assert (other.status, other.output, other.code_sha256) == ("succeeded", output, actual)


@pytest.mark.timeout(30)
def test_a_fifo_or_a_big_script_is_left_to_the_child_and_never_stalls_the_launcher(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """The launcher compiles small regular scripts itself; a FIFO planted as the script would
    block a plain read forever: the launcher must go on serving (the FIFO's run times out in
    its own child), and a script past the size it compiles still runs, compiled by its child."""
    fifo = public_tmp / "planted.py"
    os.mkfifo(fifo, 0o644)
    stuck = make_run(fifo, mode, timeout_s=1.0)
    launcher.submit(encode(stuck))
    big = write_script(public_tmp, "big.py", "x = 1\n" * 20_000 + "print(x + 1)\n")  # 120 KB
    assert run_script(launcher, make_run(big, mode)).output == 2  # served meanwhile
    result = collect(launcher, {stuck.run_id}, 15.0)[stuck.run_id]
    assert (result.status, result.reason) == ("failed_retryable", "timeout")


@pytest.mark.timeout(30)
@pytest.mark.skipif(not IS_ROOT, reason="a file only root may read needs a root launcher")
def test_a_script_linked_to_a_private_file_shows_none_of_it(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """The launcher reads scripts as root (to compile them once): a script that is a symlink to
    a file only root may read must not run, nor show a line of it in a SyntaxError's
    traceback. The run's user opens its script itself and is refused."""
    secret = public_tmp / f"secret-{mode}.txt"
    secret.write_text("TOPSECRET-LINE = 1 2 3\n")
    secret.chmod(0o600)
    valid = public_tmp / f"secret-{mode}.py"  # valid Python: it would compile and run
    valid.write_text("print('TOPSECRET-CODE')\n")
    valid.chmod(0o600)
    for target in (secret, valid):
        link = public_tmp / f"evil-{target.name}.py"
        link.symlink_to(target)
        result = run_script(launcher, make_run(link, mode))
        assert (result.status, result.reason) == ("failed_permanent", "sandbox_error")
        assert "Permission denied" in (result.error or "")
        assert "TOPSECRET" not in result.stderr_tail + (result.error or "") + str(result.output)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not IS_ROOT, reason="a file only root may read needs a root launcher")
def test_stored_code_private_to_the_supervisor_still_runs(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """Stored code is the supervisor's materialized copy, 0600 in a 0700 folder: a run marked
    ``stored`` reads it (and its modules) before the switch, as always."""
    cache = public_tmp / f"cache-{mode}"
    cache.mkdir(mode=0o700)
    script = cache / "main.py"
    script.write_text("import helper\nprint(helper.VALUE)\n")
    (cache / "helper.py").write_text("VALUE = 42\n")
    for file in cache.iterdir():
        file.chmod(0o600)
    run = make_run(script, mode, stored=True, modules=("helper.py",), cwd=str(public_tmp))
    assert run_script(launcher, run).output == 42
    unmarked = make_run(script, mode, cwd=str(public_tmp))
    assert run_script(launcher, unmarked).reason == "sandbox_error"  # read as the run's user


@pytest.mark.timeout(30)
def test_syntax_error_is_reported_as_python_would(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "broken.py", "x = (1,\nprint(x\n")
    result = run_script(launcher, make_run(script, mode))
    assert (result.status, result.reason, result.exit_code) == ("failed_permanent", "exit_code", 1)
    assert f'File "{script}", line 2' in result.stderr_tail
    assert "SyntaxError" in result.stderr_tail.splitlines()[-1]


@pytest.mark.timeout(30)
def test_non_daemon_threads_finish_before_exit(launcher: Launcher, public_tmp: Path) -> None:
    script = write_script(
        public_tmp,
        "threads.py",
        """\
        import threading, time
        def late():
            time.sleep(0.2)
            print('"from the thread"')
        threading.Thread(target=late).start()
        """,
    )
    result = run_script(launcher, make_run(script, "fork"))
    assert (result.status, result.output) == ("succeeded", "from the thread")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("setsid", [False, True], ids=["same-group", "setsid"])
def test_grandchild_left_behind_is_killed(
    launcher: Launcher, public_tmp: Path, mode: str, setsid: bool
) -> None:
    script = write_script(
        public_tmp,
        "parent.py",
        f"""\
        import os, time
        pid = os.fork()
        if pid == 0:
            if {setsid}:
                os.setsid()
            time.sleep(300)
            os._exit(0)
        print(pid)
        """,
    )
    result = run_script(launcher, make_run(script, mode))
    assert result.status == "succeeded"
    grandchild = result.output
    assert isinstance(grandchild, int)
    wait_for(lambda: not is_running(grandchild), 5, "the grandchild to die with its run")


@pytest.mark.timeout(60)
def test_a_sweep_during_a_run_kills_its_escaped_descendant_and_spares_its_own(
    launcher: Launcher, public_tmp: Path
) -> None:
    # Without a uid per run, a run's processes are known by their session: a daemon that left
    # it (setsid) is an orphan once reparented to the forker, even while its run goes on; one
    # that stayed in the session is spared. A sweep follows each reap, so the test makes one
    # happen -- it runs two quick scripts -- only once both daemons are reparented, and the
    # script reports which daemon survived it only then.
    shared = shared_folder(public_tmp)
    script = write_script(
        public_tmp,
        "daemonize.py",
        f"""\
        import json, os, time
        def daemon(escape):
            r, w = os.pipe()
            child = os.fork()
            if child == 0:
                if escape:
                    os.setsid()
                if os.fork() == 0:
                    os.write(w, str(os.getpid()).encode())
                    time.sleep(300)
                os._exit(0)
            os.close(w)
            pid = int(os.read(r, 32))
            os.waitpid(child, 0)  # the intermediate is gone: the daemon is reparented
            return pid
        pids = {{"escaped": daemon(True), "kept": daemon(False)}}
        with open("{shared}/pids.tmp", "w") as f:
            json.dump(pids, f)
        os.rename("{shared}/pids.tmp", "{shared}/pids.json")
        deadline = time.monotonic() + 30
        while not os.path.exists("{shared}/swept") and time.monotonic() < deadline:
            time.sleep(0.01)
        alive = {{}}
        for name, pid in pids.items():
            try:
                os.kill(pid, 0)
                alive[name] = True
            except ProcessLookupError:
                alive[name] = False
        print(json.dumps({{"pids": pids, "alive": alive}}))
        """,
    )
    run = make_run(script, "exec")
    launcher.submit(encode(run))
    pids_file = shared / "pids.json"
    wait_for(pids_file.exists, 15, "the script to write its daemons' pids")
    pids = orjson.loads(pids_file.read_bytes())
    wait_for(
        lambda: all(_parent(pid) == launcher.forker_pid for pid in pids.values()),
        10,
        "both daemons to be reparented to the forker",
    )
    quick = write_script(public_tmp, "quick.py", "print(1)")
    for _ in range(2):  # the second starts after the first's reap, hence after its sweep
        assert run_script(launcher, make_run(quick, "fork")).status == "succeeded"
    (shared / "swept").touch()
    result = collect(launcher, {run.run_id}, timeout=30)[run.run_id]
    assert result.status == "succeeded", result.stderr_tail
    assert result.output == {"pids": pids, "alive": {"escaped": False, "kept": True}}
    wait_for(lambda: not is_running(pids["kept"]), 5, "the run's own daemon to die with it")


def _parent(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


@pytest.mark.timeout(30)
def test_script_closing_stdout_early_still_counts(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(
        public_tmp,
        "closer.py",
        """\
        import os, sys, time
        print('{"done": true}')
        sys.stdout.flush()
        os.close(1)
        time.sleep(0.3)
        """,
    )
    result = run_script(launcher, make_run(script, mode))
    assert (result.status, result.output) == ("succeeded", {"done": True})


@pytest.mark.timeout(30)
def test_setup_failures_are_sandbox_errors(launcher: Launcher, public_tmp: Path, mode: str) -> None:
    script = write_script(public_tmp, "ok.py", "print(1)")
    bad_cwd = run_script(launcher, make_run(script, mode, cwd=str(public_tmp / "missing")))
    assert (bad_cwd.status, bad_cwd.reason) == ("failed_permanent", "sandbox_error")
    assert "cwd" in (bad_cwd.error or "") and "No such file" in (bad_cwd.error or "")
    missing = run_script(launcher, make_run(public_tmp / "gone.py", mode))
    assert (missing.status, missing.reason) == ("failed_permanent", "file_missing")


@pytest.mark.timeout(30)
def test_two_runs_at_once_on_one_launcher(launcher: Launcher, public_tmp: Path) -> None:
    script = write_script(
        public_tmp,
        "nap.py",
        "import json, os, time; time.sleep(1); print(json.dumps(os.environ['ACTOR_RUN_ID']))",
    )
    runs = [make_run(script, "fork"), make_run(script, "exec")]
    began = time.monotonic()
    for run in runs:
        launcher.submit(encode(run))
    ids = {run.run_id for run in runs}
    started = wait_started(launcher, ids)
    assert len({s.child_pid for s in started}) == 2
    results = collect(launcher, ids, timeout=20)
    assert time.monotonic() - began < 1.9  # they overlapped
    assert {r.output for r in results.values()} == ids


@pytest.mark.timeout(30)
def test_kill_all_stops_every_run_as_shutdown(launcher: Launcher, public_tmp: Path) -> None:
    shared = shared_folder(public_tmp)
    sleeper = write_script(public_tmp, "sleeper.py", "import time; time.sleep(300)")
    stubborn = write_script(
        public_tmp,
        "stubborn.py",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open('{shared}/ignoring', 'w').close()\ntime.sleep(300)\n",
    )
    runs = [make_run(sleeper, "fork"), make_run(stubborn, "exec")]
    for run in runs:
        launcher.submit(encode(run))
    ids = {run.run_id for run in runs}
    wait_started(launcher, ids)
    ignoring = shared / "ignoring"
    wait_for(ignoring.exists, 15, "the stubborn script to ignore SIGTERM")
    launcher.kill_all()
    results = collect(launcher, ids, timeout=10)
    for run in runs:
        assert (results[run.run_id].status, results[run.run_id].reason) == (
            "failed_retryable",
            "shutdown",
        )
    assert results[runs[0].run_id].signal == signal.SIGTERM
    assert results[runs[1].run_id].signal == signal.SIGKILL


@pytest.mark.timeout(30)
def test_an_undecodable_run_is_answered_not_fatal(launcher: Launcher) -> None:
    launcher.submit(b'{"v": 1, "type": "run", "run_id": "bad-run", "attempt": 2}')
    result = collect(launcher, {"bad-run"}, timeout=10)["bad-run"]
    assert (result.status, result.reason, result.attempt) == (
        "failed_permanent",
        "sandbox_error",
        2,
    )
    assert "could not decode" in (result.error or "")


@pytest.mark.timeout(30)
def test_a_killed_idle_spare_is_replaced(launcher: Launcher, public_tmp: Path) -> None:
    wait_for(lambda: any(is_idle_spare(p) for p in descendants(launcher.pid)), 5, "an idle spare")
    (spare,) = [p for p in descendants(launcher.pid) if is_idle_spare(p)]
    os.kill(spare.pid, signal.SIGKILL)
    # Once reaped, the next run forks a new child on demand. (A spare killed at the very moment
    # of its handoff takes that run down with it, reported as killed by SIGKILL.)
    wait_for(lambda: not psutil.pid_exists(spare.pid), 5, "the spare to exit")
    script = write_script(public_tmp, "echo.py", ECHO)
    result = run_script(launcher, make_run(script, "fork"))
    assert result.status == "succeeded" and result.child_pid != spare.pid


@pytest.mark.timeout(30)
def test_launcher_ignores_sigint_and_still_runs_a_normal_script(
    launcher: Launcher, public_tmp: Path, mode: str
) -> None:
    """Runs last in this module: after every nasty script above, the same launcher is fine."""
    os.kill(launcher.pid, signal.SIGINT)
    script = write_script(public_tmp, "echo.py", ECHO)
    result = run_script(launcher, make_run(script, mode, input_json="[1, 2]"))
    assert (result.status, result.output["echo"]) == ("succeeded", [1, 2])


# --- the launcher's own life ---------------------------------------------------------------


@pytest.fixture
def own_launcher(exec_python: str) -> Launcher:
    config = SandboxConfig(worker_id="w", env_allow=("PATH",), run_as=RUN_AS, python=exec_python)
    return start_launcher(config)


@pytest.mark.timeout(30)
def test_close_kills_runs_and_reaps_the_launcher(own_launcher: Launcher, public_tmp: Path) -> None:
    script = write_script(public_tmp, "sleeper.py", "import time; time.sleep(300)")
    run = make_run(script, "fork")
    own_launcher.submit(encode(run))
    (started,) = wait_started(own_launcher, {run.run_id})
    own_launcher.close(timeout=5)
    assert own_launcher.exit_status == 0
    wait_for(lambda: not is_running(started.child_pid), 5, "the run child to die")
    with pytest.raises(LauncherGone):
        own_launcher.submit(encode(run))


@pytest.mark.timeout(30)
def test_launcher_environment_block_no_longer_shows_its_secrets(
    launcher: Launcher, public_tmp: Path
) -> None:
    with open(f"/proc/{launcher.pid}/environ", "rb") as f:
        assert SECRET_NAME.encode() not in f.read()


@pytest.mark.timeout(30)
def test_missing_exec_interpreter_is_a_sandbox_error(public_tmp: Path) -> None:
    config = SandboxConfig(worker_id="w", env_allow=(), run_as=RUN_AS, python="/nonexistent/py")
    with start_launcher(config) as broken:
        script = write_script(public_tmp, "ok.py", "print(1)")
        result = run_script(broken, make_run(script, "exec"))
    assert (result.status, result.reason) == ("failed_permanent", "sandbox_error")
    assert "exec" in (result.error or "") and "/nonexistent/py" in (result.error or "")


@pytest.mark.timeout(30)
def test_a_killed_launcher_is_reported_gone_with_its_runs(
    own_launcher: Launcher, public_tmp: Path
) -> None:
    script = write_script(public_tmp, "sleeper.py", "import time; time.sleep(300)")
    run = make_run(script, "fork")
    own_launcher.submit(encode(run))
    (started,) = wait_started(own_launcher, {run.run_id})
    os.kill(own_launcher.pid, signal.SIGKILL)
    with pytest.raises(LauncherGone) as gone:
        for _ in range(100):
            assert not [e for e in own_launcher.receive() if isinstance(e, Finished)]
            time.sleep(0.05)
    assert gone.value.in_flight == ((run.run_id, 1),)
    assert "SIGKILL" in str(gone.value)
    wait_for(lambda: not is_running(started.child_pid), 5, "the run child to die")
    own_launcher.close()


@pytest.mark.timeout(30)
def test_sigterm_and_sighup_leave_the_launcher_and_its_runs_alone(
    own_launcher: Launcher, public_tmp: Path
) -> None:
    """They come from a signal to the whole process group or cgroup (a shell, timeout(1),
    systemd): the supervisor runs the shutdown, and the channel's EOF ends the launcher."""
    script = write_script(
        public_tmp, "nap.py", "import json, time\ntime.sleep(1)\nprint(json.dumps({}))\n"
    )
    run = make_run(script, "exec")
    own_launcher.submit(encode(run))
    wait_started(own_launcher, {run.run_id})
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        os.kill(own_launcher.pid, signum)
    result = collect(own_launcher, {run.run_id}, timeout=15)[run.run_id]
    assert result.status == "succeeded", result
    assert is_running(own_launcher.pid)
    own_launcher.close()


@pytest.mark.timeout(30)
def test_fork_mode_runs_draw_their_own_random_numbers(launcher: Launcher, public_tmp: Path) -> None:
    """random is in the launcher (tempfile imports it), so every spare inherits one state; the
    spares are forked without at-fork hooks, and each run must still be reseeded."""
    script = write_script(
        public_tmp,
        "draw.py",
        "import random; print(random.getrandbits(62))",
    )
    draws = [run_script(launcher, make_run(script, "fork")).output for _ in range(3)]
    assert len(set(draws)) == 3, draws


MODULES_SEEN = """\
import json, sys
print(json.dumps({name: name in sys.modules for name in ("colorsys", "wave")}))
"""


@pytest.mark.timeout(30)
def test_preload_is_what_fork_mode_scripts_find_already_imported(
    public_tmp: Path, exec_python: str
) -> None:
    config = SandboxConfig(
        worker_id="w", env_allow=("PATH",), run_as=RUN_AS, python=exec_python,
        preload=("colorsys", "no_such_module_here"),
    )  # fmt: skip
    script = write_script(public_tmp, "seen.py", MODULES_SEEN)
    with start_launcher(config) as own:
        assert own.preload_failed == (
            "no_such_module_here: ModuleNotFoundError: No module named 'no_such_module_here'",
        )
        fork = run_script(own, make_run(script, "fork"))
        exec_ = run_script(own, make_run(script, "exec"))
    assert fork.output == {"colorsys": True, "wave": False}
    assert exec_.output == {"colorsys": False, "wave": False}  # a fresh interpreter

"""Run isolation at the launcher: own uids, hardening, network namespace, what a result can be,
and the worker's watch over a launcher that stops answering."""

import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.codec import MAX_BODY_BYTES, decode, encode
from protocol.messages import Limits, Result
from tests.helpers import wait_for, write_script
from tests.uids import session_uids
from tests.workers.conftest import IS_ROOT, collect, is_running, make_run, run_script, wait_started
from workers.flight import Flight, Reaped
from workers.launcher_handle import Launcher, LauncherGone, SandboxConfig, start_launcher

root_only = pytest.mark.skipif(not IS_ROOT, reason="own uids and namespaces need root")


def run_uids() -> tuple[int, ...]:
    """Two uids of this process's claimed block (tests.uids): none another test process or a
    supervisor on this host hands out meanwhile."""
    return tuple(session_uids()[:2]) if IS_ROOT else ()


@pytest.fixture(scope="module")
def isolated(exec_python: str) -> Iterator[Launcher]:
    """A launcher whose runs get uids of their own (when root), as the pool configures it."""
    config = SandboxConfig(
        worker_id="isolated",
        env_allow=("PATH",),
        run_uids=run_uids(),
        kill_grace_s=0.5,
        python=exec_python,
    )
    with start_launcher(config) as handle:
        yield handle


IDENTITY = """\
import json, os, sys
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
tmp = os.environ["TMPDIR"]
st = os.stat(tmp)
print(json.dumps({
    "ids": [os.getuid(), os.getgid(), os.getgroups()],
    "umask": os.umask(0),
    "tmp": [tmp, os.environ["TEMP"], os.environ["TMP"], os.environ.get("HOME")],
    "tmp_stat": [st.st_uid, oct(st.st_mode & 0o777)],
    "cap_bound": status("CapBnd"), "no_new_privs": status("NoNewPrivs"),
}))
"""


@pytest.mark.timeout(60)
def test_each_run_is_hardened_with_a_private_tmpdir(
    isolated: Launcher, public_tmp: Path, mode: str
) -> None:
    script = write_script(public_tmp, "identity.py", IDENTITY)
    result = run_script(isolated, make_run(script, mode))
    assert result.status == "succeeded", result
    out = result.output
    assert (out["umask"], out["no_new_privs"]) == (0o077, "1")
    tmp = out["tmp"][0]
    assert out["tmp"][:3] == [tmp] * 3 and tmp != "/tmp"
    assert out["tmp_stat"][1] == "0o700"
    wait_for(lambda: not os.path.exists(tmp), 5, "the private TMPDIR to be removed")
    if IS_ROOT:
        uid = out["ids"][0]
        assert out["ids"] == [uid, uid, []] and uid in run_uids()
        assert out["tmp_stat"][0] == uid and out["tmp"][3] == tmp  # HOME: no account's home
        assert int(out["cap_bound"], 16) == 0


@root_only
@pytest.mark.timeout(60)
def test_concurrent_runs_get_different_uids_and_reuse_them(
    isolated: Launcher, public_tmp: Path
) -> None:
    script = write_script(
        public_tmp, "hold.py", "import os, time; time.sleep(0.5); print(os.getuid())"
    )
    runs = [make_run(script, "fork") for _ in run_uids()]
    for run in runs:
        isolated.submit(encode(run))
    results = collect(isolated, {r.run_id for r in runs}, 30)
    assert sorted(r.output for r in results.values()) == sorted(run_uids())
    again = run_script(isolated, make_run(script, "exec"))
    assert again.output in run_uids()


@root_only
@pytest.mark.timeout(60)
def test_network_none_leaves_only_loopback(isolated: Launcher, public_tmp: Path) -> None:
    script = write_script(
        public_tmp,
        "net.py",
        """\
        import json, socket
        names = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname(), timeout=2)
        try:
            socket.create_connection(("192.0.2.1", 9), timeout=2)
            outside = "reached"
        except OSError as exc:
            outside = type(exc).__name__
        print(json.dumps({"interfaces": names, "outside": outside}))
        """,
    )
    result = run_script(isolated, make_run(script, "exec", network="none"))
    assert result.status == "succeeded", result
    assert result.output == {"interfaces": ["lo"], "outside": "OSError"}
    host = run_script(isolated, make_run(script, "exec"))
    assert len(host.output["interfaces"]) > 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("written", [100, 5000, 8000, 8192, 8193, 20000, 300_000])
def test_the_stderr_tail_is_exactly_the_last_stderr_kb(
    isolated: Launcher, public_tmp: Path, written: int
) -> None:
    script = write_script(
        public_tmp,
        "noisy.py",
        "import sys\nn = int(sys.stdin.read())\n"
        "sys.stderr.write(''.join(chr(65 + i % 26) for i in range(n)))\nprint(1)\n",
    )
    result = run_script(isolated, make_run(script, "fork", input_json=str(written)))
    expected = "".join(chr(65 + i % 26) for i in range(written))[-8192:]
    assert result.stderr_tail == expected


@pytest.mark.timeout(120)
def test_results_that_cannot_be_encoded_or_do_not_fit_are_classified(
    isolated: Launcher, public_tmp: Path
) -> None:
    deep = write_script(public_tmp, "deep.py", "print('{\"a\":' + '[' * 300 + ']' * 300 + '}')")
    result = run_script(isolated, make_run(deep, "fork"))
    assert (result.status, result.reason, result.output) == (
        "failed_permanent", "invalid_output", None,
    )  # fmt: skip


def test_a_result_past_the_protocols_size_becomes_output_limit() -> None:
    """The configured caps keep a real result under MAX_BODY_BYTES (8 MiB of stdout, 1 MiB of
    stderr), so the last line of defence is checked with a smaller bound."""
    run = make_run(Path("/nonexistent.py"), "fork", limits=Limits(output_kb=8192))
    flight = Flight(run, pid=1, out_fd=-1, err_fd=-1, note_fd=-1)
    flight.out += b'"' + b"x" * (2 << 20) + b'"'
    reaped = Reaped(pid=1, status=0, utime_s=0.0, stime_s=0.0, maxrss_kb=0)
    body, succeeded = flight.result("w", reaped, b"", max_bytes=1 << 20)
    result = decode(body)
    assert isinstance(result, Result) and not succeeded
    assert (result.status, result.reason, result.output) == (
        "failed_permanent", "output_limit", None,
    )  # fmt: skip
    assert len(body) <= 1 << 20 and str(1 << 20) in (result.error or "")
    body, succeeded = flight.result("w", reaped, b"")  # under the real bound it fits as is
    assert succeeded and len(decode(body).output) == 2 << 20  # type: ignore[union-attr]
    assert len(body) < MAX_BODY_BYTES


@pytest.mark.timeout(60)
def test_the_launcher_inherits_no_descriptor_but_its_channel(exec_python: str) -> None:
    r, w = os.pipe()  # inheritable, like a multiprocess sentinel
    os.set_inheritable(w, True)
    try:
        config = SandboxConfig(worker_id="fds", env_allow=(), python=exec_python)
        with start_launcher(config) as handle:
            fds = os.listdir(f"/proc/{handle.pid}/fd")
            targets = {os.readlink(f"/proc/{handle.pid}/fd/{fd}") for fd in fds}
            assert os.readlink(f"/proc/self/fd/{w}") not in targets
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_a_stopped_launcher_is_given_up_within_the_heartbeat_timeout(
    exec_python: str, public_tmp: Path
) -> None:
    config = SandboxConfig(
        worker_id="stop", env_allow=("PATH",), python=exec_python, heartbeat_timeout_s=1.0,
        run_uids=run_uids(),
    )  # fmt: skip
    script = write_script(public_tmp, "sleep.py", "import time; time.sleep(60)")
    handle = start_launcher(config)
    try:
        run = make_run(script, "fork")
        handle.submit(encode(run))
        (started,) = wait_started(handle, {run.run_id})
        forker = handle.forker_pid
        os.kill(handle.pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(LauncherGone, match="did not answer a ping") as info:
            while time.monotonic() - began < 10:
                select.select([handle], [], [], 0.1)
                handle.receive()
                handle.keepalive(time.monotonic())
        assert time.monotonic() - began < 1.0 + 1.5
        assert info.value.in_flight == ((run.run_id, 1),)
        wait_for(lambda: not is_running(started.child_pid), 5, "the run child to die")
        wait_for(
            lambda: not is_running(handle.pid) and not is_running(forker),
            5,
            "the launcher and its forker to exit",
        )
    finally:
        handle.close()

"""Hostile scripts against a real supervisor: the control channel, the store, inputs, poison.

Each attack runs inside a real sandboxed script, as a hostile actor author would write it, on a
supervisor with the default control configuration (an ``ipc://`` socket in the state folder).
The attacks that depend on the sandbox user need a supervisor started as root (scripts then run
as another user); they are skipped otherwise.
"""

import hashlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import zmq

from protocol.client import ClientError
from protocol.messages import MAX_INPUT_CHARS
from supervisor.controlkeys import GENERATED_DIR
from tests.helpers import free_port, wait_for
from tests.hostile.common import is_paused, output_of
from tests.supervisor.harness import RunningSupervisor, session_uids, write_script

Start = Callable[..., RunningSupervisor]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts run as another user only as root")

# A control client with no dependency it could lack: it tries every unix socket it can find,
# the paths and TCP endpoints it was told about, and the keys guarding them; it speaks ZMTP 3 in
# plain sockets to send a PAUSE, and pyzmq's DEALER too when the sandbox user can import it.
ATTACKER = """\
    import json, os, socket, sys

    request = json.load(sys.stdin)
    report = {"uid": os.getuid(), "connected": [], "files": {}, "raw": {}, "answers": {}}

    def unix_paths():
        paths = set(request["sockets"])
        try:
            with open("/proc/net/unix") as table:
                for line in table.read().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) >= 8 and fields[7].startswith("/"):
                        paths.add(fields[7])
        except OSError:
            pass
        return sorted(paths)

    for path in unix_paths():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1)
        try:
            sock.connect(path)
            report["connected"].append(path)
        except OSError:
            pass
        finally:
            sock.close()

    for path in request["files"]:
        try:
            with open(path, "rb") as handle:
                report["files"][path] = "read %d bytes" % len(handle.read())
        except OSError as exc:
            report["files"][path] = type(exc).__name__

    def zmtp_pause(family, address):  # a DEALER in raw ZMTP 3.0, NULL mechanism: one PAUSE
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(address)
            signature = b"\\xff" + b"\\0" * 8 + b"\\x7f\\x03"
            sock.sendall(signature)  # the server answers with its whole greeting
            greeting = b""
            while len(greeting) < 64:
                chunk = sock.recv(64 - len(greeting))
                if not chunk:
                    break
                greeting += chunk
            mechanism = greeting[12:32].rstrip(b"\\0").decode()
            if mechanism != "NULL":
                return "mechanism " + mechanism
            sock.sendall(b"\\x00" + b"NULL".ljust(20, b"\\0") + b"\\0" * 32)
            ready = b"\\x05READY\\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER"
            sock.sendall(bytes([0x04, len(ready)]) + ready)
            body = json.dumps({"v": 1, "type": "pause", "id": "raw", "actor": request["victim"],
                               "reason": "pwned"}).encode()
            sock.sendall(bytes([0x00, len(body)]) + body)
            answer = b""
            try:
                while len(answer) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            except OSError:
                pass
            return "answered " + answer.decode("latin-1")

    ours = [p for p in report["connected"] if p.startswith(request["root"])]
    for path in sorted(set(ours + request["sockets"])):
        try:
            report["raw"]["ipc://" + path] = zmtp_pause(socket.AF_UNIX, path)
        except OSError as exc:
            report["raw"]["ipc://" + path] = type(exc).__name__
    for host, port in request["tcp"]:
        try:
            report["raw"]["tcp://%s:%d" % (host, port)] = zmtp_pause(socket.AF_INET, (host, port))
        except OSError as exc:
            report["raw"]["tcp://%s:%d" % (host, port)] = type(exc).__name__

    try:
        import zmq
    except ImportError as exc:
        report["zmq"] = "not importable: %s" % exc
    else:
        report["zmq"] = zmq.zmq_version()
        targets = ["ipc://" + p for p in ours + request["sockets"]]
        targets += ["tcp://%s:%d" % (h, p) for h, p in request["tcp"]]
        ctx = zmq.Context()
        for n, endpoint in enumerate(sorted(set(targets))):
            for curve in (False, True):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                if curve:  # a key pair of its own; the server key is what it cannot read
                    public, secret = zmq.curve_keypair()
                    sock.curve_publickey, sock.curve_secretkey = public, secret
                    sock.curve_serverkey = zmq.curve_keypair()[0]
                sock.connect(endpoint)
                rid = "attack-%d-%d" % (n, curve)
                sock.send(json.dumps({"v": 1, "type": "pause", "id": rid,
                                      "actor": request["victim"], "reason": "pwned"}).encode())
                if sock.poll(1500):
                    report["answers"][endpoint] = sock.recv().decode(errors="replace")[:300]
                sock.close()
        ctx.term()
    print(json.dumps(report))
"""

READER = """\
    import json, os, sys

    request = json.load(sys.stdin)
    report = {"read": {}, "listed": {}, "denied": []}
    targets = list(request["files"])
    caches = ["/tmp/" + n for n in os.listdir("/tmp") if n.startswith("actor-supervisor-code-")]
    for folder in request["folders"] + caches:
        try:
            names = os.listdir(folder)
            report["listed"][folder] = names
            targets += [os.path.join(folder, name) for name in names]
        except OSError:
            report["denied"].append(folder)
        targets += [os.path.join(folder, name) for name in request["guesses"]]
    for path in sorted(set(targets)):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            report["read"][path] = data.decode("latin-1")[:2000]
        except OSError:
            report["denied"].append(path)
    print(json.dumps(report))
"""

SLEEPER = """\
    import json, sys, time
    request = json.load(sys.stdin)
    time.sleep(request.get("seconds", 30))
    print(json.dumps({"slept": request.get("seconds", 30)}))
"""

SECRETIVE = """\
    import json, sys
    request = json.load(sys.stdin)
    print(json.dumps({"kept": request}))  # the code of another actor: private too
"""


def _actor(name: str, script: str, extra: str = "") -> str:
    return f'\n[[actors]]\nname = "{name}"\nscript = "scripts/{script}"\n{extra}\n'


@as_root
@pytest.mark.timeout(240)
def test_a_script_cannot_reach_the_control_channel(public_tmp: Path, supervisors: Start) -> None:
    """Default ipc socket, and loopback TCP chosen by an operator: no request gets through."""
    write_script(public_tmp, "attacker.py", ATTACKER)
    write_script(public_tmp, "sleeper.py", SLEEPER)
    actors = _actor("attacker", "attacker.py", "timeout_s = 60") + _actor("victim", "sleeper.py")
    sup = supervisors(actors)
    # A second supervisor whose operator chose loopback TCP: it guards it with generated keys.
    other = public_tmp / "tcp"
    write_script(other, "sleeper.py", SLEEPER)
    write_script(other, "attacker.py", ATTACKER)
    port = free_port()
    uids = session_uids(shift=1)
    config = other / "supervisor.toml"
    config.write_text(
        f'[supervisor]\nworkers = 1\ncontrol = "tcp://127.0.0.1:{port}"\n'
        f'run_as_range = "{uids[0]}-{uids[-1]}"\n'  # two supervisors on one host: two ranges
        + _actor("attacker", "attacker.py", "timeout_s = 60")
        + _actor("victim", "sleeper.py")
    )
    tcp = supervisors(config=config, workers=1)
    keys = other / "state" / GENERATED_DIR
    assert sorted(p.name for p in keys.iterdir()) == [
        "client.key", "client.key_secret", "server.key", "server.key_secret",
    ]  # fmt: skip
    assert {oct(p.stat().st_mode & 0o777) for p in keys.iterdir()} == {"0o600"}
    ipc = sup.endpoint.removeprefix("ipc://")
    attack = {
        "victim": "victim",
        "root": str(public_tmp),
        "sockets": [ipc, f"{other}/state/control.sock"],
        "tcp": [["127.0.0.1", port]],
        "files": [str(p) for p in keys.iterdir()] + [str(keys / "client.key_secret")],
    }
    for target in (sup, tcp):
        with target.client(timeout_s=120) as client:
            report = output_of(client.submit("attacker", attack, wait=True))
        assert report["uid"] != 0  # the sandbox user, not the supervisor's
        ours = [p for p in report["connected"] if p.startswith(str(public_tmp))]
        assert not ours and ipc not in report["connected"], report
        assert not any(p.endswith("workers.sock") for p in report["connected"]), report
        assert all(not v.startswith("read") for v in report["files"].values()), report
        raw = report["raw"]  # stdlib ZMTP: refused at connect (ipc), or CURVE demanded (tcp)
        assert raw[f"tcp://127.0.0.1:{port}"] == "mechanism CURVE", report
        assert all(raw[f"ipc://{p}"] == "PermissionError" for p in attack["sockets"]), report
        ours = [f"ipc://{p}" for p in attack["sockets"]] + [f"tcp://127.0.0.1:{port}"]
        assert not [e for e in ours if e in report["answers"]], report
    assert not is_paused(sup, "victim") and not is_paused(tcp, "victim")
    # The operator, with the same config, gets through both.
    for target in (sup, tcp):
        with target.client() as client:
            assert client.pause("victim", "operator")["paused"] is True
    assert tcp.cli("resume", "victim").returncode == 0 and not is_paused(tcp, "victim")


@as_root
@pytest.mark.timeout(180)
def test_a_script_cannot_read_the_store_spool_or_code_cache(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "reader.py", READER)
    write_script(public_tmp, "secretive.py", SECRETIVE)
    secretive_code = (public_tmp / "scripts" / "secretive.py").read_bytes()
    actors = _actor("reader", "reader.py") + _actor(
        "secretive", "secretive.py", 'exec_mode = "database"'
    )
    sup = supervisors(actors)
    secret = "s3cret-" + os.urandom(8).hex()
    with sup.client(timeout_s=60) as client:
        kept = output_of(client.submit("secretive", {"token": secret}, wait=True))
        assert kept == {"kept": {"token": secret}}  # it ran from the private code cache
    state = public_tmp / "state"
    database = state / "actor-supervisor.db"
    files = [f"{database}{suffix}" for suffix in ("", "-wal", "-shm")]
    files += [str(p) for p in (state / "spool").iterdir()]
    assert Path(files[1]).exists()  # WAL mode: the reader gets every file to try
    attack = {
        "files": files,
        "folders": [str(state), str(state / "spool")],
        "guesses": [hashlib.sha256(secretive_code).hexdigest() + ".py"],
    }
    with sup.client(timeout_s=60) as client:
        report = output_of(client.submit("reader", attack, wait=True))
    assert report["read"] == {} and report["listed"] == {}, report
    assert secret not in orjson.dumps(report).decode()
    assert stat_mode(state) == 0o700 and all(stat_mode(Path(f)) == 0o600 for f in files)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.timeout(120)
def test_an_input_larger_than_a_worker_accepts_is_refused_at_submission(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "sleeper.py", SLEEPER)
    sup = supervisors(_actor("sleeper", "sleeper.py"), workers=1)
    huge = {"blob": "x" * MAX_INPUT_CHARS}
    size = len(orjson.dumps(huge))
    with sup.client(timeout_s=60) as client:
        for call in (
            lambda: client.submit("sleeper", huge),
            lambda: client.trigger("sleeper", huge),
        ):
            with pytest.raises(ClientError) as info:
                call()
            assert info.value.code == "bad_request"
            assert f"input is {size} characters as JSON" in info.value.message
            assert f"a worker accepts at most {MAX_INPUT_CHARS}" in info.value.message
    # Valid JSON nested deeper than a worker's RUN message could carry (a hostile client's bytes).
    deep = b"[" * 300 + b"]" * 300
    body = b'{"v": 1, "type": "submit", "id": "deep", "actor": "sleeper", "input": %s}' % deep
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.linger = 0
        sock.connect(sup.endpoint)
        sock.send(body)
        assert sock.poll(30_000), "no reply to the deep input"
        reply = orjson.loads(sock.recv())
    assert (reply["ok"], reply["error"]) == (False, "bad_request"), reply
    assert reply["message"].startswith("input cannot be encoded"), reply
    store = sup.store()
    try:
        assert store.list_runs(actor="sleeper") == []  # nothing accepted, nothing lost
    finally:
        store.close()


def _kill_worker_running(sup: RunningSupervisor, run_id: str, attempt: int) -> None:
    """SIGKILL the worker that holds ``run_id``'s ``attempt`` as soon as it runs it."""

    def worker_pid() -> int | None:
        for worker in sup.status()["workers"]:
            running = worker["child_pid"] and worker["in_flight"]
            if running and (worker["current_run"], worker["current_attempt"]) == (run_id, attempt):
                pid: int = worker["pid"]
                return pid
        return None

    os.kill(wait_for(worker_pid, 60, f"attempt {attempt} of {run_id} to run"), signal.SIGKILL)


@pytest.mark.timeout(180)
def test_a_run_that_kills_its_worker_twice_is_poison(public_tmp: Path, supervisors: Start) -> None:
    """The second worker death ends it for good; an innocent run lost once retries for free."""
    write_script(public_tmp, "sleeper.py", SLEEPER)
    options = "max_retries = 0\nretry_backoff_s = 0.1\nretry_jitter = false"
    actors = _actor("poison", "sleeper.py", options) + _actor("innocent", "sleeper.py", options)
    sup = supervisors(actors, workers=2)
    with sup.client(timeout_s=60) as client:
        poison = client.submit("poison", {"seconds": 60})
        innocent = client.submit("innocent", {"seconds": 3})
    _kill_worker_running(sup, innocent.run_id, 1)
    for attempt in (1, 2):
        _kill_worker_running(sup, poison.run_id, attempt)
    store = sup.store()
    try:

        def attempts(run_id: str) -> list[tuple[int, str, str | None]]:
            runs = store.list_runs(run_id=run_id)
            if not runs or not runs[0].is_final:
                return []
            return sorted((r.attempt, r.status, r.reason) for r in runs)

        assert wait_for(lambda: attempts(poison.run_id), 60, "the poison run to end") == [
            (1, "failed_retryable", "worker_lost"),
            (2, "failed_permanent", "poison"),
        ]
        assert "took down 2 workers" in (store.list_runs(run_id=poison.run_id)[0].error or "")
        # max_retries = 0, yet the innocent run got its second attempt: a lost worker is free.
        assert wait_for(lambda: attempts(innocent.run_id), 60, "the innocent run to end") == [
            (1, "failed_retryable", "worker_lost"),
            (2, "succeeded", None),
        ]
    finally:
        store.close()
    actors_now = {a["name"]: a for a in sup.status()["actors"]}
    assert actors_now["innocent"]["consecutive_failures"] == 0
    assert "reason=poison" in sup.log()

"""Bounded memory and the protocol nits of issue 9, against a real supervisor where it matters.

Queued inputs are bounded in bytes (``busy`` beyond ``queue_max_bytes``), recent outcomes in
bytes, idempotency keys expire from a heap, refreshes of one actor are coalesced; an input
nested too deeply is a ``bad_request``, ``"v": true`` is not version 1, a NUL in an idempotency
key is refused, the same key with another input is an ``idempotency_conflict``; a killed
predecessor's leftovers are removed at start-up.
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from protocol import ProtocolError, decode
from protocol.client import ClientError
from protocol.messages import CLIENT_REQUESTS, MAX_INPUT_CHARS, Refresh
from protocol.outcomes import RunOutcome
from supervisor.control import MAX_LEGAL_BODY
from supervisor.idempotency import IdempotencyKeys
from supervisor.leftovers import MARKER, clean_leftovers, mark_owned
from supervisor.runs import RecentOutcomes
from tests.helpers import wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
SLOW = """\
    import json, sys, time
    json.load(sys.stdin)
    time.sleep(30)
    print("{}")
"""
ACTORS = """
[[actors]]
name = "echo"
script = "scripts/echo.py"

[[actors]]
name = "slow"
script = "scripts/slow.py"
"""


@pytest.fixture
def sup(public_tmp: Path, supervisors: Start) -> RunningSupervisor:
    write_script(public_tmp, "echo.py", ECHO)
    write_script(public_tmp, "slow.py", SLOW)
    return supervisors(ACTORS, workers=1, settings="queue_max_bytes = 4096\n")


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as info:
        call()
    return info.value.code


def raw_request(sup: RunningSupervisor, body: bytes) -> dict[str, Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(sup.endpoint)
    try:
        sock.send(body)
        assert sock.poll(10_000), "no reply"
        reply: dict[str, Any] = orjson.loads(sock.recv())
        return reply
    finally:
        sock.close()
        ctx.term()


@pytest.mark.timeout(120)
def test_protocol_nits_and_the_byte_bound_on_queued_inputs(sup: RunningSupervisor) -> None:
    with sup.client() as client:
        for depth in (255, 600, 1020):  # a client cannot even encode these; a raw one can
            deep = "[" * depth + "1" + "]" * depth
            body = f'{{"v":1,"type":"submit","id":"d{depth}","actor":"echo","input":{deep}}}'
            reply = raw_request(sup, body.encode())
            assert (reply["ok"], reply["error"]) == (False, "bad_request"), reply
        first = client.submit("echo", {"n": 1}, idempotency_key="k", wait=True)
        again = client.submit("echo", {"n": 1}, idempotency_key="k")
        assert again.run_id == first.run_id  # type: ignore[union-attr]
        conflict = lambda: client.submit("echo", {"n": 2}, idempotency_key="k")  # noqa: E731
        assert error_code(conflict) == "idempotency_conflict"
        assert error_code(lambda: client.submit("echo", 1, idempotency_key="a\0b")) == (
            "bad_request"
        )
        # queue_max_bytes = 4096: inputs held by unfinished runs (one runs, the rest wait)
        client.submit("slow", "x" * 1500)
        client.submit("slow", "x" * 1500)
        assert error_code(lambda: client.submit("slow", "x" * 1500)) == "busy"
        status = client.status()
    assert status["counters"]["bad_requests"] >= 4
    assert status["counters"]["busy_rejections"] == 1
    assert "Traceback" not in sup.log()


@pytest.mark.timeout(120)
def test_a_request_too_large_to_be_legal_is_refused_unparsed(sup: RunningSupervisor) -> None:
    """Refused by its length (its id found near the start), so a flood of them stays cheap."""
    filler = b"x" * (MAX_LEGAL_BODY + 1)
    body = b'{"v":1,"type":"submit","id":"huge1","actor":"echo","input":"' + filler + b'"}'
    started = time.monotonic()
    reply = raw_request(sup, body)
    assert (reply["id"], reply["ok"], reply["error"]) == ("huge1", False, "bad_request"), reply
    assert f"inputs are at most {MAX_INPUT_CHARS} characters" in reply["message"]
    assert time.monotonic() - started < 10
    assert sup.status()["counters"]["bad_requests"] == 1
    store = sup.store()
    try:
        assert store.list_runs(actor="echo") == []  # nothing accepted
    finally:
        store.close()


def test_v_true_is_not_version_1() -> None:
    body = orjson.dumps({"v": True, "type": "status", "id": "x"})
    with pytest.raises(ProtocolError, match="unsupported protocol version: True"):
        decode(body, CLIENT_REQUESTS)
    body = orjson.dumps(
        {"v": 1, "type": "submit", "id": "x", "actor": "a", "idempotency_key": "\0"}
    )
    with pytest.raises(ProtocolError, match="NUL"):
        decode(body, CLIENT_REQUESTS)


@pytest.mark.timeout(120)
def test_refreshes_of_one_actor_are_coalesced(sup: RunningSupervisor) -> None:
    """2,000 refreshes of one actor from 40 clients (50 each: a burst of replies to one client
    beyond SNDHWM would be dropped, by design) cost a few loads, and every one is answered."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.DEALER) for _ in range(40)]
    poller = zmq.Poller()
    for sock in socks:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(sup.endpoint)
        poller.register(sock, zmq.POLLIN)
    try:
        for n in range(50):
            for i, sock in enumerate(socks):
                sock.send(orjson.dumps(Refresh(id=f"r{i}-{n}", actor="echo")))
        answered, count = 0, 50 * len(socks)
        deadline = time.monotonic() + 60
        while answered < count and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                reply = orjson.loads(sock.recv())
                assert reply["ok"], reply
                answered += 1
        assert answered == count
    finally:
        for sock in socks:
            sock.close()
        ctx.term()
    counters = sup.status()["counters"]
    assert counters["refreshes_coalesced"] > count // 2, counters
    assert counters["replies_dropped"] == 0


def test_recent_outcomes_are_bounded_in_bytes() -> None:
    outcomes = RecentOutcomes(size=10_000, max_bytes=10 << 20)
    for n in range(100):
        outcomes.add(RunOutcome(run_id=str(n), actor="a", status="succeeded"), 1 << 20)  # 1 MB
    assert outcomes.bytes <= 10 << 20 and len(outcomes) == 10
    assert outcomes.get("99") is not None and outcomes.get("0") is None


def test_idempotency_keys_expire_incrementally() -> None:
    keys = IdempotencyKeys(window_s=100.0)
    for n in range(1000):
        keys.add("a", str(n), f"run{n}", seen_at=float(n), input_digest=None)
    keys.add("a", "5", "again", seen_at=950.0, input_digest=b"d")  # re-added: kept
    assert keys.expire(now=600.0) == 499  # keys seen before 500, except the re-added one
    assert keys.find("a", "5") == ("again", b"d") and keys.find("a", "4") is None
    assert len(keys) == 501


def test_leftovers_of_dead_supervisors_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    shm, tmp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir()
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = tmp / "actor-supervisor-abc"
    gone.mkdir()
    (gone / MARKER).write_text(f"{dead.stdout.strip()} 12345.0\n")
    live = tmp / "actor-supervisor-code-def"
    live.mkdir()
    mark_owned(live)
    unmarked = tmp / "actor-supervisor-test-xyz"
    unmarked.mkdir()
    old_board = shm / "actor-supervisor-scoreboard-old"
    old_board.write_bytes(b"\0" * 64)
    os.utime(old_board, (time.time() - 3600, time.time() - 3600))
    new_board = shm / "actor-supervisor-scoreboard-new"
    new_board.write_bytes(b"\0" * 64)
    removed = clean_leftovers(tmp=tmp, shm=shm)
    assert sorted(removed) == sorted([gone, old_board])
    assert live.exists() and unmarked.exists() and new_board.exists()


@pytest.mark.timeout(120)
def test_a_restart_after_sigkill_cleans_the_predecessors_leftovers(
    sup: RunningSupervisor, supervisors: Start
) -> None:
    pid = sup.proc.pid
    mine = [p for p in Path("/tmp").glob("actor-supervisor-*") if (p / MARKER).exists()
            and (p / MARKER).read_text().split()[0] == str(pid)]  # fmt: skip
    assert len(mine) == 2  # its runtime folder and its code cache
    sup.proc.kill()
    sup.proc.wait()
    wait_for(lambda: not any(
        w.info["ppid"] == pid for w in __import__("psutil").process_iter(["ppid"])
    ), 30, "the workers to die with it")  # fmt: skip
    again = supervisors(config=sup.config_path, endpoint=sup.endpoint, workers=1)
    assert not any(p.exists() for p in mine)
    assert again.stop() == 0

"""The control socket's per-client bound: a client that keeps at most ``MAX_UNANSWERED``
requests unanswered never loses a reply, and one beyond it is refused ``busy`` at once.

In-process: a real :class:`ControlServer` on an ipc endpoint, answered by a thread, and real
DEALER clients; no supervisor is needed to exercise the socket's accounting.
"""

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import zmq

from protocol.codec import encode
from protocol.messages import StatusRequest
from supervisor.control import MAX_UNANSWERED, ControlServer
from supervisor.runs import Waiter

BUSY_TURN_S = 0.002  # the loop's other work per turn: replies to a client then go out in bursts


def _client(ctx: "zmq.Context[Any]", endpoint: str) -> "zmq.Socket[bytes]":
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _request(n: int) -> bytes:
    return encode(StatusRequest(id=str(n)))


def test_a_client_beyond_its_unanswered_requests_is_refused_busy(tmp_path: Path) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = ControlServer(ctx, f"ipc://{tmp_path}/control.sock", None)
    client = _client(ctx, f"ipc://{tmp_path}/control.sock")
    try:
        extra = 6
        for n in range(MAX_UNANSWERED + extra):
            client.send(_request(n))
        held: list[Waiter] = []
        while len(held) + server.over_limit < MAX_UNANSWERED + extra:
            assert server.socket.poll(10_000)
            held += [waiter for waiter, _ in server.requests()]
        assert len(held) == MAX_UNANSWERED and server.over_limit == extra
        refused = [orjson.loads(client.recv()) for _ in range(extra)]
        assert {(r["ok"], r["error"]) for r in refused} == {(False, "busy")}
        assert {r["id"] for r in refused} == {str(n) for n in range(MAX_UNANSWERED, 70)}
        # a waiting submit's "accepted" is not its final reply: the request stays unanswered
        waiting = Waiter(held[0].identity, held[0].request_id, True)
        server.reply(waiting, "accepted", {"run_id": "r"})
        client.send(_request(100))
        assert server.socket.poll(10_000)
        assert list(server.requests()) == [] and server.over_limit == extra + 1
        server.reply(waiting, "result", {"run_id": "r"})  # its final reply frees a place
        client.send(_request(101))
        assert server.socket.poll(10_000)
        assert [waiter.request_id for waiter, _ in server.requests()] == ["101"]
        assert server.replies_dropped == 0
    finally:
        client.close()
        server.close()
        ctx.term()


def test_clients_pipelining_up_to_the_limit_lose_no_reply(tmp_path: Path) -> None:
    """ZeroMQ sees a client's reads late (by up to half the HWM); the SNDHWM covers that, so a
    window of MAX_UNANSWERED requests, replies read as they come, never drops one."""
    endpoint = f"ipc://{tmp_path}/control.sock"
    ctx: zmq.Context[Any] = zmq.Context()
    server = ControlServer(ctx, endpoint, None)
    stop = threading.Event()

    def answer() -> None:  # a loop busy elsewhere between turns, as under a flood
        while not stop.is_set():
            if server.socket.poll(50):
                for waiter, _ in server.requests():
                    server.reply(waiter, "status", {"pad": "x" * 200})
                time.sleep(BUSY_TURN_S)

    thread = threading.Thread(target=answer)
    thread.start()
    count, tally = 4000, Counter[str]()

    def pipeline(index: int) -> None:
        sock = _client(ctx, endpoint)
        sent = received = 0
        try:
            while received < count:
                while sent < count and sent - received < MAX_UNANSWERED:
                    sock.send(_request(sent))
                    sent += 1
                if not sock.poll(5_000):
                    break
                while sock.poll(0):
                    reply = orjson.loads(sock.recv())
                    tally[reply["kind"]] += 1
                    received += 1
        finally:
            sock.close()

    clients = [threading.Thread(target=pipeline, args=(i,)) for i in range(4)]
    try:
        for each in clients:
            each.start()
        for each in clients:
            each.join()
    finally:
        stop.set()
        thread.join()
        server.close()
        ctx.term()
    assert tally == {"status": 4 * count}
    assert server.replies_dropped == 0 and server.over_limit == 0

"""send_frames and recv_frames: what send_multipart and recv_multipart do, on real sockets."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from protocol.sockets import has_message, recv_frames, send_frames


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    """A ROUTER and a DEALER (identity b"w0") connected over ipc, as workers are."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(f"ipc://{tmp_path}/r.sock")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"w0")
    dealer.connect(f"ipc://{tmp_path}/r.sock")
    yield router, dealer
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def test_frames_cross_both_ways_whole(pair: tuple[zmq.Socket[Any], zmq.Socket[Any]]) -> None:
    router, dealer = pair
    big = b"x" * (1 << 20)  # past pyzmq's copy threshold: received as a zero-copy frame
    send_frames(dealer, (b"", b"hello", big))
    assert router.poll(5000)
    assert recv_frames(router) == [b"w0", b"", b"hello", big]
    assert not has_message(router)
    send_frames(router, [b"w0", b"one"])
    send_frames(router, (b"w0", b"two"))
    assert dealer.poll(5000)
    assert dealer.recv_multipart() == [b"one"]
    assert dealer.recv_multipart() == [b"two"]


def test_an_empty_socket_and_an_unknown_peer_raise_as_pyzmq_does(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    router, _ = pair
    with pytest.raises(zmq.Again):
        recv_frames(router)
    with pytest.raises(zmq.ZMQError) as raised:
        send_frames(router, (b"nobody", b"body"))  # ROUTER_MANDATORY: unroutable
    assert raised.value.errno == zmq.EHOSTUNREACH

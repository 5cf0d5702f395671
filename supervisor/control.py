"""The control endpoint: a ROUTER that clients (the CLI, ``protocol.client``) talk to.

This module owns the socket and the wire: it decodes requests, answers malformed ones itself
(``bad_request``, counted), and sends replies. What a request *means* is the supervisor's
business (:mod:`supervisor.requests`).
"""

import logging
from collections.abc import Iterator
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from protocol import ProtocolError, decode
from protocol.codec import encode, request_id_in_head, request_id_of
from protocol.curve import CurveKeyError, secure_server
from protocol.messages import CLIENT_REQUESTS, MAX_INPUT_CHARS, Message, Reply
from protocol.sockets import has_message, recv_frames, send_frames
from supervisor.errors import StartupError
from supervisor.runs import Waiter

log = logging.getLogger(__name__)

RECV_BATCH = 256  # requests taken per loop turn, so clients cannot starve the workers
# The memory budget of the control socket (README, "Memory budget"): the largest legal request
# is MAX_REQUEST_BYTES, and ZeroMQ queues at most RCVHWM of them per client (then it stops
# reading that client, whose own sends block), so a client costs at most RCVHWM x 16 MiB here.
# Replies to a client that does not read are queued up to SNDHWM; beyond, they are dropped
# and counted (``replies_dropped``), never waited for. ZeroMQ learns how far a client has read
# only every half HWM or so, so a pipe refuses messages well below SNDHWM: the bound a client
# can rely on is the supervisor's own, MAX_UNANSWERED requests per client without their final
# reply (a waiting submit's result, else its one reply); a request beyond it is refused `busy`
# at once. SNDHWM leaves room for that many requests' replies (two for a waiting submit) plus
# ZeroMQ's lag, so a client within the limit never loses a reply.
MAX_REQUEST_BYTES = 16 << 20
# A body past this cannot be a legal request (the largest is a submit whose input is a worker's
# MAX_INPUT_CHARS): it is refused without being parsed, so a flood of oversized requests costs
# the loop a length check each, and ``status`` stays quick meanwhile.
MAX_LEGAL_BODY = MAX_INPUT_CHARS + (64 << 10)
RCVHWM = 4
MAX_UNANSWERED = 64
SNDHWM = 1024


class ControlServer:
    """Bind the control endpoint (with CURVE when configured); receive requests; reply."""

    def __init__(
        self, ctx: "zmq.Context[Any]", endpoint: str, curve: tuple[str, str] | None
    ) -> None:
        """``curve``: the secret certificate and the authorized client keys (file or folder)."""
        self.bad_requests = 0
        self.replies_dropped = 0
        self.over_limit = 0  # requests refused: their client had MAX_UNANSWERED unanswered
        self._unanswered: dict[bytes, int] = {}  # client identity -> requests without a final reply
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self._auth: ThreadAuthenticator | None = None
        if curve is not None:
            try:
                self._auth = secure_server(ctx, self.socket, *curve)
            except CurveKeyError as exc:
                self.socket.close(linger=0)
                raise StartupError(f"control endpoint CURVE keys: {exc}") from exc
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.RCVHWM, RCVHWM)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone client: an error, counted
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise StartupError(
                f"cannot bind the control endpoint {endpoint}: {exc} "
                "(is another supervisor running? choose another with --control)"
            ) from exc

    def requests(self) -> Iterator[tuple[Waiter, Message]]:
        """The well-formed requests waiting now; malformed ones are answered and skipped.

        Called when the poller said the socket is readable: the first receive is tried
        without asking first (a ``zmq.Again`` ends it all the same)."""
        for taken in range(RECV_BATCH):
            if taken and not has_message(self.socket):
                return
            try:
                frames = recv_frames(self.socket)
            except zmq.Again:
                return
            envelope = len(frames) == 3 and frames[1] == b""  # a REQ socket's delimiter
            if not frames:
                self.bad_requests += 1
                continue
            unanswered = self._unanswered.get(frames[0], 0)
            self._unanswered[frames[0]] = unanswered + 1  # until its final reply is sent
            if len(frames) != 2 and not envelope:
                self.bad_requests += 1
                self.reply_error(
                    Waiter(frames[0], "", False),
                    "bad_request",
                    f"expected 1 body frame, got {len(frames) - 1}",
                )
                continue
            identity, body = frames[0], frames[-1]
            if len(body) > MAX_LEGAL_BODY:
                self.bad_requests += 1
                self.reply_error(Waiter(identity, request_id_in_head(body), False, envelope),
                                 "bad_request", f"request of {len(body)} bytes; inputs are at most "
                                 f"{MAX_INPUT_CHARS} characters of JSON")  # fmt: skip
                continue
            try:
                message = decode(body, CLIENT_REQUESTS)
            except ProtocolError as exc:
                self.bad_requests += 1
                self.reply_error(Waiter(identity, request_id_of(body), False, envelope),
                                 "bad_request", str(exc))  # fmt: skip
                continue
            request_id: str = getattr(message, "id", "")
            if unanswered >= MAX_UNANSWERED:
                self.over_limit += 1
                self.reply_error(Waiter(identity, request_id, False, envelope), "busy",
                                 f"{unanswered} requests of this client are unanswered; at most "
                                 f"{MAX_UNANSWERED}: read their replies first")  # fmt: skip
                continue
            yield Waiter(identity, request_id, False, envelope), message

    def reply(self, waiter: Waiter, kind: str, data: Any) -> None:
        self._send(waiter, Reply(id=waiter.request_id, ok=True, kind=kind, data=data))

    def reply_error(self, waiter: Waiter, code: str, message: str) -> None:
        self._send(
            waiter, Reply(id=waiter.request_id, ok=False, kind="error", error=code, message=message)
        )

    def _send(self, waiter: Waiter, reply: Reply) -> None:
        if not (waiter.wants_result and reply.ok and reply.kind == "accepted"):  # final
            left = self._unanswered.pop(waiter.identity, 1) - 1
            if left > 0:
                self._unanswered[waiter.identity] = left
        body = encode(reply)
        frames = (waiter.identity, b"", body) if waiter.envelope else (waiter.identity, body)
        try:
            send_frames(self.socket, frames)
        except zmq.ZMQError as exc:  # the client is gone or not reading: its loss only
            self.replies_dropped += 1
            log.debug("reply to a client dropped: %s", exc)

    def close(self) -> None:
        self.socket.close(linger=1000)
        if self._auth is not None:
            self._auth.stop()

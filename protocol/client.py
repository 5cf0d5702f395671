"""The Python client of a running supervisor; the CLI is built on it.

One ``Client`` holds one DEALER socket and is meant for one thread at a time; many clients may
talk to the same supervisor concurrently. Every call has a deadline and raises
:class:`ClientTimeout` when it passes; an error reply raises :class:`ClientError` with the
supervisor's stable error code (``busy``, ``unknown_actor``, ``bad_request``, ...).
"""

import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import zmq

from protocol.codec import decode, encode
from protocol.curve import ClientKeys
from protocol.errors import ProtocolError
from protocol.messages import (
    Cancel,
    MetricsRequest,
    Pause,
    Refresh,
    ReloadRequest,
    Reply,
    Rerun,
    Resume,
    StatusRequest,
    Submit,
    Trigger,
    WorkflowRequest,
)
from protocol.outcomes import RunOutcome as RunOutcome  # re-exported: clients import it here


class ClientError(Exception):
    """The supervisor answered with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ClientTimeout(ClientError):
    """No (complete) answer within the deadline. ``run_id`` is set when the run was accepted."""

    def __init__(self, message: str, run_id: str | None = None) -> None:
        super().__init__("timeout", message)
        self.run_id = run_id


@dataclass(frozen=True, slots=True)
class Accepted:
    """A submission the supervisor recorded durably; it will end in a recorded outcome."""

    run_id: str
    actor: str
    deduplicated: bool = False  # an earlier run with the same idempotency key was returned


class Client:
    """Talks to the control endpoint of one supervisor."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = 10.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: ClientKeys | None = None,
    ) -> None:
        """``curve``: the keys for a supervisor whose control endpoint uses CURVE.

        ``supervisor.controlkeys.client_for`` builds one from a configuration file instead.
        """
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- calls -------------------------------------------------------------------------------

    def submit(
        self,
        actor: str,
        input: Any = None,
        *,
        wait: bool = False,
        timeout_s: float | None = None,
        idempotency_key: str | None = None,
    ) -> Accepted | RunOutcome:
        """Queue a run. Without ``wait``: the :class:`Accepted` receipt. With ``wait``: the
        :class:`RunOutcome` once the run has its final outcome (after any retries)."""
        rid = _new_id()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._send(
            Submit(id=rid, actor=actor, input=input, wait=wait, idempotency_key=idempotency_key)
        )
        return self._accepted(rid, deadline, wait)

    def trigger(self, actor: str, input: Any = None, *, force: bool = False) -> Accepted:
        """Run an actor now, outside its schedule (a paused one only with ``force``)."""
        rid = _new_id()
        self._send(Trigger(id=rid, actor=actor, input=input, force=force))
        data = self._receive(rid, time.monotonic() + self.timeout_s, "accepted").data
        return Accepted(run_id=data["run_id"], actor=data["actor"])

    def pause(self, actor: str, reason: str | None = None) -> dict[str, Any]:
        rid = _new_id()
        self._send(Pause(id=rid, actor=actor, reason=reason))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "ok").data
        return data

    def resume(self, actor: str) -> dict[str, Any]:
        rid = _new_id()
        self._send(Resume(id=rid, actor=actor))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "ok").data
        return data

    def status(self) -> dict[str, Any]:
        """Workers (scoreboard slots), actors (next due, paused), queue and store health."""
        rid = _new_id()
        self._send(StatusRequest(id=rid))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "status").data
        return data

    def metrics(self) -> dict[str, Any]:
        """Counters and histograms since the supervisor started (what ``/metrics`` shows)."""
        rid = _new_id()
        self._send(MetricsRequest(id=rid))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "metrics").data
        return data

    def refresh(self, actor: str) -> dict[str, Any]:
        """Have the supervisor re-read ``actor``'s code from the store; the answer comes once it
        uses the active version (``history_id``, ``code_sha256``, ``status``)."""
        rid = _new_id()
        self._send(Refresh(id=rid, actor=actor))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "ok").data
        return data

    def rerun(
        self, run_id: str, *, wait: bool = False, timeout_s: float | None = None
    ) -> Accepted | RunOutcome:
        """Queue a new run of ``run_id``'s actor with its input (``run_id`` whole), answered as
        :meth:`submit` answers: the receipt, or with ``wait`` the final outcome."""
        rid = _new_id()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._send(Rerun(id=rid, run_id=run_id, wait=wait))
        return self._accepted(rid, deadline, wait)

    def _accepted(self, rid: str, deadline: float, wait: bool) -> Accepted | RunOutcome:
        """The answer to a queued run (``submit``, ``rerun``): its receipt, then with ``wait``
        its final outcome; a timeout after the receipt names the run."""
        reply = self._receive(rid, deadline, "accepted")
        accepted = Accepted(
            run_id=reply.data["run_id"],
            actor=reply.data["actor"],
            deduplicated=bool(reply.data.get("deduplicated")),
        )
        if not wait:
            return accepted
        try:
            result = self._receive(rid, deadline, "result")
        except ClientTimeout as exc:
            raise ClientTimeout(
                f"run {accepted.run_id} accepted but not finished within the deadline",
                run_id=accepted.run_id,
            ) from exc
        return RunOutcome.from_dict(result.data)

    def cancel(self, run_id: str, *, timeout_s: float | None = None) -> RunOutcome:
        """Cancel ``run_id`` (whole) and wait for its one recorded outcome: ``cancelled``, or
        what it ended with if it finished before the kill landed.

        :raises ClientError: ``not_cancellable`` when the run is not queued or running.
        :raises ClientTimeout: the run has not ended within the deadline (``run_id`` set).
        """
        rid = _new_id()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._send(Cancel(id=rid, run_id=run_id))
        self._receive(rid, deadline, "cancelling")
        try:
            result = self._receive(rid, deadline, "result")
        except ClientTimeout as exc:
            raise ClientTimeout(
                f"run {run_id} is being cancelled but has not ended within the deadline",
                run_id=run_id,
            ) from exc
        return RunOutcome.from_dict(result.data)

    def reload(self) -> dict[str, Any]:
        """Have the supervisor reload its configuration file (as SIGHUP does); the answer says
        what changed. A rejected file raises ``ClientError`` with code ``config_rejected``."""
        rid = _new_id()
        self._send(ReloadRequest(id=rid))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "ok").data
        return data

    def run_workflow(
        self, name: str, items: list[Any], *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        """Start a run of workflow ``name`` over ``items`` (each item's ``id`` field, or a
        generated id, names it); answered once the run and its items are committed:
        ``workflow_run_id``, ``items``, ``waves``, ``steps``."""
        rid = _new_id()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._send(WorkflowRequest(id=rid, action="run", name=name, items=items))
        data: dict[str, Any] = self._receive(rid, deadline, "accepted").data
        return data

    def workflow(self, action: str, workflow_run_id: str) -> dict[str, Any]:
        """``resume`` (with its paused step actors) or ``cancel`` (its step runs in flight too)
        a workflow run, by its whole id (the CLI and HTTP API resolve prefixes with the store):
        its progress, ``changed``, and for a cancel ``cancelled_steps``."""
        rid = _new_id()
        self._send(WorkflowRequest(id=rid, action=action, workflow_run_id=workflow_run_id))
        data: dict[str, Any] = self._receive(rid, time.monotonic() + self.timeout_s, "ok").data
        return data

    def workflows(self) -> dict[str, Any]:
        """The configured workflows and the progress of the unfinished workflow runs."""
        rid = _new_id()
        self._send(WorkflowRequest(id=rid, action="list"))
        deadline = time.monotonic() + self.timeout_s
        data: dict[str, Any] = self._receive(rid, deadline, "workflows").data
        return data

    # --- plumbing ----------------------------------------------------------------------------

    def _send(
        self,
        message: Submit
        | Trigger
        | Pause
        | Resume
        | StatusRequest
        | MetricsRequest
        | Refresh
        | Rerun
        | Cancel
        | ReloadRequest
        | WorkflowRequest,
    ) -> None:
        self._sock.send(encode(message))

    def _receive(self, rid: str, deadline: float, kind: str) -> Reply:
        """Wait for the reply of ``kind`` to request ``rid``; replies to other ids are stale."""
        while (left := deadline - time.monotonic()) > 0:
            if not self._sock.poll(max(1, int(left * 1000))):
                break
            body = self._sock.recv()
            try:
                reply = decode(body, ("reply",))
            except ProtocolError as exc:
                raise ClientError("bad_reply", f"unreadable reply from supervisor: {exc}") from exc
            assert isinstance(reply, Reply)
            if reply.id != rid:
                continue
            if not reply.ok:
                raise ClientError(reply.error or "error", reply.message or "request failed")
            if reply.kind == kind:
                return reply
        raise ClientTimeout(f"no {kind} reply from {self.endpoint} within the deadline")


def _new_id() -> str:
    return os.urandom(12).hex()

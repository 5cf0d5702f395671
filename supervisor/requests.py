"""What each control request means: submit, trigger, pause, resume, status, metrics, refresh,
rerun, cancel and reload.

Every request gets exactly one answer (two for ``submit`` and ``rerun`` with ``wait``:
``accepted``, then ``result``; two for ``cancel``: ``cancelling``, then ``result``), and every
refusal carries a stable error code: ``unknown_actor``, ``busy``, ``paused``, ``shutting_down``,
``result_unavailable``, ``refresh_failed``, ``config_rejected``, ``unknown_run``,
``not_cancellable``, ``store_unavailable``, and ``bad_request`` for an input no worker would take
(refused here, never accepted and then lost).
"""

import logging
from typing import Any

import orjson

from protocol.messages import (
    MAX_INPUT_CHARS,
    Cancel,
    Message,
    MetricsRequest,
    Pause,
    Refresh,
    ReloadRequest,
    Rerun,
    Resume,
    StatusRequest,
    Submit,
    Trigger,
    WorkflowRequest,
)
from supervisor import events
from supervisor.actors import ActorRuntime
from supervisor.code.sync import ActorCode
from supervisor.idempotency import digest
from supervisor.records import RunRecord
from supervisor.records import Trigger as RunTrigger
from supervisor.reload import ReloadRejected
from supervisor.runs import ActiveRun, Waiter
from supervisor.status import Supervisor, build_metrics, build_status
from supervisor.workflows.requests import workflow_request

log = logging.getLogger(__name__)


class Requests:
    """Handles decoded control requests on behalf of one supervisor."""

    def __init__(self, sup: "Supervisor") -> None:
        self.sup = sup
        # per actor: refresh loads outstanding, and the waiters of the newest one
        self._refreshing: dict[str, tuple[int, list[Waiter]]] = {}

    def handle_all(self) -> None:
        """Answer every request waiting on the control socket."""
        for waiter, message in self.sup.control.requests():
            try:
                self.handle(waiter, message)
            except Exception:  # a bug must cost one request, never the supervisor
                log.exception("internal error handling a %s request", message.type)
                self.sup.control.reply_error(
                    waiter, "internal_error", "the supervisor failed this request"
                )

    def handle(self, waiter: Waiter, message: Message) -> None:
        if isinstance(message, Submit):
            self._submit(Waiter(waiter.identity, waiter.request_id, message.wait,
                                waiter.envelope), message)  # fmt: skip
        elif isinstance(message, Trigger):
            self._trigger(waiter, message)
        elif isinstance(message, StatusRequest):
            self.sup.control.reply(waiter, "status", build_status(self.sup))
        elif isinstance(message, MetricsRequest):
            self.sup.control.reply(waiter, "metrics", build_metrics(self.sup))
        elif isinstance(message, Pause):
            self._pause(waiter, message)
        elif isinstance(message, Resume):
            self._resume(waiter, message)
        elif isinstance(message, Refresh):
            self._refresh(waiter, message)
        elif isinstance(message, WorkflowRequest):
            workflow_request(self.sup, waiter, message)
        elif isinstance(message, Rerun):
            self._rerun(Waiter(waiter.identity, waiter.request_id, message.wait,
                               waiter.envelope), message)  # fmt: skip
        elif isinstance(message, Cancel):
            self._cancel(Waiter(waiter.identity, waiter.request_id, True, waiter.envelope), message)
        elif isinstance(message, ReloadRequest):
            self._reload(waiter)

    def _reload(self, waiter: Waiter) -> None:
        """As SIGHUP, but the caller hears what changed, or why the file was rejected."""
        if not self.sup.book.accepting:
            self.sup.control.reply_error(waiter, "shutting_down", "the supervisor is shutting down")
            return
        try:
            answer = self.sup.reload()
        except ReloadRejected as exc:
            self.sup.control.reply_error(
                waiter, "config_rejected", f"{exc}; the running configuration stays in effect"
            )
            return
        self.sup.control.reply(waiter, "ok", answer)

    def _actor(self, waiter: Waiter, name: str) -> ActorRuntime | None:
        actor = self.sup.actors.get(name)
        if actor is None:
            known = ", ".join(sorted(self.sup.actors)) or "none"
            self.sup.control.reply_error(
                waiter, "unknown_actor", f"no actor named {name!r} (known: {known})"
            )
        return actor

    def _accept(
        self,
        waiter: Waiter,
        actor: ActorRuntime,
        value: Any,
        input_json: str,
        trigger: str,
        idempotency_key: str | None = None,
    ) -> ActiveRun | None:
        """Accept a new run of ``actor``, or answer why the supervisor cannot take one now."""
        if not self.sup.book.accepting:
            self.sup.control.reply_error(waiter, "shutting_down", "the supervisor is shutting down")
            return None
        if not self.sup.book.has_room(len(input_json)):
            self.sup.book.counters["busy_rejections"] += 1
            self.sup.control.reply_error(
                waiter,
                "busy",
                f"the ready queue is full ({self.sup.book.waiting()} runs waiting, "
                f"{self.sup.book.input_bytes} bytes of inputs held, at most "
                f"{self.sup.settings.queue_max_bytes}); retry later",
            )
            return None
        return self.sup.book.accept(
            actor,
            input_value=value,
            input_json=input_json,
            trigger=trigger,
            waiter=waiter,
            idempotency_key=idempotency_key,
        )

    def _submit(self, waiter: Waiter, message: Submit) -> None:
        actor = self._actor(waiter, message.actor)
        if actor is None:
            return
        value = actor.config.input if message.input is None else message.input
        input_json = self._input_json(waiter, value)
        if input_json is None:
            return
        key = message.idempotency_key
        earlier = self.sup.book.idempotency.find(actor.name, key) if key is not None else None
        if earlier is not None:
            run_id, known = earlier
            if known is not None and known != digest(input_json):
                self.sup.control.reply_error(
                    waiter,
                    "idempotency_conflict",
                    f"idempotency key {key!r} was used for run {run_id} with another input",
                )
                return
            self._duplicate(waiter, actor, run_id)
            return
        self._accept(waiter, actor, value, input_json, RunTrigger.SUBMIT, idempotency_key=key)

    def _input_json(self, waiter: Waiter, value: Any) -> str | None:
        """The input as the JSON text a worker gets; None (answered) when a worker would refuse
        it: too large for its RUN message, or nested deeper than JSON encoding allows (orjson
        writes at most 255 levels, though it reads up to 1024)."""
        try:
            text = orjson.dumps(value).decode()
        except orjson.JSONEncodeError as exc:
            self.sup.control.bad_requests += 1
            self.sup.control.reply_error(waiter, "bad_request", f"input cannot be encoded: {exc}")
            return None
        if len(text) > MAX_INPUT_CHARS:
            self.sup.control.bad_requests += 1
            self.sup.control.reply_error(
                waiter,
                "bad_request",
                f"input is {len(text)} characters as JSON; a worker accepts at most "
                f"{MAX_INPUT_CHARS}",
            )
            return None
        return text

    def _duplicate(self, waiter: Waiter, actor: ActorRuntime, run_id: str) -> None:
        """Same idempotency key as an earlier run: that run stands for this one -- answered
        once everything put so far is committed, since the earlier run may have been accepted,
        or have finished, in this very turn: "accepted" and its outcome are never ahead of
        its rows."""
        self.sup.book.after_commit(
            self.sup.book.sink.last_seq, lambda: self._stand_in(waiter, actor, run_id)
        )

    def _stand_in(self, waiter: Waiter, actor: ActorRuntime, run_id: str) -> None:
        control = self.sup.control
        control.reply(
            waiter, "accepted", {"run_id": run_id, "actor": actor.name, "deduplicated": True}
        )
        if not waiter.wants_result:
            return
        active = self.sup.book.runs.get(run_id)
        if active is not None:
            active.waiters.append(waiter)
        elif (outcome := self.sup.book.outcomes.get(run_id)) is not None:
            control.reply(waiter, "result", outcome.as_dict())
        else:
            control.reply_error(
                waiter,
                "result_unavailable",
                f"run {run_id} finished earlier; see `actor-supervisor history` for its outcome",
            )

    def _trigger(self, waiter: Waiter, message: Trigger) -> None:
        actor = self._actor(waiter, message.actor)
        if actor is None:
            return
        if actor.state.is_paused and not message.force:
            self.sup.control.reply_error(
                waiter,
                "paused",
                f"actor {actor.name!r} is paused ({actor.state.paused_reason}); "
                "use --force to run it anyway",
            )
            return
        value = actor.config.input if message.input is None else message.input
        input_json = self._input_json(waiter, value)
        if input_json is not None:
            self._accept(waiter, actor, value, input_json, RunTrigger.TRIGGER)

    def _pause(self, waiter: Waiter, message: Pause) -> None:
        actor = self._actor(waiter, message.actor)
        if actor is not None:
            self.sup.book.breaker.pause(
                actor, message.reason or "paused by an operator", by="operator"
            )
            self.sup.control.reply(
                waiter,
                "ok",
                {"actor": actor.name, "paused": True, "reason": actor.state.paused_reason},
            )

    def _resume(self, waiter: Waiter, message: Resume) -> None:
        actor = self._actor(waiter, message.actor)
        if actor is not None:
            self.sup.book.breaker.resume(actor, by="operator")
            self.sup.control.reply(waiter, "ok", {"actor": actor.name, "paused": False})

    def _refresh(self, waiter: Waiter, message: Refresh) -> None:
        """Answered once the reader has loaded the actor's code and the loop swapped it in.

        Coalesced per actor: with a load running and one more queued, a further request joins
        the queued one (which starts after it arrived, so it sees what the request asked to
        see). 20,000 refreshes of one actor cost two loads, not 20,000 parked runs.
        """
        actor = self._actor(waiter, message.actor)
        if actor is None:
            return
        name, control = actor.name, self.sup.control
        outstanding, newest = self._refreshing.get(name, (0, []))
        if outstanding >= 2:
            newest.append(waiter)
            self.sup.book.counters["refreshes_coalesced"] += 1
            return
        waiters = [waiter]
        self._refreshing[name] = (outstanding + 1, waiters)

        def loaded(code: ActorCode | None, error: Exception | None) -> None:
            left, latest = self._refreshing.pop(name, (1, waiters))
            if left > 1:
                self._refreshing[name] = (left - 1, latest)
            for each in waiters:
                if error is not None:
                    control.reply_error(each, "refresh_failed", f"{name}: {error}")
                elif code is None:
                    control.reply_error(
                        each, "refresh_failed", f"{name} was reconfigured meanwhile; retry"
                    )
                else:
                    data = {"actor": name, "history_id": code.history_id,
                            "code_sha256": code.code_sha256, "status": code.status}  # fmt: skip
                    control.reply(each, "ok", data)

        self.sup.codebook.reload(actor, loaded)

    def _rerun(self, waiter: Waiter, message: Rerun) -> None:
        """A run still in flight is known here; a finished one is read from the store by the
        reader thread (the loop never waits for the database), then accepted like a submit."""
        active = self.sup.book.runs.get(message.run_id)
        if active is not None:
            self._accept_rerun(waiter, active.record)
            return
        run_id = message.run_id

        def found(attempts: list[RunRecord] | None, error: Exception | None) -> None:
            if error is not None:
                self.sup.control.reply_error(
                    waiter, "store_unavailable", f"cannot read run {run_id}: {error}"
                )
            elif not attempts:
                self.sup.control.reply_error(waiter, "unknown_run", f"no run {run_id} recorded")
            else:
                self._accept_rerun(waiter, attempts[0])

        self.sup.reader.submit(lambda: self.sup.store.list_runs(run_id=run_id, limit=1), found)

    def _accept_rerun(self, waiter: Waiter, previous: RunRecord) -> None:
        actor = self._actor(waiter, previous.actor)
        if actor is None:
            return
        active = self._accept(waiter, actor, None, previous.input_json, RunTrigger.RERUN)
        if active is not None:
            for event in events.rerun_links(active.record, previous):
                self.sup.writer.put(event)

    def _cancel(self, waiter: Waiter, message: Cancel) -> None:
        """``cancelling`` now, the run's outcome once it is committed (see RunBook.cancel).
        ``cancelling`` goes first: the writer thread may commit the outcome, and the run book
        deliver it, before RunBook.cancel even returns."""
        active = self.sup.book.runs.get(message.run_id)
        if active is None:
            self.sup.control.reply_error(
                waiter,
                "not_cancellable",
                f"run {message.run_id} is not queued or running here: it has finished "
                "(or is not a run of this supervisor)",
            )
            return
        worker_id, attempt = active.sent_to, active.record.attempt
        self.sup.control.reply(
            waiter, "cancelling", {"run_id": active.run_id, "attempt": attempt,
                                   "was": "running" if worker_id else "queued"},
        )  # fmt: skip
        self.sup.book.cancel(active.run_id, waiter)
        if worker_id is not None:
            self.sup.kill_on_worker(worker_id, active.run_id, attempt)

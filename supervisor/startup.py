"""Start-up steps of the supervisor process that need no socket: the state folder, the store
and its lease, the spool, and alerts. Each opened resource registers its release on the
caller's :class:`contextlib.ExitStack`, so a failure half-way releases what was opened."""

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import zmq

from protocol.outcomes import FINAL_STATUSES
from supervisor.actors import ActorRuntime
from supervisor.alerts.book import AlertBook
from supervisor.alerts.sender import AlertSender, Confinement
from supervisor.config import Config
from supervisor.controlkeys import control_endpoint, server_keys
from supervisor.deadletter import DeadLetters, dead_letter_path
from supervisor.errors import ConfigError, StartupError
from supervisor.events import supervisor_event
from supervisor.lease import Lease, open_lease
from supervisor.lease import acquire as acquire_lease
from supervisor.leftovers import clean_leftovers
from supervisor.preflight import alert_uid
from supervisor.records import RunRecord, TaskState
from supervisor.spool import Spool, spool_folder
from supervisor.statedir import secure_state
from supervisor.store import open_store, pool_options
from supervisor.store.base import Store
from supervisor.store.urls import has_password, redact_url
from supervisor.uidclaim import claim_uids
from supervisor.writer import BatchWriter
from workers.sandbox import SandboxConfig

log = logging.getLogger(__name__)


class StartupInterrupted(BaseException):
    """A stop signal arrived before the supervisor's loop could handle it. A BaseException,
    as KeyboardInterrupt is: no ``except Exception`` on the way (a log handler's, a retry
    loop's) may swallow it."""


@contextlib.contextmanager
def stop_signals_unwind() -> Iterator[None]:
    """Until the loop installs its own handlers, SIGTERM would kill the process outright: a
    start-up waiting for its database or its lease would leave the runtime folder, the code
    cache, the uid claim and the lease behind. Here SIGTERM raises instead, so every
    :class:`~contextlib.ExitStack` on the way unwinds (SIGINT already does, as
    KeyboardInterrupt), and SIGHUP waits: there is nothing to reload yet."""

    def interrupt(signum: int, frame: object) -> None:
        raise StartupInterrupted(f"stopped by {signal.Signals(signum).name} during start-up")

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt),
        signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass(frozen=True, slots=True)
class Durable:
    """The store as this supervisor found it, with the lease that makes it ours."""

    store: Store
    lease: Lease
    epoch: int
    dead_letters: DeadLetters
    spool: Spool
    stored_states: dict[str, TaskState]
    unfinished: list[RunRecord]
    last_runs: dict[str, RunRecord]  # each actor's latest attempt, for status


def secure_control(config: Config, overrides: Mapping[str, Any]) -> tuple[str, Any]:
    """Make the state folder private; the control endpoint and its CURVE keys."""
    url = overrides.get("database")
    if url and has_password(url):  # any local user can read a command line in /proc
        log.warning(
            "--database %s carries a password, which every local user can read in this "
            "process's command line; pass it through ACTOR_SUPERVISOR_DATABASE, a password "
            "file or PGPASSFILE instead",
            redact_url(url),
        )
    try:
        secure_state(config)
        return control_endpoint(config), server_keys(config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc
    except OSError as exc:
        raise StartupError(f"cannot make the state folder private: {exc}") from exc


def open_durable(
    config: Config,
    stack: contextlib.ExitStack,
    last: contextlib.ExitStack,
    *,
    instance_id: str,
    standby: bool,
    run_uids: tuple[int, ...],
) -> Durable:
    """Open and migrate the store, take its lease (released on ``last``) and then the run
    uids, replay the spool and read what the previous supervisor left: in that order, before
    any state is read."""
    s = config.supervisor
    store = open_store(
        s.database, base_dir=config.base_dir, sqlite_synchronous=s.sqlite_synchronous,
        pool=pool_options(s),  # waits up to database_wait_s for a PostgreSQL server
    )  # fmt: skip
    stack.callback(store.close)
    if s.migrate and (applied := store.migrate()):
        log.info("applied migrations: %s", ", ".join(applied))
    lease = open_lease(store, s.database, instance=instance_id, ttl_s=s.lease_ttl_s)
    last.callback(lease.release)  # last: a standby must not start before our writes are done
    epoch = acquire_lease(lease, standby=standby)  # before reading state
    # Once active (a standby waits for the lease first): our runs' uids, and no one else's.
    if (claim := claim_uids(run_uids)) is not None:
        last.callback(claim.release)  # before the lease: a standby may then hand them out
    clean_leftovers()
    folder = spool_folder(s.spool_dir, config.base_dir)
    dead_letters = DeadLetters(dead_letter_path(folder))
    spool = Spool(folder, dead_letters=dead_letters)
    spool.drain(store, give_up_s=s.database_wait_s)  # before reading any state
    return Durable(
        store=store, lease=lease, epoch=epoch, dead_letters=dead_letters, spool=spool,
        stored_states=store.load_task_states(),
        unfinished=list(store.unfinished_runs(before_epoch=epoch)),
        last_runs=store.last_runs(),  # one index probe per actor
    )  # fmt: skip


def seed_last_runs(actors: Mapping[str, ActorRuntime], last: Mapping[str, RunRecord]) -> None:
    """``status`` shows each actor's last run from the first moment, not only once one ends
    after this start: the stored one, when it is final (an unfinished one is being recovered)."""
    for name, record in last.items():
        if (actor := actors.get(name)) is not None and record.status in FINAL_STATUSES:
            actor.last_run = record


def prepare_alerts(
    config: Config,
    store: Store,
    writer: BatchWriter,
    *,
    sandbox: SandboxConfig,
    actors: Callable[[str], ActorRuntime | None],
    instance_id: str,
    clock: Callable[[], float],
) -> AlertSender | None:
    """Hook alerts into the writer: events in, outbox rows out in the same transaction,
    and each row, once durable, to the sender (which also takes over rows left pending)."""
    if not config.alerts:
        return None
    s = config.supervisor
    book = AlertBook(
        config.alerts, repeat_s=s.alert_repeat_s, public_url=s.public_url,
        instance_id=instance_id, actors=actors, clock=clock,
    )  # fmt: skip
    env = {name: os.environ[name] for name in s.env_allow if name in os.environ}
    confinement = Confinement(uid=alert_uid(sandbox), run_as=sandbox.run_as, limits=s.limits)
    sender = AlertSender(config.alerts, store, confinement=confinement, env=env, clock=clock)
    sender.adopt(store.pending_alerts())
    writer.observe = book.observe
    writer.on_commit = sender.offer
    return sender


def bind_worker_router(ctx: "zmq.Context[Any]", endpoint: str) -> "zmq.Socket[bytes]":
    """The socket workers connect to: a dead worker is an error, not silence; no high-water
    marks, since the run book bounds what is in flight."""
    sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.bind(endpoint)
    return sock


ALERT_CLOSE_S = 5.0  # at exit, how long the alert sender may go on delivering what is due
WRITER_CLOSE_S = 60.0


def close_writer(
    writer: BatchWriter,
    sender: AlertSender | None,
    actors: Iterable[ActorRuntime],
    instance_id: str,
    counters: Mapping[str, int],
) -> None:
    """At exit: persist each actor's state, record the stop, flush, then stop the alerts."""
    for actor in actors:
        writer.put(actor.state)
    writer.put(supervisor_event("supervisor_stopped", instance_id, counters=dict(counters)))
    if not writer.close(timeout=WRITER_CLOSE_S):
        log.error("the store writer could not flush everything before exit")
    if sender is not None:
        sender.close(timeout=ALERT_CLOSE_S)  # what it cannot send stays pending

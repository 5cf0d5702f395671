"""The batch writer's statistics, as ``status``, ``/metrics`` and the benchmarks read them."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class WriterStats:
    """A snapshot of the writer for ``status`` and benchmarks.

    ``queue_depth`` counts records put but not yet committed (waiting or in the batch being
    written). ``full_batches``/``aged_batches``/``idle_batches`` say what each batch was: full
    (``batch_size``), taken with its oldest record ``max_age_s`` old (the writer falls behind),
    or everything that waited; which tells whether ``batch_size`` and ``max_age_s`` fit the
    load. ``spool_depth`` counts records durable in the spool but not yet in the store,
    ``spooled``/``replayed`` the records that went in and out of it; ``degraded`` is true while
    the last store write failed or the spool is not empty. ``rejected`` counts records that
    could be neither stored nor spooled (not serializable: a bug, logged with the record).
    """

    queue_depth: int
    committed: int
    batches: int
    records: int
    failures: int
    last_error: str | None
    last_flush_ms: float | None
    degraded: bool
    full_batches: int
    aged_batches: int
    idle_batches: int
    spool_depth: int = 0
    spool_batches: int = 0
    spool_bytes: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    dead_letters: int = 0  # records the store refused for good, set aside (deadletter.py)
    outages: int = 0  # times the store went from healthy to failing: a blip between two looks

"""StoreHealth turns the writer's flips into store_degraded / store_recovered events, including
an outage that began and ended between two of the loop's looks."""

from dataclasses import replace
from typing import Any, cast

from supervisor.status import StoreHealth
from supervisor.writer import BatchWriter
from supervisor.writerstats import WriterStats

HEALTHY = WriterStats(
    queue_depth=0, committed=0, batches=0, records=0, failures=0, last_error=None,
    last_flush_ms=None, degraded=False, full_batches=0, aged_batches=0, idle_batches=0,
)  # fmt: skip


class FakeWriter:
    def __init__(self) -> None:
        self.now = HEALTHY
        self.put_events: list[str] = []

    def stats(self) -> WriterStats:
        return self.now

    def put(self, event: Any) -> None:
        self.put_events.append(event.event_type)


def health() -> tuple[StoreHealth, FakeWriter]:
    writer = FakeWriter()
    return StoreHealth(cast(BatchWriter, writer), "sqlite:x.db", "sup-1"), writer


def test_a_seen_outage_gives_degraded_then_recovered() -> None:
    checker, writer = health()
    checker.check()
    writer.now = replace(HEALTHY, degraded=True, outages=1, last_error="down")
    checker.check()
    checker.check()
    writer.now = replace(HEALTHY, outages=1)
    checker.check()
    assert writer.put_events == ["store_degraded", "store_recovered"]


def test_an_outage_between_two_looks_still_gives_both_events() -> None:
    checker, writer = health()
    checker.check()
    writer.now = replace(HEALTHY, outages=1)  # failed and recovered before the next look
    checker.check()
    checker.check()
    assert writer.put_events == ["store_degraded", "store_recovered"]


def test_no_outage_no_event() -> None:
    checker, writer = health()
    for _ in range(3):
        checker.check()
    assert writer.put_events == []

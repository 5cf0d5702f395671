"""The schedule heap: what is due next, across every actor's schedule, retries and probes.

One heap holds three kinds of entry, keyed ``(kind, name)``: an actor's next scheduled fire,
a run waiting for its next attempt, and a paused actor's next half-open probe. The loop polls
with a timeout equal to the time until the top entry, so waiting costs nothing.
"""

import heapq
import itertools
import math
from collections.abc import Hashable
from enum import StrEnum
from typing import Generic, TypeVar


class EntryKind(StrEnum):
    """What a heap entry's name refers to, and what its popping does."""

    FIRE = "fire"  # name: an actor whose schedule is due
    RETRY = "retry"  # name: a run whose next attempt is due
    PROBE = "probe"  # name: a paused actor whose half-open probe is due


Key = tuple[EntryKind, str]


K = TypeVar("K", bound=Hashable)


class ScheduleHeap(Generic[K]):
    """Due times by key: a heap of ``(due, sequence, key)`` with lazy deletion.

    Pushing a key again replaces its entry: the live entry is the very tuple ``self._live[key]``
    holds (one object for both, a third less memory per entry); older ones are skipped when
    they surface. Stale entries are dropped by
    a rebuild once they outnumber the live ones, so memory stays O(live) and every operation
    is O(log n) amortized. Ties on ``due`` pop in push order; keys are never compared.
    """

    __slots__ = ("_heap", "_live", "_seq")

    _COMPACT_MIN = 64  # below this size a rebuild is not worth it

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, tuple[float, int, K]] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def push(self, key: K, due: float) -> None:
        """Schedule ``key`` at ``due``, replacing any entry it had."""
        entry = (due, next(self._seq), key)
        self._live[key] = entry
        heapq.heappush(self._heap, entry)
        self._maybe_compact()

    def remove(self, key: K) -> bool:
        """Forget ``key``; returns whether it was scheduled."""
        found = self._live.pop(key, None) is not None
        self._maybe_compact()
        return found

    def due_of(self, key: K) -> float | None:
        """When ``key`` is due, or ``None`` if it is not scheduled."""
        entry = self._live.get(key)
        return entry[0] if entry else None

    def pop_due(self, now: float, limit: int | None = None) -> list[tuple[K, float]]:
        """Remove and return the live entries due at or before ``now``, in due order; at most
        ``limit`` of them (the rest stay, still due)."""
        popped: list[tuple[K, float]] = []
        heap, live = self._heap, self._live
        while heap and heap[0][0] <= now and (limit is None or len(popped) < limit):
            entry = heapq.heappop(heap)
            key = entry[2]
            if live.get(key) is entry:
                del live[key]
                popped.append((key, entry[0]))
        return popped

    def next_due(self) -> float | None:
        """The earliest live due time, or ``None`` when nothing is scheduled."""
        heap, live = self._heap, self._live
        while heap:
            entry = heap[0]
            if live.get(entry[2]) is entry:
                return entry[0]
            heapq.heappop(heap)
        return None

    def timeout_ms(self, now: float, cap_ms: int) -> int:
        """Milliseconds until the earliest entry, for a poll: 0 when due, at most ``cap_ms``.

        Rounded up, so a poll that returns on time finds the entry due instead of spinning.
        """
        due = self.next_due()
        if due is None:
            return cap_ms
        # round() first: (10.0 - 9.7) * 1000 is 300.00000000000006, which must not become 301.
        return max(0, min(cap_ms, math.ceil(round((due - now) * 1000.0, 6))))

    def _maybe_compact(self) -> None:
        heap_size = len(self._heap)
        if heap_size > self._COMPACT_MIN and heap_size > 2 * len(self._live):
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)

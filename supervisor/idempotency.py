"""Idempotency keys: ``(actor, key) -> run`` for a window, expired incrementally.

A repeated key returns the earlier run; the same key with a *different* input is a client bug
(two requests that mean different things), answered ``idempotency_conflict``. Expiry walks a
heap ordered by expiry time, so each tick costs O(log n) per key that expires and nothing for
the others (a dict rebuilt every tick cost 367 ms at a million keys).

Keys loaded from the store at start-up carry no input digest (reading every keyed input of the
window would cost more than it is worth): for them a conflict is not detected.
"""

import hashlib
import heapq

WINDOW_S = 24 * 3600.0


def digest(input_json: str) -> bytes:
    return hashlib.blake2b(input_json.encode(), digest_size=16).digest()


class IdempotencyKeys:
    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._runs: dict[tuple[str, str], tuple[str, float, bytes | None]] = {}
        self._expiry: list[tuple[float, str, str]] = []  # (seen at, actor, key): a heap

    def __len__(self) -> int:
        return len(self._runs)

    def add(
        self, actor: str, key: str, run_id: str, seen_at: float, input_digest: bytes | None
    ) -> None:
        self._runs[(actor, key)] = (run_id, seen_at, input_digest)
        heapq.heappush(self._expiry, (seen_at, actor, key))

    def find(self, actor: str, key: str) -> tuple[str, bytes | None] | None:
        """The earlier run and its input digest (None when unknown), if the key is known."""
        found = self._runs.get((actor, key))
        return None if found is None else (found[0], found[2])

    def expire(self, now: float) -> int:
        """Forget keys older than the window; return how many."""
        cutoff = now - self.window_s
        heap, forgotten = self._expiry, 0
        while heap and heap[0][0] < cutoff:
            seen_at, actor, key = heapq.heappop(heap)
            current = self._runs.get((actor, key))
            if current is not None and current[1] == seen_at:  # not re-added since
                del self._runs[(actor, key)]
                forgotten += 1
        return forgotten

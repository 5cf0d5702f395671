"""Options of the PostgreSQL connection pool, importable without importing psycopg.

The CLI's client commands (``submit``, ``status``) import the store package but never open a
PostgreSQL store; they should not pay for loading psycopg.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolOptions:
    """How the PostgreSQL store connects; the defaults suit a supervisor's single writer.

    ``wait_s`` is how long opening keeps retrying an unreachable server (0: one attempt, as the
    CLI wants; the supervisor passes its ``database_wait_s``).
    """

    min_size: int = 1
    max_size: int = 4
    connect_timeout_s: float = 5.0
    acquire_timeout_s: float = 5.0
    check: bool = True
    wait_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_size <= self.max_size or self.max_size < 1:
            raise ValueError(
                f"need 0 <= min_size <= max_size and max_size >= 1, "
                f"got {self.min_size} and {self.max_size}"
            )
        if self.connect_timeout_s <= 0 or self.acquire_timeout_s <= 0 or self.wait_s < 0:
            raise ValueError("timeouts must be > 0 and wait_s >= 0")

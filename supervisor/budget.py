"""What the pool will cost in memory, checked against the host at start-up.

``workers`` and ``concurrency`` pass validation up to 1024 each, which no host can carry at
once. The estimate is rough (figures assumed, not measured here): a worker and its launcher, and a
typical small Python script per run in flight (a script's own ``limits.memory_mb`` is an
address-space cap, far above what most use, so it is not the estimate). Too much for the
memory available gives one WARNING with the figures, not a refusal: scripts may be smaller.
"""

import logging

import psutil

from supervisor.settings import SupervisorSettings

log = logging.getLogger(__name__)

WORKER_RSS_MB = 45  # a worker process and its launcher, idle: an estimate
RUN_RSS_MB = 30  # one small Python script in flight: an estimate


def pool_estimate_mb(workers: int, concurrency: int) -> int:
    return workers * (WORKER_RSS_MB + concurrency * RUN_RSS_MB)


def check_pool_memory(settings: SupervisorSettings, available_mb: int | None = None) -> str | None:
    """The warning to log when the pool may not fit in memory; None when it fits."""
    if available_mb is None:
        available_mb = psutil.virtual_memory().available // (1024 * 1024)
    estimate = pool_estimate_mb(settings.workers, settings.concurrency)
    if estimate <= available_mb:
        return None
    return (
        f"workers = {settings.workers} x concurrency = {settings.concurrency} may need about "
        f"{estimate} MB ({WORKER_RSS_MB} MB a worker + {RUN_RSS_MB} MB a run in flight), more "
        f"than the {available_mb} MB available on this host; lower workers or concurrency if "
        "the host starts swapping or the OOM killer takes workers"
    )

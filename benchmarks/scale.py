"""``--actors N``: scheduling at scale (issue 13, item 5), in two phases, each on a fresh
supervisor.

**Idle**: N scheduled actors, half cron and half interval, none due while it is measured (hourly
crons at minutes at least 25 minutes away; hourly intervals whose stored state, as a restarted
supervisor finds it, says they are due 30 to 59 minutes from now). Reported: start-up time
(process start to the supervisor's ``READY=1``: configuration read, actors built and seeded),
the time until its CPU settles (the first writes of N actors' rows), then over ``--idle-seconds``
its idle CPU (% of one core, and the whole process tree's) and its RSS.

**Burst**: ``min(N, --burst)`` actors whose ``once`` schedules are all due at the same instant,
a few seconds after the workers are ready. Fire lateness is the time of the run's
``run_started`` event (stamped by the run book just before the run is sent to a worker) minus
the due time. Only
``workers x concurrency`` runs can be in flight, so most of a large burst waits for a slot: the
figure for scheduling itself is over the runs that had a free slot all the way from their due
time to their dispatch: fewer than ``workers x concurrency`` runs in flight throughout, replayed
from the store (a run is in flight from its ``run_started`` until the supervisor records its
outcome, the ``created_at`` of its final event). Lateness over all runs and the burst's drain
time are reported beside it.
"""

import argparse
import bisect
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from bench_supervisor import MB, BenchError, BenchSupervisor, peak_rss_mb
from progress import Progress

SETTLE_CPU = 0.05  # the supervisor counts as settled below this share of a core over 1 s
SETTLE_MAX_S = 600.0


def measure_actors(args: argparse.Namespace) -> dict[str, Any]:
    """Both phases; the report's ``idle`` and ``burst`` sections."""
    idle = measure_idle(args, args.scale_actors)
    burst = measure_burst(args, min(args.scale_actors, args.burst))
    return {"actors": args.scale_actors, "idle": idle, "burst": burst}


def _profile(args: argparse.Namespace, phase: str) -> str | None:
    """``--profile sup.prof``: the idle phase's supervisor writes sup.idle.prof, the burst's
    sup.burst.prof."""
    if not args.profile:
        return None
    path = Path(args.profile)
    return str(path.with_name(f"{path.stem}.{phase}{path.suffix}"))


# --- idle --------------------------------------------------------------------------------------


def idle_actors(count: int, now: float) -> str:
    """``count`` actor tables: even ones cron, odd ones interval, none due for 25 minutes."""
    minute = datetime.fromtimestamp(now, UTC).minute
    tables = []
    for i in range(count):
        if i % 2 == 0:
            at = (minute + 25 + i % 30) % 60  # 25 to 54 minutes from now, hourly
            schedule = f'{{ type = "cron", expression = "{at} * * * *" }}'
        else:
            schedule = f'{{ type = "interval", seconds = {3600 + i % 600} }}'
        tables.append(f'[[actors]]\nname = "idle-{i}"\nscript = "scripts/noop.py"\n'
                      f"schedule = {schedule}\n")  # fmt: skip
    return "\n".join(tables)


def seed_intervals(sup: BenchSupervisor, count: int, now: float) -> None:
    """Store the interval actors' state as a supervisor that ran before would have left it:
    next fire 30-59 minutes away. A fresh interval schedule fires at start-up (by design);
    with stored state it resumes where it was, which is what an idle restart looks like."""
    from supervisor.records import TaskState
    from supervisor.schedule import IntervalSchedule
    from supervisor.store import open_store

    (sup.folder / "state").mkdir(mode=0o700, exist_ok=True)
    store = open_store(sup.database, base_dir=sup.folder)
    try:
        store.migrate()
        batch: list[Any] = []
        for i in range(1, count, 2):
            schedule = IntervalSchedule(float(3600 + i % 600)).describe()
            batch.append(TaskState(
                actor=f"idle-{i}", next_run_at=now + 1800 + (i % 1800),
                metadata={"schedule": schedule}, updated_at=now,
            ))  # fmt: skip
            if len(batch) >= 5000:
                store.write_batch(batch)
                batch = []
        if batch:
            store.write_batch(batch)
    finally:
        store.close()


def _tree_cpu_s(root: psutil.Process) -> float:
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _settle(proc: psutil.Process) -> float:
    """Wait until the supervisor's CPU falls below :data:`SETTLE_CPU` of a core over a second;
    returns how long that took."""
    started = time.monotonic()
    before = _cpu_s(proc)
    while time.monotonic() - started < SETTLE_MAX_S:
        time.sleep(1.0)
        after = _cpu_s(proc)
        if after - before < SETTLE_CPU:
            return time.monotonic() - started
        before = after
    raise BenchError(f"the supervisor's CPU did not settle within {SETTLE_MAX_S:.0f} s")


def measure_idle(args: argparse.Namespace, count: int) -> dict[str, Any]:
    now = time.time()
    with BenchSupervisor(
        workers=args.workers, concurrency=args.concurrency, mode=args.mode,
        database=args.database, actors=idle_actors(count, now),
        settings=f"queue_size = {max(10000, count)}", profile=_profile(args, "idle"),
        keep=args.keep,
    ) as sup:  # fmt: skip
        seed_intervals(sup, count, now)
        runs_before = sup.query("SELECT count(*) FROM runs")[0][0]
        sup.start()
        startup_s = sup.wait_ready(timeout_s=max(SETTLE_MAX_S, count * 0.03))
        proc = sup.process()
        print(f"idle: {count:,} actors, ready in {startup_s:.2f} s; settling", file=sys.stderr)
        settle_s = _settle(proc)
        progress = Progress(round(args.idle_seconds), what="idle s", unit="s/s")
        cpu, tree = _cpu_s(proc), _tree_cpu_s(proc)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.idle_seconds:
            time.sleep(min(1.0, args.idle_seconds - elapsed))
            progress.update(round(time.monotonic() - started))
        elapsed = time.monotonic() - started
        cpu, tree = _cpu_s(proc) - cpu, _tree_cpu_s(proc) - tree
        progress.close()
        rss = proc.memory_info().rss
        fired = sup.query("SELECT count(*) FROM runs")[0][0] - runs_before
        return {
            "actors": count,
            "startup_s": round(startup_s, 3),
            "settle_s": round(settle_s, 1),
            "idle_s": round(elapsed, 1),
            "idle_cpu_pct": round(100 * cpu / elapsed, 2),
            "idle_cpu_pct_all_processes": round(100 * tree / elapsed, 2),
            "rss_mb": round(rss / MB, 1),
            "rss_peak_mb": peak_rss_mb(proc),
            "runs_fired": fired,  # 0: nothing was due, as intended
        }


# --- burst -------------------------------------------------------------------------------------


def burst_actors(count: int, due: float) -> str:
    at = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    schedule = f'{{ type = "once", at = "{at}" }}'
    return "\n".join(
        f'[[actors]]\nname = "burst-{i}"\nscript = "scripts/noop.py"\nschedule = {schedule}\n'
        for i in range(count)
    )


class TooLate(BenchError):
    """The supervisor or its workers were not ready before the burst's due time."""


def measure_burst(args: argparse.Namespace, count: int) -> dict[str, Any]:
    """The burst, on a supervisor whose start-up fits before the due time: a start-up slower
    than ``--fire-delay`` (a busy machine) is retried with twice the delay, twice."""
    delay = args.fire_delay
    for attempt in range(3):
        try:
            return _burst(args, count, delay)
        except TooLate as exc:
            if attempt == 2:
                raise BenchError(f"{exc}: raise --fire-delay (now {args.fire_delay} s)") from None
            print(f"burst: {exc}; again with a delay of {2 * delay:.0f} s", file=sys.stderr)
            delay *= 2
    raise AssertionError("unreachable")


def _burst(args: argparse.Namespace, count: int, delay: float) -> dict[str, Any]:
    # Whole seconds (the schedule's resolution), far enough ahead for start-up and the workers.
    due = float(int(time.time() + delay))
    capacity = args.workers * args.concurrency
    with BenchSupervisor(
        workers=args.workers, concurrency=args.concurrency, mode=args.mode,
        database=args.database, actors=burst_actors(count, due),
        settings=f"queue_size = {max(10000, count)}", profile=_profile(args, "burst"),
        keep=args.keep,
    ) as sup:  # fmt: skip
        sup.start()
        try:
            startup_s = sup.wait_ready(timeout_s=max(1.0, due - time.time()))
            sup.wait_workers(timeout_s=max(1.0, due - time.time() - 0.2))
        except BenchError as exc:
            if sup.proc is not None and sup.proc.poll() is not None:
                raise
            raise TooLate(f"not ready within {delay:.0f} s ({exc})") from None
        if time.time() > due - 0.2:
            raise TooLate(f"ready only {time.time() - due:+.2f} s from the due time")
        print(f"burst: {count:,} actors due in {due - time.time():.1f} s", file=sys.stderr)
        _wait_finished(sup, count, due, args.burst_timeout)
        rows = _burst_rows(sup, due)
    if len(rows) != count:
        raise BenchError(f"{len(rows)} of the burst's {count} runs were recorded")
    return {"actors": count, "capacity": capacity, "startup_s": round(startup_s, 3),
            **lateness(rows, due, capacity)}  # fmt: skip


def _wait_finished(sup: BenchSupervisor, count: int, due: float, timeout_s: float) -> None:
    """Poll the store (not ``status``: that would cost the loop) until every run finished."""
    finished = "SELECT count(*) FROM runs WHERE finished_at IS NOT NULL"
    before = sup.query(finished)[0][0]  # a PostgreSQL store may hold earlier benchmarks' runs
    time.sleep(max(0.0, due - time.time()))
    progress = Progress(count, what="burst runs")
    deadline = due + timeout_s
    try:
        while time.time() < deadline:
            if sup.proc is not None and sup.proc.poll() is not None:
                raise BenchError(f"the supervisor exited: {sup.log_tail()}")
            done = sup.query(finished)[0][0] - before
            progress.update(done)
            if done >= count:
                return
            time.sleep(0.25)
    finally:
        progress.close()
    raise BenchError(f"the burst did not finish within {timeout_s:.0f} s of its due time")


Row = tuple[float, float, float, float]


def _burst_rows(sup: BenchSupervisor, due: float) -> list[Row]:
    """(queued, started, freed, finished) of the burst's first attempts. ``queued``: when the
    fire became a queued run (``queued_at``); ``started``: when the supervisor sent it to a
    worker (its first ``run_started`` event's ``created_at``: the final row's ``started_at`` is
    the launcher's, which also counts the time the run waited inside its worker); ``freed``:
    when the supervisor recorded the outcome (its final event's ``created_at``), which is when
    its slot became free again in the supervisor's view; ``finished``: the worker's
    ``finished_at``."""
    from supervisor.store import open_store

    store = open_store(sup.store_url(), base_dir=sup.folder, read_only=True)
    try:
        records = store.list_runs(limit=10_000_000)
        events = store.find_events(aggregate_type="run", limit=10_000_000)
    finally:
        store.close()
    freed: dict[str, float] = {}
    sent: dict[str, float] = {}
    for event in events:
        run_id, at = event.aggregate_id, event.created_at
        if event.event_type == "run_started":
            sent[run_id] = min(at, sent.get(run_id, at))  # the first attempt's
        elif event.event_type != "run_queued":
            freed[run_id] = max(at, freed.get(run_id, 0))
    return [
        (r.queued_at, sent[r.run_id], freed[r.run_id], r.finished_at)
        for r in records
        if r.attempt == 1 and r.scheduled_for == due and r.run_id in freed
        and r.run_id in sent and r.finished_at is not None
    ]  # fmt: skip


def lateness(rows: list[Row], due: float, capacity: int) -> dict[str, Any]:
    """Fire lateness (started - due) over all runs and over those that had a free slot.

    A run had a free slot if fewer than ``capacity`` runs were in flight at every moment from
    ``due`` to its start (in flight: from ``started`` until the supervisor recorded the
    outcome, ``freed``). All the burst's runs share ``due`` and none ran before it, so that
    is the running maximum of the number in flight just before the run's start.
    """
    changes = sorted([(s, 1) for _, s, _, _ in rows] + [(f, -1) for _, _, f, _ in rows])
    times, peaks = [], []
    level = peak = 0
    for when, step in changes:  # at equal times, -1 sorts first: a slot freed, then taken
        level += step
        peak = max(peak, level)
        times.append(when)
        peaks.append(peak)
    late_all: list[float] = []
    late_free: list[float] = []
    for _, started, _, _ in rows:
        late_all.append((started - due) * 1000)
        i = bisect.bisect_left(times, started) - 1  # the last change strictly before the start
        if i < 0 or peaks[i] < capacity:
            late_free.append((started - due) * 1000)
    last_finish = max(f for _, _, _, f in rows)
    queued = [(q - due) * 1000 for q, _, _, _ in rows]
    return {
        # the scheduler alone: due -> the fire popped from the heap and made a queued run
        "queued_p50_ms": _pct(queued, 50),
        "queued_p99_ms": _pct(queued, 99),
        "lateness_free_slot_runs": len(late_free),
        "lateness_free_slot_p50_ms": _pct(late_free, 50),
        "lateness_free_slot_p99_ms": _pct(late_free, 99),
        "lateness_free_slot_max_ms": round(max(late_free), 3) if late_free else None,
        "lateness_all_p50_ms": _pct(late_all, 50),
        "lateness_all_p99_ms": _pct(late_all, 99),
        "drain_s": round(last_finish - due, 3),
        "runs_per_s": round(len(rows) / (last_finish - due), 1) if last_finish > due else None,
    }


def _pct(values: list[float], pct: int) -> float | None:
    """The ``pct`` percentile, nearest rank: of two values, p99 is the larger."""
    if not values:
        return None
    if pct == 50:
        return round(statistics.median(values), 3)
    ranked = sorted(values)
    return round(ranked[max(0, -(-len(ranked) * pct // 100) - 1)], 3)

"""Throughput and latency of actor-supervisor, next to the bare mechanism it wraps.

Starts its own supervisor in a temporary folder with a no-op actor, submits ``--runs`` runs from
``--clients`` concurrent client processes (each: submit, wait for the result, repeat), and
reports runs/s and submit->result latency. In the same invocation it measures the *ceiling*: the
bare mechanism with no ZeroMQ and no store, in as many parallel processes as there are workers
-- fork a child, pipe a JSON document in and out, wait (fork mode); spawn ``python noop.py``
the same way (exec mode) -- each loop in a fresh interpreter (``ceiling.py``).
``efficiency = runs_per_s / ceiling_runs_per_s`` holds on a noisy machine because both are
measured on it, minutes apart.

It also reports the CPU each kind of process spends per run (``cpu_ms_per_run``): the supervisor,
its workers, their launchers and forkers (psutil ``cpu_times`` of each, before and after the load,
found through the supervisor's process tree), the run children (the ``wait4`` rusage of every
child the forkers reaped meanwhile: their ``children_user`` and ``children_system``) and the
benchmark's clients (their own ``getrusage``). With minor page faults per run likewise
(``faults_per_run``), and the context switches of the long-lived processes (``switches_per_run``:
threads handing the GIL or the CPU to each other), these are the figures to optimise: far
steadier than runs/s on a shared machine. ``supervisor_threads_cpu_ms_per_run`` splits the
supervisor's CPU by thread: its loop (the main thread), the ``store-writer`` thread, the others.
``ceiling_cpu_ms_per_run`` is the bare loop's, parent and children together, and
``cpu_efficiency`` that over the supervisor's total: the CPU a run costs the bare mechanism,
as a share of what it costs here.

    python benchmarks/run.py --runs 5000 --workers 2 --mode fork
    python benchmarks/run.py --mode exec --runs 1000 --json
    python benchmarks/run.py --database postgresql://postgres@127.0.0.1/bench

``--store-only`` measures the store alone, without processes or sockets. It fills
``execution_events`` to ``--query-rows`` (1 M) with runs' events, times the typical history
query -- all events of one aggregate in time order (``list_events(aggregate_type="run",
aggregate_id=...)``) on random runs -- and then, on top of that table, the sustained events/s
written through the batch writer for each of ``--batch-sizes`` (a producer thread keeps the
writer's queue full, as a busy supervisor would). ``--ids random`` makes random ids instead of
the supervisor's time-ordered ones, to show what the ordering is worth.

    python benchmarks/run.py --store-only
    python benchmarks/run.py --store-only --database postgresql://postgres@127.0.0.1/bench
"""

import argparse
import gc
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import workflow  # benchmarks/workflow.py, beside this script
from ceiling import INPUT  # benchmarks/ceiling.py: the ceiling's loops send the same input

import supervisor.events

NOOP_SCRIPT = """\
import json, sys
json.dump({"ok": True, "echo": json.load(sys.stdin)}, sys.stdout)
"""


# --- the ceiling: the bare mechanism --------------------------------------------------------


def measure_ceiling(
    mode: str, parallel: int, runs: int, script: Path, python: str
) -> tuple[float, float]:
    """Runs per second of the bare loop in ``parallel`` fresh processes (``ceiling.py``; exec
    mode: on ``python``, the interpreter the supervisor itself chose for exec mode), by the
    slowest loop's own time (their start-up is not measured), and its CPU ms per run."""
    per_proc = max(1, runs // parallel)
    command = [sys.executable, str(Path(__file__).with_name("ceiling.py")), mode, str(per_proc)]
    if mode == "exec":
        command += [str(script), python]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(parallel)]
    try:
        outputs = [proc.communicate(timeout=3600)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"the ceiling's loop failed: {[p.returncode for p in procs]}")
    loops = [json.loads(out) for out in outputs]
    elapsed = max(loop["elapsed_s"] for loop in loops)
    cpu_s = sum(loop["cpu_s"] for loop in loops)
    return per_proc * parallel / elapsed, cpu_s * 1000 / (per_proc * parallel)


# --- the supervisor ---------------------------------------------------------------------------


def _write_config(folder: Path, args: argparse.Namespace, http_port: int | None = None) -> Path:
    from bench_supervisor import uid_block  # not the default uids: a supervisor may hold them

    scripts = folder / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "noop.py").write_text(NOOP_SCRIPT)
    for path in (folder, scripts):
        path.chmod(0o755)
    config = folder / "supervisor.toml"
    config.write_text(
        f"""
[supervisor]
workers = {args.workers}
concurrency = {args.concurrency}
mode = "{args.mode}"
database = "{args.database or "sqlite:state/bench.db"}"
log_level = "warning"
queue_size = 100000
run_as_range = "{uid_block(args.workers * args.concurrency)}"
http_listen = "{f"127.0.0.1:{http_port}" if http_port else ""}"
{_tmp_limit(args)}{_preload(args)}
[[actors]]
name = "noop"
script = "scripts/noop.py"
timeout_s = 30
"""
        + "".join(
            f'\n[[actors]]\nname = "extra-{i}"\nscript = "scripts/noop.py"\n'
            for i in range(args.actors)
        )
    )
    return config


def _tmp_limit(args: argparse.Namespace) -> str:
    """--tmp-mb: the runs' private tmpfs (root), or "unlimited" to measure without one."""
    tmp_mb = getattr(args, "tmp_mb", None)
    if tmp_mb is None:
        return ""
    return f"limits = {{ tmp_mb = {tmp_mb if tmp_mb == 'unlimited' else int(tmp_mb)!r} }}\n"


def _preload(args: argparse.Namespace) -> str:
    """--preload: the launchers' pre-imports (comma-separated; "" for none), else the default."""
    modules = getattr(args, "preload", None)
    if modules is None:
        return ""
    from supervisor.settings_kinds import MODULES  # the setting's own parser and checks

    return f"preload = {json.dumps(list(MODULES.parse(modules)))}\n"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(config: Path, timeout_s: float) -> Any:
    """A client of the supervisor ``config`` describes (its default control socket)."""
    from supervisor.config import load_config
    from supervisor.controlkeys import client_for

    return client_for(load_config(config, environ={}), timeout_s=timeout_s)


def _client_loop(config: Path, count: int, warmup: int, results: Any) -> None:
    from protocol.client import RunOutcome

    latencies = []
    failures = 0
    with _client(config, timeout_s=60) as client:
        before = resource.getrusage(resource.RUSAGE_SELF)
        for i in range(warmup + count):
            started = time.perf_counter()
            outcome = client.submit("noop", INPUT, wait=True)
            elapsed = time.perf_counter() - started
            assert isinstance(outcome, RunOutcome)
            if i >= warmup:
                latencies.append(elapsed)
                failures += not outcome.succeeded
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    results.put((latencies, failures, (cpu_s, after.ru_minflt - before.ru_minflt)))


def _wait_ready(config: Path, workers: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    from protocol.client import ClientError

    deadline = time.monotonic() + 60
    with _client(config, timeout_s=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"supervisor exited with {proc.returncode} before it was ready")
            try:
                status = client.status()
            except ClientError:
                continue
            if sum(w["ready"] for w in status["workers"]) == workers:
                ready: dict[str, Any] = status
                return ready
            time.sleep(0.1)
    raise SystemExit("supervisor not ready within 60 s")


def measure_supervisor(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from profiling import supervisor_command
    from progress import planned_runs, watch_runs

    http_port = _free_port() if args.http else None
    config = _write_config(folder, args, http_port)
    log = open(folder / "supervisor.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        supervisor_command(config, args.profile),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    watch_runs(config, planned_runs(args), proc)  # the progress line, on stderr
    try:
        status = _wait_ready(config, args.workers, proc)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        per_client = max(1, args.runs // args.clients)
        warmup = min(50, per_client // 10)
        clients = [
            ctx.Process(target=_client_loop, args=(config, per_client, warmup, results))
            for _ in range(args.clients)
        ]
        scraper = _Scraper(http_port) if http_port else None
        meter = CpuMeter(proc.pid)
        meter.start()
        started = time.perf_counter()
        for client in clients:
            client.start()
        gathered = [results.get(timeout=3600) for _ in clients]
        elapsed = time.perf_counter() - started
        total = (per_client + warmup) * args.clients
        cpu = meter.stop(total, [usage for _, _, usage in gathered])
        with _client(config, timeout_s=10) as client:
            after = client.status()["store"]
        for client in clients:
            client.join()
        if scraper is not None:
            scraper.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
    latencies = sorted(x for lats, _, _ in gathered for x in lats)
    return {
        "runs": total,
        "failures": sum(f for _, f, _ in gathered),
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(total / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "exec_python": status["supervisor"]["exec_python"],
        # store transactions (the loop's and the writer thread's): each writes its pages again
        "store_commits_per_run": round((after["batches"] - status["store"]["batches"]) / total, 3),
        **({"metrics_scrapes": scraper.scrapes, "metrics_scrape_ms_max": scraper.worst_ms}
           if scraper else {}),
        **cpu,
    }  # fmt: skip


class _Scraper:
    """GET /metrics once a second while the load runs, as Prometheus would."""

    def __init__(self, port: int) -> None:
        import threading

        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self.worst_ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request

        while not self._stop.wait(1.0):
            started = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - started) * 1000)
            self.scrapes += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- CPU per run, by kind of process ----------------------------------------------------------

KINDS = ("supervisor", "workers", "launchers", "forkers", "run_children", "clients", "other")
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


class _Usage:
    """CPU seconds and minor page faults of one process (all its threads) and of the children
    it reaped, from ``/proc/PID/stat``: the figures ``wait4`` rusage accumulates into a parent."""

    __slots__ = ("cpu_s", "faults", "reaped_cpu_s", "reaped_faults", "switches", "threads")

    def __init__(self, proc: psutil.Process) -> None:
        self.switches = _switches(proc.pid)
        self.threads = _thread_cpu_s(proc.pid)
        times = proc.cpu_times()
        self.cpu_s = times.user + times.system
        self.reaped_cpu_s = times.children_user + times.children_system
        with open(f"/proc/{proc.pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        self.faults, self.reaped_faults = int(fields[7]), int(fields[8])  # minflt, cminflt


def _switches(pid: int) -> int:
    """Context switches of every thread of a process, voluntary or not (psutil and
    ``/proc/PID/status`` count the main thread's only)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status", "rb") as f:
                total += sum(int(line.split()[1]) for line in f if b"ctxt_switches" in line)
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return total


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of the main thread (the supervisor's loop) and of the ``store-writer``
    thread, from ``/proc/PID/task/TID/stat`` (the thread's name is its comm, in the stat line).
    The other threads are the process's total less these two (exited threads included)."""
    split = {"loop": 0.0, "store_writer": 0.0}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat", "rb") as f:
                head, tail = f.read().rsplit(b")", 1)
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        fields = tail.split()
        role = "loop" if int(task) == pid else head.split(b"(", 1)[1].decode()
        if role in ("loop", "store-writer"):
            split[role.replace("-", "_")] += (int(fields[11]) + int(fields[12])) * _TICK_S
    return split


def _process_kinds(root: psutil.Process) -> dict[int, tuple[str, psutil.Process]]:
    """The supervisor's long-lived processes by pid: itself, its workers (the children that
    started a launcher), each worker's launcher, each launcher's forker; anything else it
    runs (the HTTP process) is ``other``. Run children are not here: they come and go, and
    are counted through the forker that reaps them."""
    found: dict[int, tuple[str, psutil.Process]] = {root.pid: ("supervisor", root)}
    for child in root.children():
        try:
            launchers = [p for p in child.children() if "workers.launcher" in p.cmdline()]
            found[child.pid] = ("workers" if launchers else "other", child)
            for launcher in launchers:
                found[launcher.pid] = ("launchers", launcher)
                for forker in launcher.children():
                    found[forker.pid] = ("forkers", forker)
        except psutil.Error:  # gone meanwhile (a worker replaced): named in processes_changed
            continue
    return found


class CpuMeter:
    """CPU and faults per run of every kind of process, between :meth:`start` and :meth:`stop`.

    Long-lived processes count their own CPU (psutil ``cpu_times``); the run children count
    through their forkers, whose reaped-children times grow by each child's ``wait4`` rusage
    when it is reaped (a spare forked before the window and used in it counts; the one left
    waiting at the end does not: one child either way). A process that appears or exits during
    the window (a respawned worker) is left out and named in ``changed``.
    """

    def __init__(self, root_pid: int) -> None:
        self._root = psutil.Process(root_pid)
        self._before: dict[int, tuple[str, _Usage]] = {}
        self.changed: list[str] = []

    def _snapshot(self) -> dict[int, tuple[str, _Usage]]:
        taken: dict[int, tuple[str, _Usage]] = {}
        for pid, (kind, proc) in _process_kinds(self._root).items():
            try:
                taken[pid] = (kind, _Usage(proc))
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue
        return taken

    def start(self) -> None:
        self._before = self._snapshot()

    def stop(self, runs: int, clients: list[tuple[float, int]]) -> dict[str, Any]:
        """``clients``: each benchmark client's own CPU seconds and faults over its loop."""
        after = self._snapshot()
        cpu = dict.fromkeys(KINDS, 0.0)
        faults = dict.fromkeys(KINDS, 0)
        switches = dict.fromkeys(KINDS, 0)
        count = dict.fromkeys(KINDS, 0)
        threads = dict.fromkeys(("loop", "store_writer", "other"), 0.0)
        for pid in sorted(self._before.keys() ^ after.keys()):
            kind = (self._before.get(pid) or after[pid])[0]
            self.changed.append(f"{kind} {pid} {'exited' if pid in self._before else 'appeared'}")
        for pid in self._before.keys() & after.keys():
            kind, old = self._before[pid]
            new = after[pid][1]
            cpu[kind] += new.cpu_s - old.cpu_s
            faults[kind] += new.faults - old.faults
            switches[kind] += new.switches - old.switches
            count[kind] += 1
            if kind == "supervisor":
                for role, cpu_s in new.threads.items():
                    threads[role] += cpu_s - old.threads[role]
                threads["other"] += new.cpu_s - old.cpu_s - sum(new.threads.values())
                threads["other"] += sum(old.threads.values())
            if kind == "forkers":
                cpu["run_children"] += new.reaped_cpu_s - old.reaped_cpu_s
                faults["run_children"] += new.reaped_faults - old.reaped_faults
        for client_cpu, client_faults in clients:
            cpu["clients"] += client_cpu
            faults["clients"] += client_faults
        count["clients"] = len(clients)
        count["run_children"] = runs
        per_run = {k: round(v * 1000 / runs, 3) for k, v in cpu.items() if count[k] or v}
        per_run["total"] = round(sum(cpu.values()) * 1000 / runs, 3)
        return {
            "cpu_ms_per_run": per_run,
            "faults_per_run": {k: round(v / runs, 1) for k, v in faults.items() if count[k]},
            "switches_per_run": {
                k: round(v / runs, 1)
                for k, v in switches.items()
                if count[k] and k not in ("clients", "run_children")
            },
            # the supervisor's CPU by thread: its loop, the store writer, all others
            "supervisor_threads_cpu_ms_per_run": {
                k: round(v * 1000 / runs, 3) for k, v in threads.items()
            },
            "processes": {k: v for k, v in count.items() if v and k != "run_children"},
            # /proc counts CPU in clock ticks: each process's figure is this coarse in all
            "cpu_resolution_ms_per_run": round(_TICK_S * 1000 / runs, 4),
            **({"processes_changed": self.changed} if self.changed else {}),
        }


# --- the store alone ------------------------------------------------------------------------


def random_id() -> str:
    """The alternative to the supervisor's time-ordered ids: 128 random bits.

    Random keys land on random pages of every B-tree on them, instead of at its right edge.
    """
    return os.urandom(16).hex()


ID_KINDS = {"random": random_id, "time": supervisor.events.new_id}


def _run_events(new_id: Any, created_at: float) -> list[Any]:
    """The three events of one run, shaped like supervisor.events makes them."""
    from supervisor.records import Event

    run_id = new_id()
    base: dict[str, Any] = {"actor": "noop", "attempt": 1, "retry_count": 0,
                            "correlation_id": run_id, "trigger": "submit"}  # fmt: skip
    extras: list[dict[str, Any]] = [
        {"scheduled_for": None},
        {"worker_id": "w0.1", "code_sha256": "ab" * 32},
        {"status": "succeeded", "reason": None, "error": None, "exit_code": 0, "signal": None,
         "duration_ms": 12.5, "worker_id": "w0.1", "code_sha256": "ab" * 32},
    ]  # fmt: skip
    return [
        Event(
            event_id=new_id(),
            event_type=kind,
            aggregate_type="run",
            aggregate_id=run_id,
            correlation_id=run_id,
            metadata={**base, **extra},
            created_at=created_at,
        )
        for kind, extra in zip(("run_queued", "run_started", "run_succeeded"), extras, strict=True)
    ]


class _Runs:
    """Makes runs' events with one id scheme, and remembers run ids to query later."""

    def __init__(self, new_id: Any) -> None:
        self.new_id = new_id
        self.sample: list[str] = []  # every 97th run, for the query benchmark
        self.made = 0

    def events(self, created_at: float) -> list[Any]:
        made = _run_events(self.new_id, created_at)
        self.made += 1
        if self.made % 97 == 0:
            self.sample.append(made[0].aggregate_id)
        return made


def measure_writer(store: Any, runs: _Runs, batch_size: int, events: int) -> dict[str, Any]:
    """Sustained events/s through a BatchWriter, from first ``put`` to last commit.

    The events are made beforehand, so what is timed is the writer and the store, not the
    making of events. A producer thread keeps up to four batches queued and, when the queue is
    full, waits on the writer's ``wakeup_fd`` the way the supervisor's poller does.
    """
    import select

    from supervisor.writer import BatchWriter

    made: list[Any] = []
    while len(made) < events:
        made.extend(runs.events(time.time()))
    # hundreds of thousands of waiting events would make every cyclic GC pass scan them all,
    # a cost a supervisor (which holds a few) never pays: keep them out of the collector's way
    gc.collect()
    gc.freeze()
    writer = BatchWriter(store, batch_size=batch_size, max_age_s=0.02)
    writer.start()
    bound = max(4 * batch_size, 64)

    def produce() -> None:
        for event in made:
            seq = writer.put(event)
            while seq - writer.committed >= bound:
                select.select([writer.wakeup_fd()], [], [], 1.0)
                writer.drain_wakeups()

    started = time.perf_counter()
    producer = threading.Thread(target=produce, name="producer", daemon=True)
    producer.start()
    producer.join()
    writer.flush(3600)
    elapsed = time.perf_counter() - started
    writer.close(timeout=120)
    gc.unfreeze()
    stats = writer.stats()
    return {
        "events_per_s": round(len(made) / elapsed),
        "seconds": round(elapsed, 2),
        "events": len(made),
        "mean_batch": round(stats.records / max(stats.batches, 1), 1),
        "last_flush_ms": round(stats.last_flush_ms or 0.0, 2),
    }


def fill_events(store: Any, runs: _Runs, rows: int, have: int) -> float:
    """Top ``execution_events`` up to ``rows`` with whole runs; returns the seconds it took."""
    started = time.perf_counter()
    clock = time.time() - 86400.0
    while have < rows:
        batch = []
        for _ in range(min(3334, (rows - have + 2) // 3)):
            clock += 0.001
            batch.extend(runs.events(clock))
        store.write_batch(batch)
        have += len(batch)
    return time.perf_counter() - started


def measure_query(store: Any, runs: _Runs, queries: int) -> dict[str, Any]:
    """Latency of "all events of one aggregate, in time order" on random runs."""
    rng = random.Random(42)
    latencies = []
    for _ in range(queries):
        run_id = rng.choice(runs.sample)
        started = time.perf_counter()
        found = store.list_events(aggregate_type="run", aggregate_id=run_id)
        latencies.append(time.perf_counter() - started)
        assert len(found) == 3, (run_id, len(found))
    latencies.sort()
    return {
        "queries": queries,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1] * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "max_ms": round(latencies[-1] * 1000, 3),
    }


def _count_events(store: Any, url: str) -> int:
    """Rows in ``execution_events``, straight from the database (the Store API has no count)."""
    if store.description.startswith("sqlite:"):
        import sqlite3

        with sqlite3.connect(store.description.removeprefix("sqlite:")) as conn:
            return int(conn.execute("SELECT count(*) FROM execution_events").fetchone()[0])
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM execution_events").fetchone()
        return int(row[0]) if row else 0


def _settle(store: Any, url: str) -> None:
    """After a bulk fill: vacuum and analyze now, as autovacuum would have in steady state, so
    that it does not land inside the first measurement."""
    if store.description.startswith("sqlite:"):
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) execution_events")


def measure_store(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from supervisor.store import open_store

    url = args.database or "sqlite:bench.db"
    store = open_store(url, base_dir=folder, sqlite_synchronous=args.sqlite_synchronous)
    try:
        store.migrate()
        runs = _Runs(ID_KINDS[args.ids])
        have = _count_events(store, url)
        filled = fill_events(store, runs, args.query_rows, have) if have < args.query_rows else 0
        rows = _count_events(store, url)
        print(f"table: {rows} events (filled in {filled:.1f} s)", file=sys.stderr)
        if not runs.sample:  # an already full table: make a few runs to look up
            fill_events(store, runs, rows + 3000, rows)
        _settle(store, url)
        query = measure_query(store, runs, args.queries)
        print(f"aggregate query: {query}", file=sys.stderr)
        writer: dict[str, Any] = {}
        for size in args.batch_sizes:  # on top of the full table, as in production
            count = args.events if size >= 100 else max(3000, args.events * size // 100)
            writer[str(size)] = measure_writer(store, runs, size, count)
            print(f"batch size {size:>5}: {writer[str(size)]}", file=sys.stderr)
    finally:
        store.close()
    return {
        "database": store.description,
        "ids": args.ids,
        "writer": writer,
        "table_events": rows,
        "fill_s": round(filled, 1),
        "aggregate_query": query,
    }


# --- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    import modes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="runs to submit in all")
    parser.add_argument("--workers", type=modes.counts, default=2, help="a list sweeps: 1,2,4")
    parser.add_argument("--concurrency", type=int, default=1, help="runs in flight per worker")
    parser.add_argument(
        "--clients", type=modes.counts, default=0, help="default: workers x concurrency x 2"
    )
    parser.add_argument("--mode", choices=("fork", "exec"), default="fork")
    parser.add_argument(
        "--tmp-mb", help="the runs' tmp_mb limit: MiB or 'unlimited' (default: the config's)"
    )
    parser.add_argument(
        "--preload",
        help="the launchers' pre-imports, comma-separated ('' for none; default: the setting's)",
    )
    parser.add_argument("--database", help="store URL (default: SQLite in the temp folder)")
    parser.add_argument("--ceiling-runs", type=int, default=0, help="default: --runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--http",
        action="store_true",
        help="turn the HTTP server on and scrape /metrics every second",
    )
    parser.add_argument(
        "--extra-actors", dest="actors", type=int, default=0, help="on-demand actors to add"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, db)")
    store = parser.add_argument_group("--store-only")
    store.add_argument("--store-only", action="store_true", help="measure the store alone")
    store.add_argument(
        "--batch-sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[1, 100, 1000],
        help="writer batch sizes to measure (default 1,100,1000)",
    )
    store.add_argument(
        "--events",
        type=int,
        default=300_000,
        help="events per batch size >= 100 (smaller sizes: proportionally fewer, >= 3000)",
    )
    store.add_argument("--query-rows", type=int, default=1_000_000, help="events in the table")
    store.add_argument("--queries", type=int, default=2000, help="aggregate queries to time")
    store.add_argument("--sqlite-synchronous", default="normal", help="SQLite PRAGMA synchronous")
    workflow.add_arguments(parser)
    store.add_argument(
        "--ids",
        choices=sorted(ID_KINDS),
        default="time",
        help="event and run ids: time-ordered (what the supervisor makes) or random",
    )
    modes.add_arguments(parser)
    return parser


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _store_only(args: argparse.Namespace) -> int:
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bench-"))
    try:
        report = {**measure_store(args, folder), "machine": _machine()}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'database':>20}  {report['database']}")
        for size, result in report["writer"].items():
            print(f"{'batch ' + size:>20}  {result['events_per_s']:>9} events/s  {result}")
        print(f"{'table':>20}  {report['table_events']} events")
        print(f"{'aggregate query':>20}  {report['aggregate_query']}")
    return 0


def _workflow(args: argparse.Namespace) -> int:
    args.clients = args.clients or args.workers * args.concurrency * 2
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bench-"))
    try:
        report = {**workflow.run(args, folder, sys.modules[__name__]), "machine": _machine()}
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    return 0


_PER_KIND = {"cpu_ms_per_run": "cpu ms/run", "faults_per_run": "faults/run",
             "switches_per_run": "switches/run", "processes": "processes",
             "supervisor_threads_cpu_ms_per_run": "supervisor cpu ms/run"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the supervisor and its workers
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.store_only:
        return _store_only(args)
    if args.workflow:
        return _workflow(args)
    import modes

    if (code := modes.run(args)) is not None:  # --actors, --flood, a sweep
        return code
    from supervisor.store.urls import redact_url

    args.clients = args.clients or args.workers * args.concurrency * 2
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bench-"))
    try:
        measured = measure_supervisor(args, folder)
        ceiling, ceiling_cpu_ms = measure_ceiling(
            args.mode,
            args.workers,
            args.ceiling_runs or args.runs,
            folder / "scripts" / "noop.py",
            measured["exec_python"],
        )
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    report = {
        "mode": args.mode,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "clients": args.clients,
        "database": redact_url(args.database) if args.database else "sqlite",  # no password
        **measured,
        "ceiling_runs_per_s": round(ceiling, 1),
        "ceiling_cpu_ms_per_run": round(ceiling_cpu_ms, 3),
        "efficiency": round(measured["runs_per_s"] / ceiling, 3),
        # the same ratio by CPU, steadier than by runs/s where other load takes cores away
        "cpu_efficiency": round(ceiling_cpu_ms / measured["cpu_ms_per_run"]["total"], 3),
        "machine": _machine(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if isinstance(value, dict) and key in _PER_KIND:
                for kind, figure in value.items():
                    print(f"{_PER_KIND[key] + ' ' + kind:>24}  {figure}")
            elif key != "machine":
                print(f"{key:>24}  {value}")
        if args.keep:
            print(f"{'folder':>20}  {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

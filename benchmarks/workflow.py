"""``benchmarks/run.py --workflow``: what the workflow machinery costs, and item queries.

1. One supervisor, three no-op step actors. ``--workflow-items`` items (2,062) go through a
   three-step workflow; then the same number of runs (items x 3 = 6,186) are submitted as plain
   runs by ``--clients`` closed-loop clients, in the same supervisor. Reported: items/s, total
   time, errors (failed items or runs), and ``ratio`` = the workflow's step runs/s over the
   plain runs/s (target >= 0.9). The workflow's ``max_parallel`` is the clients' count, so both
   keep as many runs outstanding.
2. "All events of one conversation" (one item: its step runs' events and its item event) at
   ``--query-rows`` (1 M) events, SQLite and, with ``--database postgresql://...``, PostgreSQL:
   synthetic workflow events written straight through the store, then p50/p99 of
   ``Store.conversation_events`` on random items.

    python benchmarks/run.py --workflow
    python benchmarks/run.py --workflow --database postgresql://postgres@127.0.0.1/bench
"""

import argparse
import json
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STEPS = ("extract", "classify", "store")
STEP_SCRIPT = """\
import json, sys
doc = json.load(sys.stdin)
doc["steps"] = doc.get("steps", 0) + 1
json.dump(doc, sys.stdout)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--workflow")
    group.add_argument("--workflow", action="store_true", help="measure workflows (issue 14)")
    group.add_argument("--workflow-items", type=int, default=2062, help="items (x 3 steps)")
    group.add_argument("--conversation-queries", type=int, default=2000)


def _config(folder: Path, args: argparse.Namespace) -> Path:
    from bench_supervisor import uid_block  # beside this script, as run.py imports it

    scripts = folder / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "step.py").write_text(STEP_SCRIPT)
    for path in (folder, scripts):
        path.chmod(0o755)
    actors = "".join(
        f'[[actors]]\nname = "{s}"\nscript = "scripts/step.py"\ntimeout_s = 30\n\n' for s in STEPS
    )
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

{actors}
[[workflows]]
name = "bench"
steps = {json.dumps(list(STEPS))}
chunk_size = 100
max_parallel = {args.clients}
"""
    )
    return config


def _plain(bench: Any, config: Path, args: argparse.Namespace, runs: int) -> tuple[float, int]:
    """``runs`` plain runs of the first step actor from ``args.clients`` closed-loop clients."""
    import multiprocessing

    def loop(count: int, results: Any) -> None:
        failures = 0
        with bench._client(config, timeout_s=120) as client:
            for i in range(count):
                outcome = client.submit(STEPS[i % 3], {"id": i}, wait=True)
                failures += not outcome.succeeded
        results.put(failures)

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    shares = [runs // args.clients + (i < runs % args.clients) for i in range(args.clients)]
    procs = [ctx.Process(target=loop, args=(n, results)) for n in shares]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    failures = sum(results.get(timeout=3600) for _ in procs)
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    return elapsed, failures


def _workflow(bench: Any, config: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    from supervisor.config import load_config
    from supervisor.store import open_store

    items = [{"id": f"item-{n}", "payload": "x" * 64} for n in range(args.workflow_items)]
    started = time.perf_counter()
    with bench._client(config, timeout_s=120) as client:
        run_id = client.run_workflow("bench", items)["workflow_run_id"]
        acked = time.perf_counter() - started
        # ask the supervisor, not the store: a reader polling the database competes with it;
        # and rarely: each answer costs its loop ~1 ms, which the plain runs' phase does not pay
        while (live := _live(client, run_id)) is not None:
            left_s = (
                (live["items"] - live["done"])
                / max(live["done"], 1)
                * (time.perf_counter() - started)
            )
            time.sleep(min(1.0, max(0.02, left_s / 4)))  # often only near the end
    elapsed = time.perf_counter() - started
    settings = load_config(config, environ={}).supervisor
    store = open_store(settings.database, base_dir=folder)
    try:
        header = store.workflow_run(run_id)
        assert header is not None, run_id
        snapshots = store.workflow_snapshot_count(run_id)
    finally:
        store.close()
    return {
        "items": header.item_count,
        "status": header.status,
        "errors": header.failed,
        "ack_s": round(acked, 3),
        "total_s": round(elapsed, 3),
        "items_per_s": round(header.item_count / elapsed, 1),
        "step_runs_per_s": round(header.item_count * len(STEPS) / elapsed, 1),
        "snapshots": snapshots,
    }


def _live(client: Any, run_id: str) -> dict[str, Any] | None:
    """The supervisor's progress of ``run_id``; None once it finished."""
    return next((r for r in client.workflows()["runs"] if r["workflow_run_id"] == run_id), None)


def _cpu_s(pid: int) -> float:
    """CPU seconds of the supervisor's own process (its loop and its writer thread)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_workflow(args: argparse.Namespace, folder: Path, bench: Any) -> dict[str, Any]:
    config = _config(folder, args)
    log = open(folder / "supervisor.log", "wb")  # noqa: SIM115 - closed below
    from profiling import supervisor_command, wait_samplers  # beside this script

    proc = subprocess.Popen(
        supervisor_command(config, args.profile), stdout=log, stderr=subprocess.STDOUT
    )
    try:
        bench._wait_ready(config, args.workers, proc)
        cpu = _cpu_s(proc.pid)
        workflow = _workflow(bench, config, folder, args)
        workflow["supervisor_cpu_s"] = round(_cpu_s(proc.pid) - cpu, 2)
        step_runs = workflow["items"] * len(STEPS)
        workflow["cpu_ms_per_step_run"] = round(workflow["supervisor_cpu_s"] * 1000 / step_runs, 3)
        print(f"workflow: {workflow}", file=sys.stderr)
        runs = workflow["items"] * len(STEPS)
        cpu = _cpu_s(proc.pid)
        plain_s, plain_failures = _plain(bench, config, args, runs)
        plain_cpu = round(_cpu_s(proc.pid) - cpu, 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
        wait_samplers()
    plain = {"runs": runs, "total_s": round(plain_s, 3), "errors": plain_failures,
             "runs_per_s": round(runs / plain_s, 1), "supervisor_cpu_s": plain_cpu,
             "cpu_ms_per_run": round(plain_cpu * 1000 / runs, 3)}  # fmt: skip
    print(f"plain runs: {plain}", file=sys.stderr)
    return {
        "workflow": workflow,
        "plain": plain,
        "ratio": round(workflow["step_runs_per_s"] / plain["runs_per_s"], 3),
    }


# --- "all events of one conversation" at 1 M events ------------------------------------------


def _item_events(workflow_run_id: str, item: str, created_at: float) -> list[Any]:
    """One item's events as a workflow writes them: three step runs, then item_succeeded."""
    from supervisor.events import new_id
    from supervisor.records import Event

    found = []
    for order, step in enumerate(STEPS):
        run_id = new_id()
        meta = {"actor": step, "attempt": 1, "retry_count": 0, "correlation_id": workflow_run_id,
                "trigger": "workflow", "workflow": "bench", "workflow_run_id": workflow_run_id,
                "conversation_id": item, "execution_order": order}  # fmt: skip
        for kind in ("run_queued", "run_started", "run_succeeded"):
            found.append(Event(event_id=new_id(), event_type=kind, aggregate_type="run",
                               aggregate_id=run_id, correlation_id=workflow_run_id,
                               metadata=meta, created_at=created_at))  # fmt: skip
    found.append(Event(event_id=new_id(), event_type="item_succeeded",
                       aggregate_type="workflow_run", aggregate_id=workflow_run_id,
                       correlation_id=workflow_run_id,
                       metadata={"workflow": "bench", "item": item, "conversation_id": item},
                       created_at=created_at))  # fmt: skip
    return found


def measure_conversations(
    bench: Any, url: str, folder: Path, rows: int, queries: int
) -> dict[str, Any]:
    from supervisor.events import new_id
    from supervisor.store import open_store

    store = open_store(url, base_dir=folder)
    try:
        store.migrate()
        have = bench._count_events(store, url)
        started = time.perf_counter()
        clock = time.time() - 86400.0
        sample: list[str] = []
        made = 0
        workflow_run_id = new_id()
        while have < rows:
            batch: list[Any] = []
            while len(batch) < 10_000 and have + len(batch) < rows:
                made += 1
                if made % 2062 == 0:
                    workflow_run_id = new_id()
                item = f"conv-{made}"  # not the ids of the workflow phase in this store
                clock += 0.001
                batch.extend(_item_events(workflow_run_id, item, clock))
                if made % 97 == 1:  # the first too: a small --query-rows still has a sample
                    sample.append(item)
            store.write_batch(batch)
            have += len(batch)
        filled = time.perf_counter() - started
        bench._settle(store, url)
        total = bench._count_events(store, url)
        rng = random.Random(42)
        latencies = []
        for _ in range(queries):
            item = rng.choice(sample)
            t0 = time.perf_counter()
            found = store.conversation_events(item)
            latencies.append(time.perf_counter() - t0)
            assert len(found) == 10, (item, len(found))
    finally:
        store.close()
    latencies.sort()
    return {
        "database": store.description,
        "table_events": total,
        "fill_s": round(filled, 1),
        "queries": queries,
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
    }


def run(args: argparse.Namespace, folder: Path, bench: Any) -> dict[str, Any]:
    """The whole ``--workflow`` report; ``bench``: ``benchmarks/run.py`` (its helpers)."""
    report: dict[str, Any] = measure_workflow(args, folder, bench)
    stores = ["sqlite:conversations.db"]
    if args.database and args.database.startswith("postgres"):
        stores.append(args.database)
    report["conversation_query"] = []
    for url in stores:
        measured = measure_conversations(
            bench, url, folder, args.query_rows, args.conversation_queries
        )
        print(f"conversation query: {measured}", file=sys.stderr)
        report["conversation_query"].append(measured)
    return report

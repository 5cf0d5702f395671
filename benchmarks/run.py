"""Throughput and latency of actor-supervisor, next to the bare mechanism it wraps.

Starts its own supervisor in a temporary folder with a no-op actor, submits ``--runs`` runs from
``--clients`` concurrent client processes (each: submit, wait for the result, repeat), and
reports runs/s and submit->result latency. In the same invocation it measures the *ceiling*: the
bare mechanism with no ZeroMQ and no store, in as many parallel processes as there are workers
-- fork a child, pipe a JSON document in and out, wait (fork mode); spawn ``python noop.py``
the same way (exec mode). ``efficiency = runs_per_s / ceiling_runs_per_s`` holds on a noisy
machine because both are measured on it, minutes apart.

    python benchmarks/run.py --runs 5000 --workers 2 --mode fork
    python benchmarks/run.py --mode exec --runs 1000 --json
"""

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOOP_SCRIPT = """\
import json, sys
json.dump({"ok": True, "echo": json.load(sys.stdin)}, sys.stdout)
"""
INPUT = {"n": 1, "payload": "x" * 64}


# --- the ceiling: the bare mechanism --------------------------------------------------------


def _bare_fork_loop(count: int, results: Any) -> None:
    """Fork a child per run; it reads the JSON input from a pipe and writes JSON back."""
    data = json.dumps(INPUT).encode()
    started = time.perf_counter()
    for _ in range(count):
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(in_w)
            os.close(out_r)
            request = json.loads(os.read(in_r, 65536))
            os.write(out_w, json.dumps({"ok": True, "echo": request}).encode())
            os._exit(0)
        os.close(in_r)
        os.close(out_w)
        os.write(in_w, data)
        os.close(in_w)
        chunks = []
        while chunk := os.read(out_r, 65536):
            chunks.append(chunk)
        os.close(out_r)
        os.waitpid(pid, 0)
        json.loads(b"".join(chunks))
    results.put(time.perf_counter() - started)


def _bare_exec_loop(count: int, script: str, python: str, results: Any) -> None:
    """Spawn ``python script.py`` per run, JSON in and out (no -I: it drops the script dir)."""
    data = json.dumps(INPUT).encode()
    started = time.perf_counter()
    for _ in range(count):
        proc = subprocess.run([python, script], input=data, capture_output=True, check=True)
        json.loads(proc.stdout)
    results.put(time.perf_counter() - started)


def measure_ceiling(mode: str, parallel: int, runs: int, script: Path, python: str) -> float:
    """Runs per second of the bare loop in ``parallel`` processes (exec mode: on ``python``,
    the interpreter the supervisor itself chose for exec mode)."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    per_proc = max(1, runs // parallel)
    target: Any = _bare_fork_loop if mode == "fork" else _bare_exec_loop
    args: tuple[Any, ...] = (per_proc, results)
    if mode == "exec":
        args = (per_proc, str(script), python, results)
    started = time.perf_counter()
    procs = [ctx.Process(target=target, args=args) for _ in range(parallel)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    return per_proc * parallel / elapsed


# --- the supervisor ---------------------------------------------------------------------------


def _write_config(folder: Path, args: argparse.Namespace, port: int) -> Path:
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
control = "tcp://127.0.0.1:{port}"
database = "{args.database or "sqlite:state/bench.db"}"
log_level = "warning"
queue_size = 100000

[[actors]]
name = "noop"
script = "scripts/noop.py"
timeout_s = 30
"""
    )
    return config


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client_loop(endpoint: str, count: int, warmup: int, results: Any) -> None:
    from protocol.client import Client, RunOutcome

    latencies = []
    failures = 0
    with Client(endpoint, timeout_s=60) as client:
        for i in range(warmup + count):
            started = time.perf_counter()
            outcome = client.submit("noop", INPUT, wait=True)
            elapsed = time.perf_counter() - started
            assert isinstance(outcome, RunOutcome)
            if i >= warmup:
                latencies.append(elapsed)
                failures += not outcome.succeeded
    results.put((latencies, failures))


def _wait_ready(endpoint: str, workers: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    from protocol.client import Client, ClientError

    deadline = time.monotonic() + 60
    with Client(endpoint, timeout_s=1) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"supervisor exited with {proc.returncode} before it was ready")
            try:
                status = client.status()
            except ClientError:
                continue
            if sum(w["ready"] for w in status["workers"]) == workers:
                return status
            time.sleep(0.1)
    raise SystemExit("supervisor not ready within 60 s")


def measure_supervisor(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    port = _free_port()
    config = _write_config(folder, args, port)
    endpoint = f"tcp://127.0.0.1:{port}"
    log = open(folder / "supervisor.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        status = _wait_ready(endpoint, args.workers, proc)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        per_client = max(1, args.runs // args.clients)
        warmup = min(50, per_client // 10)
        clients = [
            ctx.Process(target=_client_loop, args=(endpoint, per_client, warmup, results))
            for _ in range(args.clients)
        ]
        started = time.perf_counter()
        for client in clients:
            client.start()
        gathered = [results.get(timeout=3600) for _ in clients]
        elapsed = time.perf_counter() - started
        for client in clients:
            client.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
    latencies = sorted(x for lats, _ in gathered for x in lats)
    total = (per_client + warmup) * args.clients
    return {
        "runs": total,
        "failures": sum(f for _, f in gathered),
        "elapsed_s": round(elapsed, 3),
        "runs_per_s": round(total / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3),
        "exec_python": status["supervisor"]["exec_python"],
    }


# --- main -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="runs to submit in all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1, help="runs in flight per worker")
    parser.add_argument("--clients", type=int, default=0, help="default: workers x concurrency x 2")
    parser.add_argument("--mode", choices=("fork", "exec"), default="fork")
    parser.add_argument("--database", help="store URL (default: SQLite in the temp folder)")
    parser.add_argument("--ceiling-runs", type=int, default=0, help="default: --runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, db)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.clients = args.clients or args.workers * args.concurrency * 2
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bench-"))
    try:
        measured = measure_supervisor(args, folder)
        ceiling = measure_ceiling(
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
        "database": args.database or "sqlite",
        **measured,
        "ceiling_runs_per_s": round(ceiling, 1),
        "efficiency": round(measured["runs_per_s"] / ceiling, 3),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            if key != "machine":
                print(f"{key:>20}  {value}")
        if args.keep:
            print(f"{'folder':>20}  {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

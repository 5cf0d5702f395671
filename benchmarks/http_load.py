"""Requests/s and latency of the HTTP surface with many actors configured.

    python benchmarks/http_load.py --actors 1000 --seconds 10 --threads 8

Starts a real supervisor with HTTP on, then for each of ``GET /health`` and
``GET /api/v1/actors`` runs ``--threads`` keep-alive clients for ``--seconds`` and reports
requests/s, p50 and p99; then times ``--scrapes`` sequential ``GET /metrics``. The API calls
carry the token the supervisor generates into ``state/http-token`` (the probes need none on
loopback); a request that does not answer 200 stops the benchmark.
"""

import argparse
import http.client
import json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import _free_port, _wait_ready, _write_config


def _hammer(
    port: int, path: str, seconds: float, threads: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            conn.request("GET", path, headers=headers or {})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"GET {path} answered {response.status}")
            mine.append(time.perf_counter() - started)
        conn.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actors", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-httpbench-"))
    http_port = _free_port()
    ns = argparse.Namespace(workers=args.workers, concurrency=1, mode="fork", database=None,
                            actors=args.actors - 1)  # fmt: skip
    config = _write_config(folder, ns, http_port)
    log = open(folder / "supervisor.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "start", "--config",
                             str(config)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    report: dict[str, object] = {"actors": args.actors, "threads": args.threads}
    try:
        _wait_ready(config, args.workers, proc)
        _hammer(http_port, "/health", 1.0, 2)  # warm up
        report["health"] = _hammer(http_port, "/health", args.seconds, args.threads)
        token = (config.parent / "state" / "http-token").read_text().strip()
        bearer = {"Authorization": f"Bearer {token}"}
        report["api_actors"] = _hammer(
            http_port, "/api/v1/actors", args.seconds, args.threads, bearer
        )
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        times = []
        for _ in range(args.scrapes):
            started = time.perf_counter()
            conn.request("GET", "/metrics")
            body = conn.getresponse().read()
            times.append(time.perf_counter() - started)
        times.sort()
        report["metrics_scrape"] = {
            "bytes": len(body),
            "p50_ms": round(statistics.median(times) * 1000, 2),
            "max_ms": round(times[-1] * 1000, 2),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

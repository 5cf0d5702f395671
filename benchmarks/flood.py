"""The supervisor's memory under the floods of issue 9, and how fast ``status`` answers meanwhile.

Starts a supervisor in a temporary folder (1 worker; actors ``echo``, ``slow`` and ``big`` (a
1 MB output)), runs one flood for ``--seconds``, and reports the supervisor's peak RSS (sampled
every 50 ms) and the latency of a ``status`` request sent every 100 ms by another client. The
budget (README, "Memory budget"): RSS <= 300 MB + ``queue_max_bytes``, ``status`` within 100 ms.

    python benchmarks/flood.py                       # every flood, a table
    python benchmarks/flood.py --flood big-requests --seconds 20 --json

Floods:
  big-requests    two clients send 10 MB submissions as fast as the socket takes them
  queued-inputs   150 submissions of 7 MB inputs to a slow actor
  big-outputs     two clients run an actor with a 1 MB output, over and over
  unread-replies  a client submits 150 runs with 1 MB outputs, waits for results, never reads
  refresh         20,000 refresh requests for one actor
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

from protocol.client import Client, ClientError
from protocol.messages import Refresh, Submit

FLOODS = ("big-requests", "queued-inputs", "big-outputs", "unread-replies", "refresh")
MB = 1024 * 1024

SCRIPTS = {
    "echo.py": "import json, sys\nprint(json.dumps({'n': len(sys.stdin.read())}))\n",
    "slow.py": "import json, sys, time\njson.load(sys.stdin)\ntime.sleep(60)\nprint('{}')\n",
    "big.py": "import json, sys\njson.load(sys.stdin)\nprint(json.dumps({'b': 'x' * 1_000_000}))\n",
}


@dataclass
class FloodResult:
    flood: str
    seconds: float
    rss_start_mb: float
    rss_peak_mb: float
    status_p50_ms: float
    status_max_ms: float
    status_failures: int
    queue_max_bytes: int


def write_folder(folder: Path, queue_max_bytes: int) -> Path:
    """A supervisor folder: scripts every user can read, and its ``supervisor.toml``."""
    folder.chmod(0o755)
    scripts = folder / "scripts"
    scripts.mkdir(exist_ok=True)
    scripts.chmod(0o755)
    actors = ""
    for name, body in SCRIPTS.items():
        (scripts / name).write_text(body)
        (scripts / name).chmod(0o644)
        actors += f'\n[[actors]]\nname = "{name[:-3]}"\nscript = "scripts/{name}"\n'
    config = folder / "supervisor.toml"
    config.write_text(
        textwrap.dedent(f"""\
            [supervisor]
            workers = 1
            control = "ipc://{folder}/control.sock"
            queue_max_bytes = {queue_max_bytes}
            shutdown_grace_s = 1
            kill_grace_s = 1
            limits = {{ output_kb = 2048 }}
        """)
        + actors
    )
    return config


def start(config: Path) -> subprocess.Popen[bytes]:
    with open(config.parent / "supervisor.log", "ab") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )


def wait_ready(endpoint: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"supervisor exited with {proc.returncode}")
        try:
            with Client(endpoint, timeout_s=2) as client:
                if all(w["ready"] for w in client.status()["workers"]):
                    return
        except ClientError:
            pass
        time.sleep(0.1)
    raise RuntimeError("supervisor not ready in time")


class Monitor:
    """Samples the supervisor's RSS and times ``status`` requests until stopped."""

    def __init__(self, pid: int, endpoint: str) -> None:
        self._proc = psutil.Process(pid)
        self._endpoint = endpoint
        self._stop = threading.Event()
        self.rss_start = self._proc.memory_info().rss
        self.rss_peak = self.rss_start
        self.latencies: list[float] = []
        self.failures = 0
        self._threads = [
            threading.Thread(target=self._sample, daemon=True),
            threading.Thread(target=self._status, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.rss_peak = max(self.rss_peak, self._proc.memory_info().rss)
            except psutil.Error:
                return

    def _status(self) -> None:
        with Client(self._endpoint, timeout_s=5) as client:
            while not self._stop.wait(0.1):
                started = time.monotonic()
                try:
                    client.status()
                except ClientError:
                    self.failures += 1
                    continue
                self.latencies.append((time.monotonic() - started) * 1000)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)


def _dealer(ctx: "zmq.Context[Any]", endpoint: str) -> "zmq.Socket[bytes]":
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def flood_big_requests(endpoint: str, seconds: float) -> None:
    body = orjson.dumps(Submit(id="big", actor="echo", input="x" * (10 * MB)))
    deadline = time.monotonic() + seconds

    def client() -> None:
        ctx: zmq.Context[Any] = zmq.Context()
        sock = _dealer(ctx, endpoint)
        try:
            while time.monotonic() < deadline:
                try:
                    sock.send(body, zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.01)
                while sock.poll(0):
                    sock.recv()  # replies are small; reading them keeps this client honest
        finally:
            sock.close()
            ctx.term()

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def flood_queued_inputs(endpoint: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with Client(endpoint, timeout_s=30) as client:
        for _ in range(150):
            if time.monotonic() > deadline:
                return
            try:
                client.submit("slow", "x" * (7 * MB))
            except ClientError as exc:
                if exc.code != "busy":
                    raise


def flood_big_outputs(endpoint: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds

    def client() -> None:
        with Client(endpoint, timeout_s=60) as c:
            while time.monotonic() < deadline:
                c.submit("big", {}, wait=True)

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def flood_unread_replies(endpoint: str, seconds: float) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, endpoint)
    sock.setsockopt(zmq.RCVHWM, 1)  # what a client that never reads looks like from afar
    sock.setsockopt(zmq.RCVBUF, 4096)
    try:
        for n in range(150):
            sock.send(orjson.dumps(Submit(id=f"u{n}", actor="big", input={}, wait=True)))
        time.sleep(seconds)  # the results pile up for a client that never reads
    finally:
        sock.close()
        ctx.term()


def flood_refresh(endpoint: str, seconds: float) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _dealer(ctx, endpoint)
    try:
        deadline = time.monotonic() + seconds
        for n in range(20_000):
            if time.monotonic() > deadline:
                break
            sock.send(orjson.dumps(Refresh(id=f"r{n}", actor="echo")))
            while sock.poll(0):
                sock.recv()
        while time.monotonic() < deadline and sock.poll(100):
            sock.recv()
    finally:
        sock.close()
        ctx.term()


RUNNERS: dict[str, Callable[[str, float], None]] = {
    "big-requests": flood_big_requests,
    "queued-inputs": flood_queued_inputs,
    "big-outputs": flood_big_outputs,
    "unread-replies": flood_unread_replies,
    "refresh": flood_refresh,
}


def measure(
    flood: str, pid: int, endpoint: str, seconds: float, queue_max_bytes: int
) -> FloodResult:
    """Run ``flood`` against a running supervisor while monitoring it."""
    monitor = Monitor(pid, endpoint)
    started = time.monotonic()
    try:
        RUNNERS[flood](endpoint, seconds)
    finally:
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # what the flood left behind, once it stopped
        monitor.stop()
    latencies = monitor.latencies or [float("nan")]
    return FloodResult(
        flood=flood,
        seconds=round(elapsed, 1),
        rss_start_mb=round(monitor.rss_start / MB, 1),
        rss_peak_mb=round(monitor.rss_peak / MB, 1),
        status_p50_ms=round(statistics.median(latencies), 1),
        status_max_ms=round(max(latencies), 1),
        status_failures=monitor.failures,
        queue_max_bytes=queue_max_bytes,
    )


def run_flood(flood: str, seconds: float, queue_max_bytes: int) -> FloodResult:
    """A fresh supervisor, one flood, then stop it."""
    folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-flood-"))
    config = write_folder(folder, queue_max_bytes)
    endpoint = f"ipc://{folder}/control.sock"
    proc = start(config)
    try:
        wait_ready(endpoint, proc)
        return measure(flood, proc.pid, endpoint, seconds, queue_max_bytes)
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", choices=(*FLOODS, "all"), default="all")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--queue-max-bytes", type=int, default=256 * MB)
    parser.add_argument("--json", action="store_true", help="one JSON object per flood")
    args = parser.parse_args(argv)
    floods = FLOODS if args.flood == "all" else (args.flood,)
    budget_mb = 300 + args.queue_max_bytes / MB
    for flood in floods:
        result = run_flood(flood, args.seconds, args.queue_max_bytes)
        if args.json:
            print(json.dumps({**asdict(result), "machine": os.uname().nodename}))
        else:
            verdict = (
                "ok" if result.rss_peak_mb <= budget_mb and result.status_max_ms <= 100 else "OVER"
            )
            print(
                f"{flood:15} rss {result.rss_start_mb:7.1f} -> peak {result.rss_peak_mb:7.1f} MB "
                f"(budget {budget_mb:.0f})  status p50 {result.status_p50_ms:6.1f} ms "
                f"max {result.status_max_ms:7.1f} ms  failures {result.status_failures}  {verdict}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

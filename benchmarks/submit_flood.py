"""``--flood N``: N submissions as fast as clients can send them (issue 13, item 6).

``--flood-clients`` processes each send their share of N ``submit`` requests (no wait) to a
fresh supervisor with a ``queue_size`` of ``--queue-size``, keeping up to ``WINDOW`` requests
unanswered, within the supervisor's per-client limit (``MAX_UNANSWERED``, 64: within it no reply
is lost; beyond, ``busy``). Every request gets one reply: accepted, or ``busy`` once the queue
is full. Meanwhile :class:`flood.Monitor` samples the supervisor's RSS every 50 ms and
times a ``status`` request every 100 ms. Reported: replies by kind (and requests left without
one, which should be none: ``replies_dropped``),
submissions/s, the peak RSS
(also the kernel's high-water mark, which no sampling can miss), and ``status`` latency p50,
p99 and max, with the count of answers slower than 100 ms.
"""

import argparse
import multiprocessing
import statistics
import threading
import time
from collections import Counter
from typing import Any

import zmq
from bench_supervisor import MB, BenchSupervisor, peak_rss_mb
from flood import Monitor
from progress import Progress

from protocol import decode
from protocol.client import Client
from protocol.codec import encode
from protocol.messages import Reply, Submit
from supervisor.control import MAX_UNANSWERED

# Unanswered requests per client, within the supervisor's limit: a status request waits behind
# up to clients x WINDOW submissions, so a larger window delays it rather than going faster.
WINDOW = min(48, MAX_UNANSWERED)
REPLY_TIMEOUT_S = 5.0  # no reply at all for this long: the rest are counted as lost
INPUT = {"n": 1, "payload": "x" * 64}
STATUS_BUDGET_MS = 100.0


def _client(endpoint: str, index: int, count: int, done: Any, results: Any) -> None:
    """Send ``count`` submissions pipelined, tally the replies; ``done[index]``: progress."""
    bodies = [encode(Submit(id=f"{index}-{n}", actor="noop", input=INPUT)) for n in range(count)]
    ctx: zmq.Context[Any] = zmq.Context()
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    tally: Counter[str] = Counter()
    sent = received = 0
    started = time.perf_counter()
    try:
        while received < count:
            while sent < count and sent - received < WINDOW:
                try:
                    sock.send(bodies[sent], zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
            if not sock.poll(int(REPLY_TIMEOUT_S * 1000), zmq.POLLIN):
                tally["no_reply"] += count - received
                break
            while sock.poll(0, zmq.POLLIN):
                reply = decode(sock.recv(), ("reply",))
                assert isinstance(reply, Reply)
                tally["accepted" if reply.ok else reply.error or "error"] += 1
                received += 1
            done[index] = received
    finally:
        sock.close()
        ctx.term()
    results.put((dict(tally), time.perf_counter() - started))


def measure_flood(args: argparse.Namespace) -> dict[str, Any]:
    total, clients = args.flood, args.flood_clients
    with BenchSupervisor(
        workers=args.workers, concurrency=args.concurrency, mode=args.mode,
        database=args.database, actors='[[actors]]\nname = "noop"\nscript = "scripts/noop.py"\n',
        settings=f"queue_size = {args.queue_size}", profile=args.profile, keep=args.keep,
    ) as sup:  # fmt: skip
        sup.start()
        sup.wait_ready(timeout_s=120)
        sup.wait_workers(timeout_s=120)
        proc = sup.process()
        runs_before = sup.query("SELECT count(*) FROM runs")[0][0]  # PostgreSQL: earlier runs
        ctx = multiprocessing.get_context("fork")
        done = ctx.Array("q", clients, lock=False)
        results = ctx.Queue()
        shares = [total // clients + (i < total % clients) for i in range(clients)]
        procs = [
            ctx.Process(target=_client, args=(sup.endpoint, i, share, done, results))
            for i, share in enumerate(shares)
        ]
        monitor = Monitor(proc.pid, sup.endpoint)
        progress = Progress(total, what="submissions", unit="/s")
        stop = threading.Event()
        watcher = threading.Thread(target=_follow, args=(progress, done, stop), daemon=True)
        started = time.perf_counter()
        for p in procs:
            p.start()
        watcher.start()
        try:
            gathered = [results.get(timeout=REPLY_TIMEOUT_S * 10) for _ in procs]
        finally:
            elapsed = time.perf_counter() - started
            stop.set()
            watcher.join()
            progress.close()
            deadline = time.monotonic() + 2  # a flood shorter than the sampling period:
            while not monitor.latencies and time.monotonic() < deadline:  # one sample at least
                time.sleep(0.02)
            monitor.stop()
            for p in procs:
                p.join(10)
        queued = sup.query("SELECT count(*) FROM runs")[0][0] - runs_before
        peak_hwm = peak_rss_mb(proc)
        with Client(sup.endpoint, timeout_s=30) as client:
            counters = client.status()["counters"]
    tally: Counter[str] = Counter()
    for counts, _ in gathered:
        tally.update(counts)
    latencies = sorted(monitor.latencies) or [float("nan")]
    return {
        "submissions": total,
        "clients": clients,
        "queue_size": args.queue_size,
        "accepted": tally.pop("accepted", 0),
        "busy": tally.pop("busy", 0),
        "no_reply": tally.pop("no_reply", 0),
        **({"other_replies": dict(tally)} if tally else {}),
        # the supervisor's own counts: a reply it could not queue for its client is dropped
        "busy_rejections": counters.get("busy_rejections"),
        "replies_dropped": counters.get("replies_dropped"),
        "runs_recorded": queued,
        "elapsed_s": round(elapsed, 2),
        "submissions_per_s": round(total / elapsed),
        "rss_start_mb": round(monitor.rss_start / MB, 1),
        "rss_peak_mb": max(round(monitor.rss_peak / MB, 1), peak_hwm),
        "status_requests": len(monitor.latencies),
        "status_failures": monitor.failures,
        "status_p50_ms": round(statistics.median(latencies), 2),
        "status_p99_ms": round(latencies[max(0, -(-len(latencies) * 99 // 100) - 1)], 2),
        "status_max_ms": round(latencies[-1], 2),
        "status_over_100ms": sum(x > STATUS_BUDGET_MS for x in latencies),
    }


def _follow(progress: Progress, done: Any, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        progress.update(sum(done))
    progress.update(sum(done))

"""Sweeps: ``--workers 1,2,4`` or ``--clients 1,2,4,8`` measure throughput and latency once per
value (``run.py``'s single-configuration :func:`run.measure_supervisor`, each on a fresh
supervisor) and, with ``--plot FILE.png``, draw them against the swept variable. The bare-
mechanism ceiling is not measured per point (it would double the time); run one configuration
without a sweep for it."""

import argparse
import copy
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_supervisor import BenchError
from modes import print_report
from progress import join_watchers

LABELS = {"workers": "workers", "clients": "concurrent clients"}


def run_sweep(args: argparse.Namespace, swept: str) -> int:
    from run import _machine, measure_supervisor

    plot = _pyplot() if args.plot else None  # fail before measuring, not after
    points: list[dict[str, Any]] = []
    for value in getattr(args, swept):
        one = copy.copy(args)
        setattr(one, swept, value)
        one.clients = one.clients or one.workers * one.concurrency * 2
        print(f"{swept} = {value}: {one.workers} workers, {one.clients} clients", file=sys.stderr)
        folder = Path(tempfile.mkdtemp(prefix="actor-supervisor-bench-"))
        try:
            measured = measure_supervisor(one, folder)
            join_watchers()
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        points.append({swept: value, "workers": one.workers, "clients": one.clients,
                       **{k: v for k, v in measured.items() if k != "exec_python"}})  # fmt: skip
    if swept == "clients":
        fixed = f"{args.workers} workers"
    else:
        fixed = f"{args.clients} clients" if args.clients else "clients = 2 x workers"
    report = {"mode": args.mode, "swept": swept, "fixed": fixed, "concurrency": args.concurrency,
              "runs": args.runs, "points": points, "machine": _machine()}  # fmt: skip
    if plot is not None:
        draw(plot, report, Path(args.plot))
        print(f"plot written to {args.plot}", file=sys.stderr)
    if args.json:
        print_report(report, as_json=True)
    else:
        other = "clients" if swept == "workers" else "workers"
        keys = (swept, other, "runs", "runs_per_s", "p50_ms", "p99_ms", "failures")
        cpu = all("cpu_ms_per_run" in p for p in points)  # all processes' CPU ms per run
        print("  ".join(f"{k:>10}" for k in keys) + ("  cpu_ms/run" if cpu else ""))
        for point in points:
            line = "  ".join(f"{point.get(k)!s:>10}" for k in keys)
            print(line + (f"  {point['cpu_ms_per_run'].get('total')!s:>10}" if cpu else ""))
    return 0


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise BenchError(
            "--plot needs matplotlib, an optional extra: pip install -e '.[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def draw(plt: Any, report: dict[str, Any], path: Path) -> None:
    """Two panels side by side: runs/s, and submit-to-result latency p50 and p99 (ms)."""
    swept = report["swept"]
    points = report["points"]
    xs = [p[swept] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    left.plot(xs, [p["runs_per_s"] for p in points], marker="o", color="tab:blue")
    left.set_title("Throughput")
    left.set_ylabel("runs per second")
    right.plot(xs, [p["p50_ms"] for p in points], marker="o", label="p50", color="tab:green")
    right.plot(xs, [p["p99_ms"] for p in points], marker="s", label="p99", color="tab:red")
    right.set_title("Submit-to-result latency")
    right.set_ylabel("milliseconds")
    right.legend()
    for ax in (left, right):
        ax.set_xlabel(LABELS[swept])
        ax.set_xticks(xs)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    machine = report["machine"]
    fig.suptitle(
        f"actor-supervisor, {report['mode']} mode, {report['runs']} runs per point, "
        f"concurrency {report['concurrency']}, {report['fixed']}; {machine['cpus']} CPUs, "
        f"Python {machine['python']}"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The benchmark's modes beside throughput: ``--actors``, ``--flood``, sweeps with ``--plot``,
and ``--profile`` (issue 13, items 1, 5, 6 and 7). ``run.py`` adds these flags through
:func:`add_arguments` and hands over to :func:`run` before its own measurement."""

import argparse
import json
import sys
from typing import Any

MODE_ACTORS = "actors"
MODE_FLOOD = "flood"


def counts(text: str) -> int | list[int]:
    """An argparse type: ``4`` is one value, ``1,2,4`` a sweep (a list of at least two)."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number or a comma-separated list of them, got {text!r}"
        ) from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {text!r}")
    return values[0] if len(values) == 1 else values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scale, floods, sweeps and profiles (issue 13)")
    group.add_argument(
        "--actors", type=int, metavar="N", dest="scale_actors",
        help="scheduling at scale: the supervisor idling with N scheduled actors (start-up, "
             "RSS, idle CPU), then min(N, --burst) actors due at once (fire lateness)",
    )  # fmt: skip
    group.add_argument("--burst", type=int, default=1000, help="--actors: burst size (1000)")
    group.add_argument(
        "--idle-seconds", type=float, default=20.0, help="--actors: idle CPU window (20 s)"
    )
    group.add_argument(
        "--fire-delay", type=float, default=15.0,
        help="--actors: seconds from launch to the burst's due time; start-up and the "
             "workers must fit in it (15)",
    )  # fmt: skip
    group.add_argument(
        "--burst-timeout", type=float, default=900.0, help="--actors: burst deadline (900 s)"
    )
    group.add_argument(
        "--flood", type=int, nargs="?", const=50_000, metavar="N",
        help="N submissions (default 50,000) as fast as clients can send them: busy replies, "
             "peak RSS, status latency",
    )  # fmt: skip
    group.add_argument("--flood-clients", type=int, default=4, help="--flood: client processes")
    group.add_argument(
        "--queue-size", type=int, default=10_000, help="--flood: the supervisor's queue_size"
    )
    group.add_argument(
        "--plot", metavar="FILE.png",
        help="draw throughput and latency against the swept --workers or --clients "
             "(needs the 'plot' extra: pip install -e '.[plot]')",
    )  # fmt: skip
    group.add_argument(
        "--profile", metavar="FILE",
        help="profile the benchmark's supervisor into FILE: cProfile of its loop's CPU (read "
             "it with python -m pstats FILE), or py-spy for FILE.svg (a flame graph) or FILE.json "
             "(speedscope), every thread (pip install -e '.[profile]')",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int | None:
    """Run the mode ``args`` asks for and print its report; None: the plain throughput
    measurement, which ``run.py`` does itself."""
    from bench_supervisor import BenchError

    swept = [name for name in ("workers", "clients") if isinstance(getattr(args, name), list)]
    try:
        if args.scale_actors is not None or args.flood is not None:
            if swept:
                raise BenchError("--actors and --flood take one --workers and --clients value")
            return _single(args)
        if len(swept) > 1:
            raise BenchError("sweep one of --workers and --clients at a time")
        if swept and args.profile:
            raise BenchError("--profile profiles one supervisor: not with a sweep")
        if swept:
            from sweep import run_sweep

            return run_sweep(args, swept[0])
        if args.plot:
            raise BenchError("--plot draws a sweep: give --workers 1,2,4 or --clients 1,2,4,8")
    except BenchError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    return None


def _single(args: argparse.Namespace) -> int:
    from run import _machine

    if args.scale_actors is not None:
        from scale import measure_actors

        report: dict[str, Any] = {"mode": MODE_ACTORS, **_config(args), **measure_actors(args)}
    else:
        from submit_flood import measure_flood

        report = {"mode": MODE_FLOOD, **_config(args), **measure_flood(args)}
    report["machine"] = _machine()
    print_report(report, as_json=args.json)
    return 0


def _config(args: argparse.Namespace) -> dict[str, Any]:
    from supervisor.store.urls import redact_url

    return {
        "run_mode": args.mode,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "database": redact_url(args.database) if args.database else "sqlite",
    }


def print_report(report: dict[str, Any], *, as_json: bool) -> None:
    """One JSON object, or a table: nested sections as ``section.key``."""
    if as_json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        if key == "machine":
            continue
        if isinstance(value, dict):
            for inner, figure in value.items():
                print(f"{key + '.' + inner:>36}  {figure}")
        else:
            print(f"{key:>36}  {value}")

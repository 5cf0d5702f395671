"""Scripts that leave a trace of every attempt, and the tools to read the traces back.

A traced script runs as the sandbox user, so it writes into a world-writable folder (its actor
gets ``env = { TRACE_DIR = ... }``). Each attempt:

- takes an exclusive ``flock`` on ``<run_id>.lock`` without blocking. The kernel drops the lock
  when the process dies, however it dies, so a lock already held means another attempt of the
  same run is alive at this moment: the attempt records ``overlap: true``;
- counts itself in ``<run_id>.count`` (the per-run counter: how many times the run started);
- writes ``<run_id>.<attempt>.<pid>.start`` and, when it gets to :func:`finish`, ``...end``,
  each holding the wall-clock time, so a killed attempt is one with a start and no end.

``fcntl`` is not in the sandbox's preload list, but the launcher imports it with ``subprocess``,
so a fork-mode child finds it in ``sys.modules`` (and nothing else may be imported: see
``workers.preload.DEFAULT_PRELOAD``).
"""

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson

PROLOGUE = """\
import fcntl, json, os, sys, time

os.umask(0)  # runs get umask 077 and, as root, a uid each: the attempts of one run share files
TRACE = os.environ["TRACE_DIR"]
RUN_ID = os.environ["ACTOR_RUN_ID"]
ATTEMPT = int(os.environ["ACTOR_ATTEMPT"])
_lock = os.open(os.path.join(TRACE, RUN_ID + ".lock"), os.O_CREAT | os.O_RDWR, 0o666)
try:
    fcntl.flock(_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _overlap = False
except BlockingIOError:
    _overlap = True
_count_path = os.path.join(TRACE, RUN_ID + ".count")
COUNT = int(open(_count_path).read()) + 1 if os.path.exists(_count_path) else 1
with open(_count_path, "w") as _out:
    _out.write(str(COUNT))


def _note(kind):
    # written under another name, then renamed: a reader never sees it empty
    name = "%s.%d.%d.%s" % (RUN_ID, ATTEMPT, os.getpid(), kind)
    with open(os.path.join(TRACE, name + ".tmp"), "w") as out:
        out.write(json.dumps({"t": time.time(), "overlap": _overlap}))
    os.replace(os.path.join(TRACE, name + ".tmp"), os.path.join(TRACE, name))


def mode(default="ok"):
    try:
        return open(os.path.join(TRACE, "mode")).read().strip()
    except FileNotFoundError:
        return default


def finish(code=0, output=None):
    _note("end")
    print(json.dumps({"count": COUNT, "attempt": ATTEMPT} if output is None else output))
    sys.stdout.flush()
    os._exit(code)


_note("start")
"""


def traced(body: str) -> str:
    """A script: the tracing prologue, then ``body`` (top-level code that calls ``finish``)."""
    return PROLOGUE + "\n" + body


def trace_dir(folder: Path) -> Path:
    """The world-writable folder traced scripts write into."""
    path = folder / "trace"
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return path


def set_mode(trace: Path, mode: str) -> None:
    """What :func:`mode` returns in the scripts from now on."""
    target = trace / "mode"
    scratch = trace / "mode.tmp"
    scratch.write_text(mode)
    scratch.chmod(0o644)
    scratch.replace(target)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One process that ran an attempt of a run, as its trace files tell it."""

    run_id: str
    attempt: int
    pid: int
    start: float
    end: float | None  # None: the process was killed before it finished
    overlap: bool  # another process of the same run held the lock when this one started


def read_traces(trace: Path) -> dict[str, list[Attempt]]:
    """Every traced process, grouped by run id and sorted by start time."""
    notes: dict[tuple[str, int, int], dict[str, dict[str, float | bool]]] = defaultdict(dict)
    for path in trace.iterdir():
        parts = path.name.split(".")
        if len(parts) != 4 or parts[3] not in ("start", "end"):
            continue
        notes[(parts[0], int(parts[1]), int(parts[2]))][parts[3]] = orjson.loads(path.read_bytes())
    runs: dict[str, list[Attempt]] = defaultdict(list)
    for (run_id, attempt, pid), kinds in notes.items():
        start = kinds["start"]
        end = kinds.get("end")
        runs[run_id].append(
            Attempt(
                run_id=run_id,
                attempt=attempt,
                pid=pid,
                start=float(start["t"]),
                end=float(end["t"]) if end else None,
                overlap=bool(start["overlap"]),
            )
        )
    return {run_id: sorted(found, key=lambda a: a.start) for run_id, found in runs.items()}


def count(trace: Path, run_id: str) -> int:
    """How many times the run's script started (its per-run counter file)."""
    path = trace / f"{run_id}.count"
    return int(path.read_text()) if path.exists() else 0


def assert_never_overlapped(runs: dict[str, list[Attempt]]) -> None:
    """No process of a run started while another process of the same run was alive."""
    flagged = [a for found in runs.values() for a in found if a.overlap]
    assert not flagged, f"attempts started while another of the same run was alive: {flagged}"
    for run_id, found in runs.items():
        for earlier, later in itertools.pairwise(found):
            if earlier.end is not None:
                assert later.start >= earlier.end, f"run {run_id}: {earlier} overlaps {later}"

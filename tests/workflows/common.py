"""Step scripts for the workflow tests, and the tools to read what they left behind.

Every step is the same script, told its step name by ``STEP``. It takes an exclusive ``flock``
on ``<item>.<step>.lock`` (a lock already held: another copy of that step of that item is alive
right now, recorded as ``overlap``), writes ``<item>.<step>.<pid>.start``, and ``...end`` when
it succeeds; it appends its step to the item's ``trail`` (so the output shows what ran before),
and fails with exit 1 when the item says ``"fail": "<step>"``. An item with ``"gate": PATH``
holds each step (after ``start``) until that file exists.
"""

import itertools
import textwrap
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from supervisor.store import open_store
from supervisor.store.base import Store
from tests import pg
from tests.helpers import shared_folder, write_script

STEP_SCRIPT = """\
    import fcntl, json, os, sys, time
    os.umask(0)
    TRACE, STEP = os.environ["TRACE_DIR"], os.environ["STEP"]
    ATTEMPT = int(os.environ["ACTOR_ATTEMPT"])
    doc = json.load(sys.stdin)
    key = "%s.%s" % (doc["id"], STEP)
    lock = os.open(os.path.join(TRACE, key + ".lock"), os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        overlap = False
    except BlockingIOError:
        overlap = True
    def note(kind):
        with open(os.path.join(TRACE, "%s.%d.%s" % (key, os.getpid(), kind)), "w") as out:
            out.write(json.dumps({"t": time.time(), "overlap": overlap, "attempt": ATTEMPT,
                                  "run": os.environ["ACTOR_RUN_ID"]}))
    note("start")
    while doc.get("gate") and not os.path.exists(doc["gate"]):  # held until the marker exists
        time.sleep(0.02)
    time.sleep(float(doc.get("sleep", 0.05)))
    if doc.get("fail") == STEP:
        sys.exit(1)
    doc.setdefault("trail", []).append(STEP)
    note("end")
    print(json.dumps(doc))
"""


def step_actors(folder: Path, steps: str, settings: str = "") -> tuple[Path, str]:
    """The trace folder and the ``[[actors]]`` of ``steps`` (letters: one actor each)."""
    trace = shared_folder(folder, "trace")
    write_script(folder / "scripts", "step.py", STEP_SCRIPT)
    tables = "".join(
        f'[[actors]]\nname = "{s}"\nscript = "scripts/step.py"\n'
        f'env = {{ TRACE_DIR = "{trace}", STEP = "{s}" }}\nretry_backoff_s = 0.1\n'
        f"{textwrap.dedent(settings)}\n"
        for s in steps
    )
    return trace, tables


@dataclass(frozen=True, slots=True)
class Span:
    item: str
    step: str
    pid: int
    start: float
    end: float | None  # None: failed or killed
    overlap: bool
    run_id: str
    attempt: int


def spans(trace: Path) -> list[Span]:
    notes: dict[tuple[str, str, int], dict[str, dict[str, float | bool]]] = defaultdict(dict)
    for path in trace.iterdir():
        parts = path.name.split(".")
        data = path.read_bytes()
        if len(parts) == 4 and parts[3] in ("start", "end") and data:  # empty: killed writing
            notes[(parts[0], parts[1], int(parts[2]))][parts[3]] = orjson.loads(data)
    found = [
        Span(item, step, pid, float(n["start"]["t"]),
             float(n["end"]["t"]) if "end" in n else None, bool(n["start"]["overlap"]),
             str(n["start"]["run"]), int(n["start"]["attempt"]))
        for (item, step, pid), n in notes.items()
        if "start" in n
    ]  # fmt: skip
    return sorted(found, key=lambda s: s.start)


def assert_no_copies_at_once(found: list[Span]) -> None:
    assert not [s for s in found if s.overlap], "a step of an item ran twice at once"
    by_key: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for span in found:
        by_key[(span.item, span.step)].append(span)
    for key, each in by_key.items():
        for earlier, later in itertools.pairwise(each):
            if earlier.end is not None:
                assert later.start >= earlier.end, f"{key}: {earlier} overlaps {later}"


def finished_attempts(found: list[Span]) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """Per (item, step): the (run id, attempt) of each process that ran the script to its end."""
    ends: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for span in found:
        if span.end is not None:
            ends[(span.item, span.step)].append((span.run_id, span.attempt))
    return dict(ends)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield "sqlite:state/actor-supervisor.db"
        return
    with pg.fresh_database() as name:
        yield pg.database_url(name)


def opened(folder: Path, database: str) -> Store:
    return open_store(database, base_dir=folder)

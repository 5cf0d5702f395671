"""What the launcher imports before it forks its forker, so that fork-mode scripts start warm.

Every fork-mode run is a fork of the forker, and the forker of the launcher: a module imported
here is in ``sys.modules`` of every run's child, and ``import logging`` in a script costs a
dictionary lookup instead of about ten milliseconds of reading and executing the module (and
``import pandas`` a lookup instead of half a second). The price is paid by every run, used or
not: a bigger image to fork and to tear down (about 0.3 ms a run for the default list on a
small VM: ``benchmarks/run.py --preload json`` next to the default shows it). Hence the
``preload`` setting: the default below, or what the operator's scripts really import.

Kept apart from :mod:`workers.sandbox` so that the supervisor's settings can name the default
without importing the sandbox.
"""

import importlib

from workers.atfork import recording_hooks, thread_count

DEFAULT_PRELOAD: tuple[str, ...] = (
    "argparse", "base64", "collections", "csv", "dataclasses", "datetime", "decimal", "enum",
    "functools", "hashlib", "io", "itertools", "json", "logging", "math", "pathlib", "random", "re",
    "shutil", "statistics", "string", "subprocess", "tempfile", "textwrap", "time", "traceback",
    "typing", "urllib.parse", "uuid", "zlib",
)  # fmt: skip


def preload(modules: tuple[str, ...]) -> list[str]:
    """Import ``modules``; return a ``"name: problem"`` line for each that failed to import or
    started a thread (the launcher forks its forker next, and only the forking thread goes on
    in a fork: whatever such a thread was doing, or holding, stops there for every run)."""
    problems: list[str] = []
    with recording_hooks():  # the runs' children call them: see workers.atfork
        for name in modules:
            _load(name, problems)
    return problems


def _load(name: str, problems: list[str]) -> None:
    threads = thread_count()
    try:
        importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # a module's own sys.exit() must not end us
        problems.append(f"{name}: {type(exc).__name__}: {exc}")
        return
    if (started := thread_count() - threads) > 0:
        problems.append(
            f"{name}: its import started {started} thread(s), which fork-mode runs do not "
            "get (a lock one of them held stays held in every run): take it out of preload"
        )

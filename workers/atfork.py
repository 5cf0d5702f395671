"""Forking run children without Python's at-fork hooks, and owing each run only what it needs.

``os.fork()`` runs every hook registered with ``os.register_at_fork`` in the child: threading's
and logging's re-create their locks and thread bookkeeping (in case another thread held them at
the fork), ``random`` reseeds. In a fresh child those few calls touch objects all over the
inherited heap, and every page they touch is a copy-on-write fault: measured here, about 55
faults and 0.3 ms of a run child's 2.4 ms of CPU (``benchmarks/run.py``, ``cpu ms/run
run_children``).

The forker is single-threaded (a fork of the launcher, and it starts no thread), so no other
thread can hold a lock when it forks and the lock and thread hooks have nothing to repair. It
forks spares with :func:`fork_without_hooks`, and a spare that becomes a fork-mode run calls
:func:`catch_up_in_child` before the script: ``random`` reseeded (two runs must not share a
sequence), then every hook a ``preload`` module registered (:func:`recording_hooks`), except
the lock re-creations. An exec-mode run or a command actor execs a fresh program and owes
nothing.
"""

import ctypes
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# PyDLL: the GIL stays held across fork(2), so the child's interpreter state is the parent's
# exactly; a plain CDLL would release it around the call.
_fork = ctypes.PyDLL(None, use_errno=True).fork
_fork.restype = ctypes.c_int
_fork.argtypes = ()

# Hooks that only re-create locks or thread bookkeeping: nothing to do after a single-threaded
# fork. By (module, qualified name); a lock's own ``_at_fork_reinit`` (concurrent.futures) too.
_LOCK_HOOKS = frozenset({
    ("logging", "_after_at_fork_child_reinit_locks"),
    ("threading", "_after_fork"),
})  # fmt: skip
_preloaded: list[Callable[[], object]] = []  # after_in_child hooks preload modules registered


def fork_without_hooks() -> int:
    """``os.fork()`` without at-fork hooks; only for a process with one thread (see above).

    :raises OSError: as ``os.fork`` would (EAGAIN, ENOMEM).
    """
    pid: int = _fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def thread_count() -> int:
    """This process's threads, Python's or not (``/proc``: a C library's count too)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


@contextmanager
def recording_hooks() -> Iterator[None]:
    """Keep the ``after_in_child`` hooks registered meanwhile (the preload), for the runs."""
    register = os.register_at_fork

    def recording(**hooks: Callable[[], object]) -> None:
        register(**hooks)
        child = hooks.get("after_in_child")
        if child is not None and not _repairs_locks(child):
            _preloaded.append(child)

    setattr(os, "register_at_fork", recording)  # noqa: B010  # mypy: a module attribute
    try:
        yield
    finally:
        setattr(os, "register_at_fork", register)  # noqa: B010


def catch_up_in_child() -> None:
    """What ``os.fork()`` would have done for a fork-mode run: a fresh ``random`` sequence and
    the preload modules' own hooks. A hook that raises is reported on stderr, as by
    ``os.fork()``, and the run goes on."""
    rng = sys.modules.get("random")
    if rng is not None:
        rng._inst.seed()
    for hook in _preloaded:
        try:
            hook()
        except Exception:  # os.fork() reports and goes on, so do we
            print(f"Exception ignored in after-fork hook {hook!r}:", file=sys.stderr)
            traceback.print_exc()


def _repairs_locks(hook: Callable[[], object]) -> bool:
    if getattr(hook, "__name__", "") == "_at_fork_reinit":
        return True  # a lock's own method: concurrent.futures' shutdown lock
    if getattr(hook, "__name__", "") == "seed" and getattr(hook, "__module__", "") == "random":
        return True  # not a lock, but catch_up_in_child reseeds random itself
    return (getattr(hook, "__module__", None), getattr(hook, "__qualname__", None)) in _LOCK_HOOKS

"""Confine a program like a run, then become it: the entry point of ``[[alerts]]`` commands.

The supervisor has threads, so it cannot set a child up between fork and exec (Popen's
``preexec_fn`` may deadlock). It starts this module instead, with its own interpreter and still
as itself, in a new session (``start_new_session``); here, single-threaded, the sandbox's own
steps apply -- umask 077, no new privileges, the capability bounding set emptied, the rlimits,
(root) an IPC namespace of its own, the switch to the user (killing first whatever an earlier
command of an own uid left) -- and then the program is exec'd. Started as::

    python -I -c 'from workers.confine import main; main()' SPEC -- PROGRAM ARG...

SPEC is a JSON object: ``uid`` (an own uid, = gid) or ``run_as`` ([uid, gid]) or neither (stay
as is), and ``limits`` (``cpu_s``, ``memory_mb``, ``nofile``, ``nproc``, ``fsize_mb``; null
leaves one unset). A failure before the exec is one line on stderr and exit status
:data:`~workers.sandbox.EXIT_SANDBOX`.
"""

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from workers.sandbox import EXIT_SANDBOX, Order, Sandbox, SandboxConfig

LIMIT_KEYS = ("cpu_s", "memory_mb", "nofile", "nproc", "fsize_mb")


def command(
    python: str,
    argv: Sequence[str],
    *,
    uid: int | None,
    run_as: tuple[int, int] | None,
    limits: Mapping[str, int | None],
) -> list[str]:
    """The argv that runs ``argv`` confined (for the parent, which never imports more)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = {"uid": uid, "run_as": run_as, "limits": {k: limits.get(k) for k in LIMIT_KEYS}}
    entry = f"import sys; sys.path.insert(0, {root!r}); from workers.confine import main; main()"
    # -I: this interpreter runs as root, so no PYTHON* variable (PYTHONPATH ahead of the
    # standard library) and no user or working-folder site may choose what it imports.
    return [python, "-I", "-c", entry, json.dumps(spec), "--", *argv]


def main(args: Sequence[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if args is None else args
    step = "arguments"
    try:
        if len(args) < 3 or args[1] != "--":
            raise ValueError("usage: SPEC -- PROGRAM [ARG...]")
        spec: dict[str, Any] = json.loads(args[0])
        argv = list(args[2:])
        uid: int | None = spec.get("uid")
        run_as = spec.get("run_as")
        step = "sandbox"
        ids = (int(run_as[0]), int(run_as[1])) if run_as else None
        sandbox = Sandbox(SandboxConfig(worker_id="alerts", env_allow=(), run_as=ids), {})
        sandbox.harden()
        step = "limits"
        order = _order(argv, uid, spec.get("limits") or {})
        sandbox._apply_limits(order)
        step = "namespaces"
        sandbox._unshare(order, mounts=False)  # root: System V IPC of its own, as a run's
        step = "user"
        sandbox._become_user(uid)
        step = "cwd"
        os.chdir("/")
        step = "program"
        os.execvpe(argv[0], argv, os.environ)
    except BaseException as exc:
        print(f"actor-supervisor: confining {args[2:3]}: {step}: {exc}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(EXIT_SANDBOX)


def _order(argv: list[str], uid: int | None, limits: Mapping[str, int | None]) -> Order:
    """The fields of a run :meth:`Sandbox._apply_limits` reads; the rest is inert. (The
    sandbox's own methods, on an Order, rather than copies of them: one confinement to keep.)"""
    return Order(
        run_id="", attempt=0, actor="", script=argv[0], cwd="/", mode="exec", input_json="",
        env={}, network="host", uid=uid, tmpdir="/", modules=(), argv=tuple(argv), tmp_mb=None,
        cpu_s=limits.get("cpu_s"), memory_mb=limits.get("memory_mb"),
        nofile=limits.get("nofile"), nproc=limits.get("nproc"), fsize_mb=limits.get("fsize_mb"),
    )  # fmt: skip

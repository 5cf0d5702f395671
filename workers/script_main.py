"""How a run's script becomes ``__main__``, alike in both modes, as ``python script.py`` would.

Exec mode execs a fresh interpreter on :data:`BOOTSTRAP`; fork mode calls :func:`run_main` in
the forked child. Both set argv and sys.path[0] to the run's folder, start tracebacks at the
script and give the exit status ``sys.exit`` would. :mod:`workers.sandbox` calls them last,
after the child is isolated.
"""

import atexit
import contextlib
import importlib.util
import sys
import threading
import types

# Exec mode runs the script through this instead of ``python script.py`` so that both modes
# behave alike: sys.path[0] is Run.cwd (not the script's folder, they differ for code
# materialized from the database) and tracebacks start at the script. The child compiles the
# script before exec, where compile() is warm, and passes the marshalled code on fd 5 when the
# interpreter's bytecode magic matches ours: a fresh interpreter's first compile() builds the
# AST types, over a millisecond. Otherwise (another Python version, or a SyntaxError to report
# the usual way) it compiles the source itself.
BOOTSTRAP = """\
def _boot():
    import marshal, os, sys
    path, home, magic = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.argv[:] = [path]
    sys.path[0] = home
    g = sys.modules["__main__"].__dict__
    del g["_boot"]
    g["__file__"] = path
    g["__cached__"] = None
    code = None
    ours = getattr(sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", b"")
    try:
        size = os.fstat(5).st_size
        if size and magic == ours.hex():
            code = marshal.loads(os.pread(5, size, 0))
        os.close(5)
    except (OSError, ValueError, EOFError, TypeError):
        code = None
    try:
        if code is None:
            with open(path, "rb") as f:
                code = compile(f.read(), path, "exec", dont_inherit=True)
        exec(code, g)
    except SystemExit:
        raise
    except BaseException as exc:
        exc.__traceback__ = exc.__traceback__.tb_next
        sys.excepthook(type(exc), exc, exc.__traceback__)
        raise SystemExit(1) from None
_boot()
"""
MAGIC = importlib.util.MAGIC_NUMBER.hex()


def run_main(path: str, home: str, source: bytes) -> int:
    """Run a script as ``__main__`` in this (forked) interpreter; return its exit status.

    The fork-mode twin of :data:`BOOTSTRAP`, mirroring what ``python script.py`` does: argv,
    sys.path[0], a fresh ``__main__``, SystemExit codes, tracebacks for uncaught exceptions,
    then non-daemon threads and atexit callbacks before the final flush. The standard streams
    were made by :meth:`Sandbox.adopt_process` and are empty: the launcher never writes to them.
    """
    sys.argv = [path]
    if sys.path:
        sys.path[0] = home
    else:
        sys.path.append(home)
    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__dict__["__cached__"] = None
    sys.modules["__main__"] = main
    atexit._clear()  # the launcher's callbacks are not the script's
    try:
        exec(compile(source, path, "exec", dont_inherit=True), main.__dict__)
        code = 0
    except SystemExit as exc:
        code = _exit_status(exc)
    except BaseException as exc:
        tb = exc.__traceback__
        exc.__traceback__ = tb.tb_next if tb is not None else None  # start at the script
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    return _finish(code)


def _thread_exit_hooks() -> bool:
    """Whether anything (concurrent.futures) registered a hook for interpreter shutdown."""
    return bool(getattr(threading, "_threading_atexits", True))


def _exit_status(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give: None is 0, ints wrap, anything else prints."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """Interpreter shutdown in miniature: threads, atexit, flush (exit 120 if stdout is lost)."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None and (threading.active_count() > 1 or _thread_exit_hooks()):
        with contextlib.suppress(BaseException):
            shutdown()  # joins non-daemon threads and runs concurrent.futures' exit hooks
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            if stream is sys.stdout and code == 0:
                code = 120
    return code

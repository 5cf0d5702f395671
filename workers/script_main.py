"""How a run's script becomes ``__main__``, alike in both modes, as ``python script.py`` would.

Exec mode execs a fresh interpreter on :data:`BOOTSTRAP`; fork mode calls :func:`run_main` in
the forked child. Both set argv and sys.path[0] to the run's folder, import a stored bundle's
modules from memory (:data:`FINDER`), start tracebacks at the script and give the exit status
``sys.exit`` would. :mod:`workers.sandbox` calls them last,
after the child is isolated.
"""

import atexit
import contextlib
import importlib.util
import sys
import threading
import types
from typing import Any

# The modules of a stored code bundle (supervisor/code/bundle.py) are read by the run's child
# before it drops its privileges -- the code cache is the supervisor's alone -- and imported
# from memory through this finder, first on sys.meta_path. It is source text because exec
# mode's fresh interpreter (perhaps another Python) gets it inside BOOTSTRAP, and fork mode
# execs the very same text below, so both modes import alike.
FINDER = """\
class BundleFinder:
    def __init__(self, modules):
        self.modules = modules  # name -> (path, source bytes, is_package)

    def find_spec(self, name, path=None, target=None):
        found = self.modules.get(name)
        if found is None:
            return None
        from importlib.util import spec_from_loader
        spec = spec_from_loader(name, self, origin=found[0], is_package=found[2])
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        path, source, _ = self.modules[module.__spec__.name]
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, name):  # tracebacks: the cache file itself is not readable
        return self.modules[name][1].decode("utf-8", "replace")
"""
_finder: dict[str, Any] = {}
exec(compile(FINDER, "<bundle finder>", "exec"), _finder)
BundleFinder = _finder["BundleFinder"]

Modules = dict[str, tuple[str, bytes, bool]]  # module name -> (path, source, is a package)

# Exec mode runs the script through this instead of ``python script.py`` so that both modes
# behave alike: sys.path[0] is Run.cwd (not the script's folder, they differ for code
# materialized from the database) and tracebacks start at the script. The child compiles the
# script before exec, where compile() is warm, and passes on fd 5 the marshalled code (used when
# the interpreter's bytecode magic matches ours: a fresh interpreter's first compile() builds the
# AST types, over a millisecond), the source (compiled otherwise: another Python version, or a
# SyntaxError to report the usual way) and the bundle's modules, all read before the child
# dropped its privileges.
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
    code, source, modules = None, None, None
    ours = getattr(sys.modules.get("_frozen_importlib_external"), "MAGIC_NUMBER", b"")
    try:
        size = os.fstat(5).st_size
        if size:
            blob, source, modules = marshal.loads(os.pread(5, size, 0))
            if blob and magic == ours.hex():
                code = marshal.loads(blob)
        os.close(5)
    except (OSError, ValueError, EOFError, TypeError):
        code = None
    if modules:
        scope = {}
        exec(FINDER, scope)
        sys.meta_path.insert(0, scope["BundleFinder"](modules))
    try:
        if code is None:
            if source is None:
                with open(path, "rb") as f:
                    source = f.read()
            code = compile(source, path, "exec", dont_inherit=True)
        exec(code, g)
    except SystemExit:
        raise
    except BaseException as exc:
        exc.__traceback__ = exc.__traceback__.tb_next
        sys.excepthook(type(exc), exc, exc.__traceback__)
        raise SystemExit(1) from None
_boot()
""".replace("FINDER", repr(FINDER))
MAGIC = importlib.util.MAGIC_NUMBER.hex()


def module_name(rel: str) -> tuple[str, bool]:
    """A bundle file's module: ``pkg/mod.py`` -> ``("pkg.mod", False)``, ``pkg/__init__.py``
    -> ``("pkg", True)``."""
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def run_main(
    path: str,
    home: str,
    source: bytes,
    modules: Modules | None = None,
    compiled: types.CodeType | None = None,
) -> int:
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
    if modules:
        sys.meta_path.insert(0, BundleFinder(modules))
    try:
        if compiled is None:  # else the launcher compiled it (Sandbox.order): the same flags
            compiled = compile(source, path, "exec", dont_inherit=True)
        exec(compiled, main.__dict__)
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

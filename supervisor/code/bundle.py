"""An actor's code bundle: its entry script and the Python modules it imports from its folder.

The rule, the same everywhere (drift, deploy, rollback, show-code, runs of stored code): start
from the entry script, read each file's ``import`` statements with :mod:`ast` -- anywhere in the
file, inside functions and ``try`` blocks too; the files are never run -- and take every module
that resolves, as Python would resolve it with the script's folder first on ``sys.path``, to a
file in that folder or below it: ``name.py``, ``name/__init__.py``, and for ``pkg.mod`` or
``from pkg import mod`` also ``pkg/mod.py``. Then the same for every file taken, recursively
(relative imports inside packages included). Modules found elsewhere (the standard library,
site-packages) are not part of the bundle; neither are imports made at run time by name
(``importlib.import_module("x")``) nor data files.

A bundle of the entry script alone hashes as that file (SHA256 of its bytes), so a version
recorded before bundles existed stays in sync; otherwise the hash is SHA256 over the sorted
(relative path, content) pairs, see :func:`bundle_sha256`.
"""

import ast
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

MAX_FILES = 256  # a bundle stops growing here (logged): a script is not a whole application
PACKAGE_INIT = "__init__.py"


def bundle_sha256(files: Mapping[str, bytes], entry: str) -> str:
    """The hash of a bundle (relative path -> content; ``entry`` is one of the paths).

    The entry alone: SHA256 of its content. Otherwise SHA256 over the pairs sorted by path,
    each written as ``path NUL length NUL content``, so no two bundles share an encoding.
    """
    if len(files) == 1 and entry in files:
        return hashlib.sha256(files[entry]).hexdigest()
    digest = hashlib.sha256()
    for rel in sorted(files):
        data = files[rel]
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def local_imports(root: Path, rel: str, source: bytes) -> list[str]:
    """The files (relative to ``root``) that the module at ``rel`` imports from ``root``.

    ``rel`` is the importing file's relative path; it decides what relative imports mean (the
    entry script is ``__main__`` and has no package, so its relative imports resolve nothing).
    A file that does not parse imports nothing (running it reports the error).
    """
    try:
        tree = ast.parse(source, filename=rel)
    except (SyntaxError, ValueError):
        return []
    package = _package_of(rel)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.extend(_resolve_chain(root, alias.name.split(".")))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node.module, node.level, package)
            if base is None:
                continue
            found.extend(_resolve_chain(root, base))
            for alias in node.names:
                if alias.name != "*":
                    found.extend(_resolve_chain(root, [*base, alias.name], only_last=True))
    return found


def discover(root: Path, entry: str, read: Callable[[Path], bytes | None]) -> dict[str, bytes]:
    """The bundle of ``entry`` (a file in ``root``), as relative path -> content.

    ``read(path)`` returns a file's bytes or None when it cannot be read (it is then left out;
    the entry first).
    """
    files: dict[str, bytes] = {}
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel in files:
            continue
        if len(files) >= MAX_FILES:
            log.warning("bundle of %s: more than %d files; the rest is left out", entry, MAX_FILES)
            break
        data = read(root / rel)
        if data is None:
            continue
        files[rel] = data
        if rel.endswith(".py") or rel == entry:
            todo.extend(r for r in local_imports(root, rel, data) if r not in files)
    return files


def _package_of(rel: str) -> list[str] | None:
    """The package a module file belongs to (its ``__package__``); None for a top-level
    module or the entry script, whose relative imports cannot resolve."""
    parts = rel.split("/")
    if len(parts) == 1:
        return None
    return parts[:-1]


def _absolute(module: str | None, level: int, package: list[str] | None) -> list[str] | None:
    """The absolute name of ``from <level dots><module> import ...`` in ``package``."""
    tail = module.split(".") if module else []
    if level == 0:
        return tail
    if package is None or level > len(package):
        return None
    return [*package[: len(package) - level + 1], *tail]


def _resolve_chain(root: Path, parts: list[str], *, only_last: bool = False) -> Iterator[str]:
    """The files of ``a``, ``a.b``, ``a.b.c`` for ``parts = [a, b, c]``, as far as each
    resolves in ``root`` (regular package, then module, then namespace folder, as Python's
    path finder tries them). ``only_last``: yield only the last part's file."""
    folder = root
    prefix: list[str] = []
    for index, part in enumerate(parts):
        if not part.isidentifier():
            return
        last = index == len(parts) - 1
        candidate = folder / part
        if (candidate / PACKAGE_INIT).is_file():
            rel = "/".join([*prefix, part, PACKAGE_INIT])
        elif (folder / f"{part}.py").is_file():
            if not (only_last and not last):
                yield "/".join([*prefix, f"{part}.py"])
            return  # a module has no submodules
        elif candidate.is_dir():
            rel = ""  # a namespace package: nothing to read, its submodules may be files
        else:
            return
        if rel and (last or not only_last):
            yield rel
        folder, prefix = candidate, [*prefix, part]

"""Bundle discovery and hashing (supervisor/code/bundle.py): which files are an actor's code,
found by reading imports, never by running them; and the one hash of them."""

import hashlib
import os
import time
from pathlib import Path

from supervisor.code.bundle import bundle_sha256, discover, local_imports
from supervisor.code.sync import current_key, read_snapshot
from workers.script_main import module_name

OLD = time.time() - 3600


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (OLD, OLD))
    return root


def found(root: Path, entry: str = "main.py") -> list[str]:
    def read(path: Path) -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    return sorted(discover(root, entry, read))


def test_the_bundle_is_the_entry_and_what_it_imports_from_its_folder_recursively(
    tmp_path: Path,
) -> None:
    root = tree(
        tmp_path,
        {
            "main.py": "import json, os.path\nfrom phrases import greet\n"
            "def late():\n    import helpers.fmt as f\n",
            "phrases.py": "try:\n    import extra\nexcept ImportError:\n    pass\n",
            "extra.py": "X = 1\n",
            "helpers/__init__.py": "from . import shared\nfrom .deep.leaf import y\n",
            "helpers/fmt.py": "from .. import nothing\n",  # beyond the top: resolves nothing
            "helpers/shared.py": "",
            "helpers/deep/leaf.py": "y = 2\n",
            "unused.py": "print('not imported')\n",
            "notes.txt": "data files are not code",
        },
    )
    assert found(root) == [
        "extra.py", "helpers/__init__.py", "helpers/deep/leaf.py", "helpers/fmt.py",
        "helpers/shared.py", "main.py", "phrases.py",
    ]  # fmt: skip


def test_from_package_import_name_takes_submodules_only_when_they_are_files(
    tmp_path: Path,
) -> None:
    root = tree(
        tmp_path,
        {
            "main.py": "from pkg import sub, CONSTANT\nfrom ns import part\n",
            "pkg/__init__.py": "CONSTANT = 1\n",
            "pkg/sub.py": "",
            "ns/part.py": "",  # a namespace package: no __init__.py
        },
    )
    assert found(root) == ["main.py", "ns/part.py", "pkg/__init__.py", "pkg/sub.py"]


def test_a_package_wins_over_a_module_of_the_same_name_as_python_resolves_it(
    tmp_path: Path,
) -> None:
    root = tree(tmp_path, {"main.py": "import util\n", "util.py": "", "util/__init__.py": ""})
    assert found(root) == ["main.py", "util/__init__.py"]


def test_unparsable_files_and_relative_imports_of_the_entry_resolve_nothing(
    tmp_path: Path,
) -> None:
    root = tree(
        tmp_path,
        {
            "main.py": "from . import sibling\nimport broken\n",
            "broken.py": "def (:\n",
            "sibling.py": "",
        },
    )
    assert found(root) == ["broken.py", "main.py"]
    assert local_imports(root, "broken.py", b"def (:\n") == []
    assert local_imports(root, "main.py", b"\xff\xfe not source") == []


def test_the_hash_of_the_entry_alone_is_the_file_hash_and_a_bundle_hashes_every_pair() -> None:
    alone = {"main.py": b"print(1)\n"}
    assert bundle_sha256(alone, "main.py") == hashlib.sha256(b"print(1)\n").hexdigest()
    two = {"main.py": b"import a\n", "a.py": b"X = 1\n"}
    base = bundle_sha256(two, "main.py")
    assert base == bundle_sha256(dict(reversed(two.items())), "main.py")  # order-free
    assert base != bundle_sha256({**two, "a.py": b"X = 2\n"}, "main.py")  # content counts
    assert base != bundle_sha256({"main.py": b"import a\n", "b.py": b"X = 1\n"}, "main.py")
    # no two bundles share an encoding: moving bytes between path and content changes the hash
    assert bundle_sha256({"a": b"bc", "m": b""}, "m") != bundle_sha256({"ab": b"c", "m": b""}, "m")


def test_a_snapshot_covers_the_bundle_and_its_stat_key_sees_a_helper_edit(tmp_path: Path) -> None:
    root = tree(tmp_path, {"main.py": "import phrases\n", "phrases.py": "HI = 'hello'\n"})
    later = time.time_ns() + 10**10
    snap = read_snapshot(root / "main.py", clock_ns=lambda: later)
    assert snap is not None and snap.files == ("main.py", "phrases.py")
    assert snap.others == {"phrases.py": b"HI = 'hello'\n"}
    assert snap.sha256 == bundle_sha256(
        {"main.py": b"import phrases\n", "phrases.py": b"HI = 'hello'\n"}, "main.py"
    )
    assert snap.key is not None and current_key(snap.paths) == snap.key
    (root / "phrases.py").write_text("HI = 'howdy'\n")
    assert current_key(snap.paths) != snap.key  # the before-run check looks
    edited = read_snapshot(root / "main.py", clock_ns=lambda: later)
    assert edited is not None and edited.sha256 != snap.sha256
    # a command's program is the file alone: its content is not read for imports
    alone = read_snapshot(root / "main.py", scan=False)
    assert alone is not None and alone.files == ("main.py",)
    assert alone.sha256 == hashlib.sha256(b"import phrases\n").hexdigest()


def test_module_names_of_bundle_files() -> None:
    assert module_name("phrases.py") == ("phrases", False)
    assert module_name("pkg/__init__.py") == ("pkg", True)
    assert module_name("pkg/deep/leaf.py") == ("pkg.deep.leaf", False)

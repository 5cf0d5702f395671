"""ARCHITECTURE.md stays true: every module it names exists, and it names the run's path."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "ARCHITECTURE.md").read_text()


def test_every_module_it_names_exists() -> None:
    named = set(re.findall(r"`((?:protocol|workers|supervisor|tests)/[\w/]+\.py)`", TEXT))
    assert len(named) > 30, "the path of a run names its modules"
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"


def test_every_package_folder_is_mentioned() -> None:
    folders = {
        str(p.parent.relative_to(ROOT))
        for p in ROOT.glob("*/**/__init__.py")
        if p.parts[len(ROOT.parts)] in ("protocol", "workers", "supervisor")
    }
    unmentioned = sorted(f for f in folders if f"`{f}/" not in TEXT)
    assert not unmentioned, f"packages ARCHITECTURE.md never mentions: {unmentioned}"

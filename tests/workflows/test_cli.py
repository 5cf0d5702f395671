"""``actor-supervisor workflow`` without a supervisor: list, and the errors of --items."""

from pathlib import Path

import orjson
import pytest

from supervisor.cli import main
from supervisor.cli.common import EXIT_OK, EXIT_USAGE

CONFIG = """
[[actors]]
name = "a"
script = "s.py"

[[workflows]]
name = "w"
steps = ["a"]
chunk_size = 7
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "s.py").write_text("print('{}')\n")
    path = tmp_path / "supervisor.toml"
    path.write_text(CONFIG)
    return path


def test_list_shows_the_configured_workflows(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["workflow", "list", "--config", str(config), "--json"]) == EXIT_OK
    (shown,) = orjson.loads(capsys.readouterr().out)
    assert (shown["name"], shown["steps"], shown["chunk_size"]) == ("w", ["a"], 7)
    assert main(["workflow", "list", "--config", str(config)]) == EXIT_OK
    assert "w" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"id": 1}\nnot json\n', "line 2: not valid JSON"),
        ("\n\n", "holds no items"),
    ],
)
def test_bad_items_files_are_refused_before_anything_is_sent(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    items = tmp_path / "items.jsonl"
    items.write_text(text)
    code = main(["workflow", "run", "w", "--items", str(items), "--config", str(config)])
    assert code == EXIT_USAGE
    assert expected in capsys.readouterr().err


def test_a_missing_items_file_is_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["workflow", "run", "w", "--items", "/nonexistent.jsonl", "--config", str(config)])
    assert code == EXIT_USAGE
    assert "cannot read /nonexistent.jsonl" in capsys.readouterr().err

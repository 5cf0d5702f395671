"""``[[workflows]]`` in the configuration: what is accepted and the errors users see."""

from pathlib import Path

import pytest

from supervisor.config import Config, ConfigError, load_config
from supervisor.schedule import IntervalSchedule

ACTORS = """
[[actors]]
name = "extract"
script = "s.py"

[[actors]]
name = "classify"
script = "s.py"
"""


def load(tmp_path: Path, workflows: str) -> Config:
    (tmp_path / "s.py").write_text("print('{}')\n")
    path = tmp_path / "supervisor.toml"
    path.write_text(ACTORS + workflows)
    return load_config(path, environ={})


def error_of(tmp_path: Path, workflows: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, workflows)
    return str(info.value)


def test_defaults_and_every_key(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[[workflows]]
name = "postings"
steps = ["extract", "classify"]

[[workflows]]
name = "nightly"
steps = ["classify"]
chunk_size = 5
max_parallel = 2
schedule = { type = "interval", seconds = 3600 }
input = [{ id = "a" }, { id = "b" }]
on_item_failure = "stop"
snapshot_every = 3
""",
    )
    postings = config.workflows["postings"]
    assert postings.steps == ("extract", "classify")
    assert (postings.chunk_size, postings.max_parallel) == (100, None)
    assert (postings.on_item_failure, postings.snapshot_every) == ("continue", 10)
    assert postings.schedule is None
    nightly = config.workflows["nightly"]
    assert isinstance(nightly.schedule, IntervalSchedule)
    assert nightly.input == [{"id": "a"}, {"id": "b"}]
    assert (nightly.chunk_size, nightly.max_parallel, nightly.snapshot_every) == (5, 2, 3)
    assert nightly.on_item_failure == "stop"


def test_no_workflows_is_fine(tmp_path: Path) -> None:
    assert load(tmp_path, "").workflows == {}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'name = "w"\nsteps = ["extract", "nope"]',
            "workflows[0] (w).steps[1]: unknown actor 'nope' (known: classify, extract)",
        ),
        (
            'name = "w"\nsteps = ["extract", "classify", "extract"]',
            "workflows[0] (w).steps[2]: actor 'extract' is already step 0",
        ),
        ('name = "w"\nsteps = ["extract"]\nchunk_size = 0', "workflows[0] (w).chunk_size: "),
        ('name = "w"\nsteps = []', "workflows[0] (w).steps: expected a non-empty array"),
        ('name = "w"', "workflows[0] (w).steps: missing"),
        ('name = "w"\nsteps = ["extract"]\nchunk = 5', "did you mean 'chunk_size'?"),
        (
            'name = "w"\nsteps = ["extract"]\non_item_failure = "retry"',
            "workflows[0] (w).on_item_failure:",
        ),
        ('name = "w"\nsteps = ["extract"]\nsnapshot_every = 0', "(w).snapshot_every:"),
        ('name = "w"\nsteps = ["extract"]\nmax_parallel = -1', "(w).max_parallel:"),
        (
            'name = "w"\nsteps = ["extract"]\nschedule = { type = "interval" }',
            "(w).schedule",
        ),
        ('name = "w"\nsteps = ["extract"]\ninput = [1]', "(w).input: only a scheduled workflow"),
        (
            'name = "w"\nsteps = ["extract"]\nschedule = { type = "interval", seconds = 60 }',
            "(w).input: a scheduled workflow needs its items here",
        ),
        ('name = "a b"\nsteps = ["extract"]', "workflows[0].name: "),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, expected: str) -> None:
    assert expected in error_of(tmp_path, f"[[workflows]]\n{body}\n")


def test_duplicate_names(tmp_path: Path) -> None:
    text = '[[workflows]]\nname = "w"\nsteps = ["extract"]\n' * 2
    assert "workflows[1] (w).name: duplicate workflow name 'w'" in error_of(tmp_path, text)


def test_workflows_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text("workflows = 3\n")
    with pytest.raises(ConfigError, match="workflows: expected an array of tables"):
        load_config(path, environ={})

"""rollback --write-file recreates files with sensible modes: a deleted command program (it
starts with #!) comes back executable, a module does not, and an existing file keeps its own."""

import stat
from pathlib import Path

from supervisor.code.records import CodeVersion
from supervisor.code.rollback import write_bundle


def version(entry: str, others: dict[str, str] | None = None) -> CodeVersion:
    return CodeVersion(
        history_id="h" * 32, actor_id="job", script_code=entry, script_code_hash="0" * 64,
        change_type="initial", changed_at=0.0, version_tag="1.0.0", activated_at=0.0,
        bundle_files=others,
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_recreated_program_is_executable_and_a_recreated_module_is_not(tmp_path: Path) -> None:
    program = tmp_path / "job.sh"
    write_bundle(program, version("#!/bin/sh\necho '{}'\n"))
    assert mode(program) == 0o755
    script = tmp_path / "job.py"
    write_bundle(script, version("import helper\n", {"helper.py": "X = 1\n"}))
    assert (mode(script), mode(tmp_path / "helper.py")) == (0o644, 0o644)


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    program = tmp_path / "job.sh"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o700)
    write_bundle(program, version("#!/bin/sh\necho '{}'\n"))
    assert mode(program) == 0o700 and "echo" in program.read_text()

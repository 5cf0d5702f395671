"""Start-up checks as the sandbox user: who can read the scripts, which Python it can run."""

import os
import sys
from pathlib import Path

import pytest

from supervisor import preflight
from supervisor.config import ConfigError, load_config
from supervisor.errors import StartupError
from supervisor.preflight import prepare_sandbox, resolve_python, tmp_mb_unenforced
from tests.supervisor.harness import write_script
from workers.access import resolve_user, unrunnable_python
from workers.preload import DEFAULT_PRELOAD

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _config(folder: Path, mode: str = "fork", extra: str = "") -> Path:
    path = folder / "supervisor.toml"
    path.write_text(
        f'[supervisor]\nmode = "{mode}"\n{extra}\n[[actors]]\nname = "a"\nscript = "scripts/a.py"\n'
    )
    return path


@root_only
def test_an_unreadable_script_is_refused_naming_the_file_and_the_user(public_tmp: Path) -> None:
    script = write_script(public_tmp, "a.py", "print('{}')\n")
    script.parent.chmod(0o700)
    config = load_config(_config(public_tmp), environ={})
    with pytest.raises(StartupError) as info:
        prepare_sandbox(config)
    assert str(script) in str(info.value) and "61184" in str(info.value)
    fixed = load_config(_config(public_tmp, extra='run_as = "nobody"'), environ={})
    with pytest.raises(StartupError, match="nobody"):
        prepare_sandbox(fixed)


@root_only
def test_a_command_program_must_be_executable_but_need_not_be_readable(public_tmp: Path) -> None:
    program = public_tmp / "job.sh"
    program.write_text("#!/bin/sh\necho '{}'\n")
    public_tmp.chmod(0o755)
    path = public_tmp / "supervisor.toml"
    path.write_text('[[actors]]\nname = "job"\ncommand = ["./job.sh"]\n')
    program.chmod(0o644)  # readable, not executable: its runs would all fail
    with pytest.raises(StartupError, match="cannot execute") as info:
        prepare_sandbox(load_config(path, environ={}))
    assert str(program) in str(info.value)
    program.chmod(0o711)  # executable only (a binary need not be readable): fine
    prepare_sandbox(load_config(path, environ={}))


@root_only
def test_as_root_runs_get_the_uid_range_unless_run_as_is_set(public_tmp: Path) -> None:
    write_script(public_tmp, "a.py", "print('{}')\n")
    dynamic = prepare_sandbox(load_config(_config(public_tmp), environ={}))
    assert (dynamic.run_as, dynamic.run_uids) == (None, tuple(range(61184, 61440)))
    extra = 'run_as = "nobody"\nrun_as_range = "70000-70001"'
    fixed = prepare_sandbox(load_config(_config(public_tmp, extra=extra), environ={}))
    assert (fixed.run_as, fixed.run_uids) == (resolve_user("nobody"), ())


@root_only
def test_run_as_root_is_refused_unless_allowed(public_tmp: Path) -> None:
    write_script(public_tmp, "a.py", "print('{}')\n")
    for user in ("root", "0"):
        config = load_config(_config(public_tmp, extra=f'run_as = "{user}"'), environ={})
        with pytest.raises(StartupError, match="allow_root_scripts"):
            prepare_sandbox(config)
    extra = 'run_as = "root"\nallow_root_scripts = true'
    allowed = prepare_sandbox(load_config(_config(public_tmp, extra=extra), environ={}))
    assert allowed.run_as == (0, 0)


def test_a_run_as_range_too_small_for_the_pool_is_refused(public_tmp: Path) -> None:
    extra = 'workers = 3\nconcurrency = 2\nrun_as_range = "70000-70004"'
    with pytest.raises(ConfigError) as info:
        load_config(_config(public_tmp, extra=extra), environ={})
    assert str(info.value) == (
        f"{public_tmp / 'supervisor.toml'}: supervisor.run_as_range: run_as_range "
        "'70000-70004' holds 5 uids; workers x concurrency (3 x 2) needs 6"
    )
    for bad in ("0-10", "10-5", "abc", "1-2147483648"):
        with pytest.raises(ConfigError, match="run_as_range: expected 'LOW-HIGH'"):
            load_config(_config(public_tmp, extra=f'run_as_range = "{bad}"'), environ={})


@root_only
def test_exec_mode_gets_an_interpreter_the_sandbox_user_can_run(public_tmp: Path) -> None:
    write_script(public_tmp, "a.py", "print('{}')\n")
    extra = 'run_as = "nobody"'
    sandbox = prepare_sandbox(load_config(_config(public_tmp, "exec", extra), environ={}))
    assert sandbox.run_as == resolve_user("nobody")
    assert unrunnable_python(sandbox.python, *sandbox.run_as) == []
    if not unrunnable_python(sys.executable, *sandbox.run_as):
        assert sandbox.python == sys.executable  # our own, whenever the user can run it


@root_only
def test_a_configured_interpreter_that_does_not_work_is_refused(public_tmp: Path) -> None:
    fake = public_tmp / "python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(StartupError, match=r"python: .*fails to start"):
        resolve_python(str(fake), resolve_user("nobody"), needed=True)


def test_without_a_user_switch_our_own_interpreter_is_used() -> None:
    assert resolve_python(None, None, needed=True) == sys.executable


def test_tmp_mb_is_reported_unenforced_only_without_the_privilege_to_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = 'limits = { tmp_mb = 8 }\n[[actors]]\nname = "b"\nscript = "scripts/b.py"\n'
    extra += 'limits = { tmp_mb = "unlimited" }\n'
    config = load_config(_config(tmp_path, extra=extra), environ={})
    monkeypatch.setattr(preflight, "private_tmp_available", lambda: False)
    problem = tmp_mb_unenforced(config)
    assert problem is not None and "tmp_mb is not enforced" in problem
    assert problem.endswith("actors: a")  # b asked for no private tmpfs: nothing to miss
    monkeypatch.setattr(preflight, "private_tmp_available", lambda: True)
    assert tmp_mb_unenforced(config) is None


def test_preload_is_left_out_when_no_actor_runs_a_script_in_a_forked_child(
    public_tmp: Path,
) -> None:
    write_script(public_tmp, "a.py", "print('{}')\n")
    program = public_tmp / "job.sh"
    program.write_text("#!/bin/sh\necho '{}'\n")
    program.chmod(0o755)
    public_tmp.chmod(0o755)
    fork = prepare_sandbox(load_config(_config(public_tmp), environ={}))
    assert fork.preload == DEFAULT_PRELOAD
    exec_ = prepare_sandbox(load_config(_config(public_tmp, mode="exec"), environ={}))
    assert exec_.preload == ()  # the child execs a fresh interpreter: it would only cost
    path = public_tmp / "supervisor.toml"
    path.write_text('[[actors]]\nname = "job"\ncommand = ["./job.sh"]\n')  # fork mode, a program
    assert prepare_sandbox(load_config(path, environ={})).preload == ()
    path.write_text("[supervisor]\n")  # no actors yet: a reload may add fork-mode ones
    assert prepare_sandbox(load_config(path, environ={})).preload == DEFAULT_PRELOAD

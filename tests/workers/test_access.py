"""Start-up access checks, run for real as user nobody."""

import os
import pwd
from pathlib import Path

import pytest

from workers.access import AccessCheckError, resolve_user, unexecutable, unreadable_scripts

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def test_resolve_user_by_name_and_by_number() -> None:
    nobody = pwd.getpwnam("nobody")
    assert resolve_user("nobody") == (nobody.pw_uid, nobody.pw_gid)
    assert resolve_user(str(nobody.pw_uid)) == (nobody.pw_uid, nobody.pw_gid)


def test_resolve_user_names_an_unknown_user() -> None:
    with pytest.raises(AccessCheckError, match="unknown user 'no-such-user-here'"):
        resolve_user("no-such-user-here")


@needs_root
def test_script_in_a_private_folder_is_reported_and_a_readable_one_is_not(
    public_tmp: Path,
) -> None:
    uid, gid = resolve_user("nobody")
    fine = public_tmp / "fine.py"
    fine.write_text("print(1)")
    fine.chmod(0o644)
    private = public_tmp / "private"
    private.mkdir()
    private.chmod(0o700)
    hidden = private / "job.py"
    hidden.write_text("print(1)")
    hidden.chmod(0o644)
    secret = public_tmp / "secret.py"
    secret.write_text("print(1)")
    secret.chmod(0o600)

    problems = unreadable_scripts([str(fine), str(hidden), str(secret)], uid, gid)

    assert f"{hidden}: user nobody (uid {uid}) cannot read this file" in problems
    assert (
        f"{hidden}: user nobody (uid {uid}) cannot list and enter its folder {private}" in problems
    )
    assert f"{secret}: user nobody (uid {uid}) cannot read this file" in problems
    assert not [p for p in problems if p.startswith(f"{fine}:")]
    assert len(problems) == 3


@needs_root
def test_all_readable_scripts_give_no_messages(public_tmp: Path) -> None:
    script = public_tmp / "ok.py"
    script.write_text("print(1)")
    script.chmod(0o644)
    assert unreadable_scripts([str(script)], *resolve_user("nobody")) == []


@needs_root
def test_missing_script_is_reported(public_tmp: Path) -> None:
    uid, gid = resolve_user("nobody")
    (message,) = unreadable_scripts([str(public_tmp / "gone.py")], uid, gid)
    assert "does not exist" in message


@needs_root
def test_unexecutable_interpreter_is_reported(public_tmp: Path) -> None:
    uid, gid = resolve_user("nobody")
    private = public_tmp / "bin"
    private.mkdir()
    private.chmod(0o700)
    program = private / "python"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    assert unexecutable([str(program), "/bin/sh"], uid, gid) == [
        f"{program}: user nobody (uid {uid}) cannot execute this program"
    ]


def test_checking_as_ourselves_needs_no_switch(public_tmp: Path) -> None:
    script = public_tmp / "mine.py"
    script.write_text("print(1)")
    script.chmod(0o644)
    assert unreadable_scripts([str(script)], os.getuid(), os.getgid()) == []

"""Two supervisors on one host never hand out the same run uids."""

import os
from pathlib import Path

import pytest

from supervisor.errors import StartupError
from supervisor.uidclaim import claim_uids
from tests.supervisor.harness import ECHO, session_uids, start_supervisor, wait_for, write_script


def test_an_overlapping_range_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    held = claim_uids(tuple(range(1000, 1010)), tmp_path)
    assert held is not None
    with pytest.raises(
        StartupError, match=rf"1005-1020 overlaps uids 1000-1009.*pid {os.getpid()}"
    ):
        claim_uids(tuple(range(1005, 1021)), tmp_path)
    other = claim_uids(tuple(range(1010, 1020)), tmp_path)  # adjacent: no overlap
    assert other is not None
    held.release()
    again = claim_uids(tuple(range(1005, 1010)), tmp_path)  # freed by the release
    assert again is not None
    assert sorted(p.name for p in tmp_path.glob("*-*")) == ["1005-1009", "1010-1019"]


def test_a_dead_holders_claim_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "1000-1009").write_text("4242\n")  # a claim file whose lock nobody holds
    claim = claim_uids(tuple(range(1000, 1010)), tmp_path)
    assert claim is not None and (tmp_path / "1000-1009").read_text() == f"{os.getpid()}\n"


def test_no_uids_claim_nothing(tmp_path: Path) -> None:
    assert claim_uids((), tmp_path) is None
    assert not list(tmp_path.iterdir())


@pytest.mark.e2e
@pytest.mark.skipif(os.geteuid() != 0, reason="uids per run need a root supervisor")
@pytest.mark.timeout(120)
def test_a_second_supervisor_with_the_same_range_refuses_to_start(public_tmp: Path) -> None:
    actors = '[[actors]]\nname = "echo"\nscript = "scripts/echo.py"\n'
    uids = session_uids()  # this session's block: another's supervisors keep theirs
    first_range, second_range = f"{uids[0]}-{uids[9]}", f"{uids[5]}-{uids[19]}"
    first_folder, second_folder = public_tmp / "first", public_tmp / "second"
    first_folder.mkdir()
    second_folder.mkdir()
    write_script(first_folder, "echo.py", ECHO)
    first = start_supervisor(first_folder, actors, settings=f'run_as_range = "{first_range}"\n')
    try:
        write_script(second_folder, "echo.py", ECHO)
        second = start_supervisor(
            second_folder, actors, settings=f'run_as_range = "{second_range}"\n', wait_ready=False
        )
        wait_for(lambda: second.proc.poll() is not None, 60, "the second supervisor to exit")
        assert second.proc.returncode != 0
        assert f"run_as_range {second_range} overlaps uids {first_range}" in second.log()
        assert f"pid {first.proc.pid}" in second.log()
        with first.client() as client:  # the first one never noticed
            assert client.submit("echo", {"x": 1}, wait=True).succeeded
    finally:
        assert first.stop() == 0

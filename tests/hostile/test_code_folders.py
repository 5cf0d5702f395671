"""Hostile scripts against other actors' code: one run changing what another actor's runs
execute. Runs of different actors run as different uids; the code they share on disk -- the
scripts and the helper modules beside them -- must be out of every run's reach. The sneakiest
way in is a ``.pyc`` in ``__pycache__``: drift hashes the sources, which stay untouched."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.hostile.common import check_report, output_of
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts run as another user only as root")

HELPER = "VALUE = 'honest'\n"
VICTIM = "import helper, json\nprint(json.dumps({'value': helper.VALUE}))\n"

ATTACKER = """\
    import importlib.util, json, marshal, os, struct, sys

    folder = json.load(sys.stdin)["folder"]
    helper = os.path.join(folder, "helper.py")
    done = {}

    def attempt(name, action):
        try:
            action()
            done[name] = "DONE"
        except OSError as exc:
            done[name] = type(exc).__name__

    def write(path, text):
        with open(path, "w") as out:
            out.write(text)

    def plant_pyc():
        st = os.stat(helper)  # a header matching the source: Python would trust it
        code = compile("VALUE = 'planted'", helper, "exec")
        header = struct.pack("<III", 0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
        cache = os.path.join(folder, "__pycache__")
        os.makedirs(cache, exist_ok=True)
        tag = sys.implementation.cache_tag
        with open(os.path.join(cache, f"helper.{tag}.pyc"), "wb") as out:
            out.write(importlib.util.MAGIC_NUMBER + header + marshal.dumps(code))

    attempt("pyc", plant_pyc)
    attempt("helper", lambda: write(helper, "VALUE = 'planted'\\n"))
    attempt("new_module", lambda: write(os.path.join(folder, "json.py"), "raise SystemExit\\n"))
    attempt("victim", lambda: write(os.path.join(folder, "victim.py"), "print('{}')\\n"))
    print(json.dumps(done))
"""

ACTORS = """
[[actors]]
name = "victim"
script = "scripts/victim.py"

[[actors]]
name = "attacker"
script = "scripts/attacker.py"
"""


@as_root
def test_a_run_cannot_change_the_code_another_actors_runs_execute(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "helper.py", HELPER)
    write_script(public_tmp, "victim.py", VICTIM)
    write_script(public_tmp, "attacker.py", ATTACKER)
    sup = supervisors(ACTORS, workers=1)
    with sup.client() as client:
        assert output_of(client.submit("victim", {}, wait=True)) == {"value": "honest"}
        folder = str(public_tmp / "scripts")
        tried = output_of(client.submit("attacker", {"folder": folder}, wait=True))
        assert set(tried) == {"pyc", "helper", "new_module", "victim"}, tried
        assert "DONE" not in tried.values(), tried
        assert output_of(client.submit("victim", {}, wait=True)) == {"value": "honest"}


@as_root
@pytest.mark.parametrize("writable", ["scripts", "scripts/__pycache__", "code"])
def test_start_and_check_refuse_code_folders_the_runs_could_write(
    public_tmp: Path, supervisors: Start, writable: str
) -> None:
    """A scripts folder (or its ``__pycache__``) the runs' user may write, or the folder above
    it (where a run would rename ``scripts`` away and make its own): ``start`` refuses before
    any run, ``check`` reports it, and made root's alone again it starts."""
    home = public_tmp / "code" if writable == "code" else public_tmp  # "code": scripts' parent
    home.mkdir(exist_ok=True)
    write_script(home, "helper.py", HELPER)
    write_script(home, "victim.py", VICTIM)
    write_script(home, "attacker.py", "print('{}')")
    place = public_tmp / writable
    place.mkdir(exist_ok=True)
    place.chmod(0o777)
    actors = ACTORS.replace('"scripts/', '"code/scripts/') if writable == "code" else ACTORS
    sup = supervisors(actors, wait_ready=False)
    wait_for(lambda: sup.proc.poll() is not None, 60, "the supervisor to refuse to start")
    assert sup.proc.returncode != 0
    assert "the runs' user can change actors' code" in sup.log(), sup.log()
    named = f"(it can rename scripts in {place})" if writable == "code" else f"{place}: user"
    assert named in sup.log()
    report = check_report(sup.config_path)
    assert not report["ok"] and any(named in p for p in report["problems"]), report
    place.chmod(0o755)
    started = supervisors(config=sup.config_path, workers=2)
    assert started.status()["workers"]

"""Hostile scripts against the code the supervisor imports as root.

The supervisor, its workers (respawned after a crash, they import afresh) and its launchers
(which import ``preload``) run as root and import Python from ``sys.path``. A run that can write
to one of those places plants a module -- a ``json.py`` on an earlier folder, a package, a
``.pyc`` -- and the next import runs it with every privilege. A fork-mode run inherits the
launcher's ``sys.path`` and ``sys.modules``, so it knows exactly where to try.
"""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.helpers import wait_for
from tests.hostile.common import output_of
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts run as another user only as root")

PLANTER = """\
    import json, os, sys

    places = {entry or os.getcwd() for entry in sys.path}
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.add(path)
            places.add(os.path.dirname(path))
            places.add(os.path.join(os.path.dirname(path), "__pycache__"))
    planted = []
    for folder in sorted(places):
        try:
            with open(os.path.join(folder, "planted_by_a_run.py"), "x") as module:
                module.write("import os; os.system('id > /planted')\\n")
            planted.append(folder)
        except OSError:
            pass
    rewritable = sorted(path for path in files if os.access(path, os.W_OK))
    print(json.dumps({"places": len(places), "planted": planted, "rewritable": rewritable}))
"""


@as_root
def test_a_fork_mode_run_can_plant_no_module_where_the_launcher_imports_from(
    public_tmp: Path, supervisors: Start
) -> None:
    write_script(public_tmp, "planter.py", PLANTER)
    sup = supervisors('[[actors]]\nname = "planter"\nscript = "scripts/planter.py"\n', workers=1)
    with sup.client() as client:
        report = output_of(client.submit("planter", {}, wait=True, timeout_s=60))
    assert report["places"] > 20, report  # it saw the launcher's path and modules
    assert report["planted"] == [], report
    assert report["rewritable"] == [], report


@as_root
def test_start_and_check_refuse_an_import_folder_the_runs_could_write(
    public_tmp: Path, supervisors: Start
) -> None:
    """PYTHONPATH names a world-writable folder, and a missing one inside it (a run could create
    it): ``start`` refuses before any run, and ``check`` reports both; then a world-writable
    package folder below it is refused too, and a folder no import can name is not."""
    lib = public_tmp / "lib"
    lib.mkdir()
    lib.chmod(0o777)
    write_script(public_tmp, "a.py", "print('{}')")
    env = {"PYTHONPATH": f"{lib}{os.pathsep}{lib / 'later'}"}
    sup = supervisors(
        '[[actors]]\nname = "a"\nscript = "scripts/a.py"\n', env=env, wait_ready=False
    )
    wait_for(lambda: sup.proc.poll() is not None, 60, "the supervisor to refuse to start")
    assert sup.proc.returncode != 0
    log = sup.log()
    assert "the runs' user can change code this supervisor imports as root" in log, log
    assert f"{lib}: user" in log and "can write to it" in log, log
    assert f"{lib / 'later'}: user" in log and f"can create it (it can write to {lib})" in log
    config = sup.config_path
    checked = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "check", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=public_tmp,
        env={**os.environ, **env},
    )
    report = orjson.loads(checked.stdout)
    assert checked.returncode != 0 and not report["ok"], checked
    assert any(f"{lib}: user" in problem for problem in report["problems"]), report
    lib.chmod(0o755)  # root's alone again, but a package folder below it is not
    (lib / "pkg").mkdir(mode=0o777)
    (lib / "pkg").chmod(0o777)  # a run would add pkg/json/__init__.py, or a .pyc
    (lib / "not-a-package").mkdir()
    (lib / "not-a-package").chmod(0o777)  # no import reaches a folder of that name
    sup = supervisors(config=config, env=env, wait_ready=False)
    wait_for(lambda: sup.proc.poll() is not None, 60, "the supervisor to refuse to start")
    assert f"{lib / 'pkg'}: user" in sup.log() and "not-a-package" not in sup.log()
    (lib / "pkg").chmod(0o755)
    sup = supervisors(config=config, env=env, workers=2)  # all root's alone: it starts
    assert sup.status()["workers"]

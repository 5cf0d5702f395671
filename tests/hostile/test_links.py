"""Hostile scripts against root's reads: a script, or a module of its bundle, that is a symlink
to a file only root may read. The supervisor reads scripts as root (to hash and store them)
and so does the launcher (to compile them once); neither read may hand the file to the run,
nor to the store as code, nor show a line of it in a traceback.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from protocol.client import RunOutcome
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a file only root may read needs root")

SECRET = "TOPSECRET-9f3a"


def _private(folder: Path, name: str, text: str) -> Path:
    """A file only root may read, in a folder only root may enter."""
    vault = folder / "vault"
    vault.mkdir(mode=0o700, exist_ok=True)
    path = vault / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def _submit(sup: RunningSupervisor, actor: str) -> RunOutcome:
    with sup.client(timeout_s=90) as client:
        outcome = client.submit(actor, {}, wait=True)
    assert isinstance(outcome, RunOutcome)
    return outcome


def _stored_code(sup: RunningSupervisor, actor: str) -> str:
    """Every version of the actor's code the store holds, as one text."""
    store = sup.store()
    try:
        return repr(store.code_history(actor))
    finally:
        store.close()


def _shows_nothing(sup: RunningSupervisor, outcome: RunOutcome) -> None:
    seen = f"{outcome.output} {outcome.error} {outcome.stderr_tail}"
    assert SECRET not in seen, seen
    stored = _stored_code(sup, outcome.actor)
    assert "script_code" in stored  # it holds versions: the first, readable one at least
    assert SECRET not in stored


@pytest.mark.timeout(120)
def test_a_script_replaced_by_a_link_to_a_private_file_runs_none_of_it(
    public_tmp: Path, supervisors: Start
) -> None:
    """File mode: the script is swapped for a symlink after the start-up checks (a deploy).
    The file is valid Python that prints the secret, and a broken one would show its line."""
    for name, text in (("code", f"print('{SECRET}')\n"), ("text", f"{SECRET} = 1 2 3\n")):
        _private(public_tmp, f"{name}.py", text)
    script = write_script(public_tmp, "evil.py", "print('{}')")
    sup = supervisors('[[actors]]\nname = "evil"\nscript = "scripts/evil.py"\n', workers=1)
    assert _submit(sup, "evil").status == "succeeded"
    for name in ("code", "text"):
        script.unlink()
        script.symlink_to(public_tmp / "vault" / f"{name}.py")
        outcome = _submit(sup, "evil")
        assert outcome.status == "failed_permanent", outcome
        assert outcome.reason in ("file_missing", "sandbox_error"), outcome
        _shows_nothing(sup, outcome)


@pytest.mark.timeout(120)
def test_a_bundle_module_linked_to_a_private_file_is_not_stored(
    public_tmp: Path, supervisors: Start
) -> None:
    """Stored code: the supervisor bundles the modules a script imports from its folder and
    runs them from its private copy. A module that is a symlink to a private file must not be
    bundled: its run then looks for it as its own user, and finds nothing."""
    _private(public_tmp, "helper.py", f"VALUE = '{SECRET}'\n")
    write_script(public_tmp, "main.py", "import helper\nprint(repr(helper.VALUE))")
    (public_tmp / "scripts" / "helper.py").symlink_to(public_tmp / "vault" / "helper.py")
    actors = '[[actors]]\nname = "main"\nscript = "scripts/main.py"\nexec_mode = "database"\n'
    sup = supervisors(actors, workers=1)
    outcome = _submit(sup, "main")
    assert outcome.status == "failed_permanent", outcome
    assert outcome.stderr_tail.endswith("No module named 'helper'\n"), outcome  # not bundled
    _shows_nothing(sup, outcome)
    assert "may not read it" in sup.log()

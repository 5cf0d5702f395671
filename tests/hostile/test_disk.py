"""Hostile scripts against the disk: filling the shared scratch folders, and reaching another
run's TMPDIR, against a real root supervisor (runs get a private tmpfs of ``tmp_mb``).

One supervisor serves the whole module: the attacks are independent runs of their own actors.
"""

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.client import RunOutcome
from tests.helpers import wait_for
from tests.supervisor.harness import (
    RunningSupervisor,
    killed_after,
    start_supervisor,
    write_script,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a private tmpfs per run needs root")

TMP_MB = 16
MIB = 1 << 20

# Writes 256 KiB files round-robin into every scratch folder until a write fails, reports what
# it wrote on stderr, then fails with that error (its own failure). Stops itself after four
# times the limit, so that a sandbox that does not hold cannot fill the test host's disk.
FILL = f"""\
    import json, os, sys
    json.load(sys.stdin)
    folders = [*SCRATCH, os.environ["TMPDIR"]]
    chunk = b"x" * (256 << 10)
    written, i = 0, 0
    try:
        while written < {4 * TMP_MB * MIB}:
            path = os.path.join(folders[i % len(folders)], f"fill-{{i}}")
            with open(path, "wb") as f:
                written += f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            i += 1
    except OSError as exc:
        print(json.dumps({{"written": written, "errno": exc.errno}}), file=sys.stderr)
        raise
    print(json.dumps({{"written": written}}))
"""

# Reports what the run's scratch folders hold and how full its /tmp is.
LOOK = """\
    import json, os, sys
    json.load(sys.stdin)
    tmpdir = os.environ["TMPDIR"]
    found = {f: sorted(os.listdir(f)) for f in (*SCRATCH[1:], tmpdir)}
    found["/tmp"] = sorted(n for n in os.listdir("/tmp") if n.startswith("fill-"))
    st = os.statvfs("/tmp")
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    print(json.dumps({"found": found, "used": used, "size": st.f_blocks * st.f_frsize}))
"""

# Leaves a marker in its TMPDIR, /tmp and /dev/shm, says where (drop/holder.json), waits for
# drop/release, then reports whether its TMPDIR still holds only the marker.
HOLD = """\
    import json, os, sys, time
    drop = json.load(sys.stdin)["drop"]
    tmpdir = os.environ["TMPDIR"]
    for folder in (tmpdir, *SCRATCH):
        with open(os.path.join(folder, "marker-holder"), "w") as f:
            f.write("secret")
    with open(os.path.join(drop, "holder.tmp"), "w") as f:
        json.dump({"pid": os.getpid(), "tmpdir": tmpdir}, f)
    os.chmod(os.path.join(drop, "holder.tmp"), 0o644)
    os.rename(os.path.join(drop, "holder.tmp"), os.path.join(drop, "holder.json"))
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(drop, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"tmpdir": sorted(os.listdir(tmpdir))}))
"""

# Looks for the holder's marker everywhere it could be, and tries to write into its TMPDIR.
SEEK = """\
    import json, os, sys
    request = json.load(sys.stdin)
    pid, tmpdir = request["pid"], request["tmpdir"]
    seen = []
    for top in SCRATCH:
        for folder, _, files in os.walk(top):
            seen += [os.path.join(folder, n) for n in files if n == "marker-holder"]
    tries = {}
    for path in (f"/proc/{pid}/root/tmp", f"/proc/{pid}/root" + tmpdir, f"/proc/{pid}/cwd"):
        try:
            tries[path] = sorted(os.listdir(path))
        except OSError as exc:
            tries[path] = exc.strerror
    for path in (os.path.join(tmpdir, "intruder"), f"/proc/{pid}/root{tmpdir}/intruder"):
        try:
            with open(path, "w") as f:
                f.write("x")
            tries["write " + path] = "written"
        except OSError as exc:
            tries["write " + path] = exc.strerror
    print(json.dumps({"seen": seen, "tries": tries}))
"""

# The host's folders anyone may write, each a run's own: named in every script above, after
# its imports. Listed here, not taken from the sandbox: this is what it must cover.
SCRATCH = tuple(
    root for root in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock") if os.path.isdir(root)
)
FILL, LOOK, HOLD, SEEK = (
    script.replace("\n", f"\n    SCRATCH = {SCRATCH!r}\n", 1) for script in (FILL, LOOK, HOLD, SEEK)
)

# A command actor: the same fill from a shell, through the exec path of the sandbox.
FILL_SH = f"""\
#!/bin/sh
i=0
while [ $i -lt {4 * TMP_MB * 4} ]; do
    head -c 262144 /dev/zero > /tmp/fill-$i || exit 3
    i=$((i + 1))
done
echo '{{"filled": true}}'
"""


@pytest.fixture(scope="module")
def sup() -> Iterator[RunningSupervisor]:
    """One supervisor for the module (public_tmp is per test): runs must reach its folder."""
    public = Path(tempfile.mkdtemp(prefix="actor-supervisor-test-"))
    public.chmod(0o755)
    drop = public / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    for name, body in (("fill.py", FILL), ("look.py", LOOK), ("hold.py", HOLD), ("seek.py", SEEK)):
        write_script(public, name, body)
    program = public / "scripts" / "fill.sh"
    program.write_text(FILL_SH)
    program.chmod(0o755)
    actors = "".join(
        f'[[actors]]\nname = "{name}"\nscript = "scripts/{script}"\nmode = "{mode}"\n'
        f"max_consecutive_failures = 0\n"
        for name, script, mode in (
            ("fill", "fill.py", "fork"),
            ("fill_exec", "fill.py", "exec"),
            ("look", "look.py", "fork"),
            ("hold", "hold.py", "fork"),
            ("seek", "seek.py", "exec"),
        )
    )
    actors += '[[actors]]\nname = "fill_sh"\ncommand = ["scripts/fill.sh"]\n'
    actors += "max_consecutive_failures = 0\n"
    running = start_supervisor(
        public, actors, settings=f"limits = {{ tmp_mb = {TMP_MB} }}\n", workers=2
    )
    with killed_after(running, public):
        yield running


def _submit(sup: RunningSupervisor, actor: str, data: Any = None) -> RunOutcome:
    with sup.client(timeout_s=90) as client:
        outcome = client.submit(actor, {} if data is None else data, wait=True)
    assert isinstance(outcome, RunOutcome)
    return outcome


def _report(outcome: RunOutcome) -> dict[str, Any]:
    """The fill script's last stderr line: what it wrote before the write that failed."""
    lines = [line for line in outcome.stderr_tail.splitlines() if line.startswith("{")]
    assert lines, outcome.stderr_tail
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def _host_leftovers() -> list[str]:
    """Files of the fill scripts in the host's own scratch folders."""
    return [
        os.path.join(folder, name)
        for folder in SCRATCH
        for name in os.listdir(folder)
        if name.startswith("fill-") or name == "marker-holder"
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("actor", ["fill", "fill_exec"])
def test_filling_every_scratch_folder_stops_at_tmp_mb_and_spares_the_host(
    sup: RunningSupervisor, actor: str
) -> None:
    outcome = _submit(sup, actor)

    assert outcome.status.startswith("failed"), outcome
    assert outcome.reason == "exit_code", (outcome.reason, outcome.error)  # the script's own
    assert "No space left on device" in outcome.stderr_tail, outcome.stderr_tail
    report = _report(outcome)
    assert report["errno"] == 28  # ENOSPC
    # The scratch folders share one tmpfs of TMP_MB: about that much fits, not a multiple.
    assert (TMP_MB - 2) * MIB <= report["written"] <= TMP_MB * MIB, report
    # Nothing it wrote is on the host (not the host's free space, which parallel tests and
    # other processes move by more than TMP_MB: a flaky measure, where ENOSPC at TMP_MB and
    # no leftovers are exact).
    assert _host_leftovers() == []

    status = sup.status()
    assert status["store"]["degraded"] is False, status["store"]
    assert status["supervisor"]["protections"]["private_tmp"] is True
    store = sup.store()
    try:
        records = store.list_runs(run_id=outcome.run_id)
    finally:
        store.close()
    assert records and all(r.status == outcome.status for r in records[-1:]), records
    assert records[-1].reason == "exit_code"

    after = _submit(sup, "look")  # the next run: a fresh, empty tmpfs of its own
    assert after.status == "succeeded", (after.reason, after.error, after.stderr_tail)
    assert all(names == [] for names in after.output["found"].values()), after.output
    assert after.output["size"] == TMP_MB * MIB
    assert after.output["used"] < MIB


@pytest.mark.timeout(120)
def test_a_command_actor_fills_only_its_own_tmpfs(sup: RunningSupervisor) -> None:
    outcome = _submit(sup, "fill_sh")
    assert (outcome.status, outcome.reason) == ("failed_permanent", "exit_code") or (
        outcome.status == "failed_retryable" and outcome.reason == "exit_code"
    ), (outcome.status, outcome.reason, outcome.error, outcome.stderr_tail)
    assert "No space left on device" in outcome.stderr_tail, outcome.stderr_tail
    assert _host_leftovers() == []
    assert sup.status()["store"]["degraded"] is False


@pytest.mark.timeout(120)
def test_a_run_cannot_see_or_write_another_running_runs_tmp(sup: RunningSupervisor) -> None:
    drop = Path(sup.folder) / "drop"
    answers: list[RunOutcome] = []
    holder = threading.Thread(
        target=lambda: answers.append(_submit(sup, "hold", {"drop": str(drop)})), daemon=True
    )
    holder.start()
    try:
        where = wait_for(
            lambda: (
                (drop / "holder.json").exists() and json.loads((drop / "holder.json").read_text())
            ),
            60,
            "the holder's marker",
        )
        seek = _submit(sup, "seek", where)
    finally:
        (drop / "release").touch()
        holder.join(90)
    assert seek.status == "succeeded", (seek.reason, seek.error, seek.stderr_tail)
    found = seek.output
    assert found["seen"] == [], found  # not in the seeker's /tmp, /var/tmp, /dev/shm
    for path, result in found["tries"].items():
        assert result != "written" and not isinstance(result, list), (path, found["tries"])
    assert answers and answers[0].status == "succeeded", answers
    assert answers[0].output == {"tmpdir": ["marker-holder"]}  # nothing of the seeker's

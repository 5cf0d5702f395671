"""Each mode of ``benchmarks/run.py`` from issue 13, run for real at a tiny size: the command a
person types, its JSON report, and the files it writes. Figures are not judged here (speed is
kept out of pass/fail tests); that every mode runs to the end and reports consistent counts is.
"""

import json
import os
import pstats
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def bench(*flags: str, timeout: float = 150) -> tuple[dict[str, Any], str]:
    """Run ``benchmarks/run.py FLAGS --json``; its report and its stderr (progress lines)."""
    done = subprocess.run(
        [sys.executable, str(RUN_PY), *flags, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("ACTOR_SUPERVISOR_")},
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report, done.stderr


@pytest.mark.timeout(180)
def test_actors_reports_idle_figures_and_the_lateness_of_every_run_of_a_burst() -> None:
    report, stderr = bench(
        "--actors", "30", "--burst", "12", "--idle-seconds", "1", "--fire-delay", "5",
        "--concurrency", "2",
    )  # fmt: skip
    idle, burst = report["idle"], report["burst"]
    assert idle["actors"] == 30
    assert idle["runs_fired"] == 0  # none of the idle actors was due while measured
    assert idle["startup_s"] > 0 and idle["rss_mb"] > 0 and idle["idle_cpu_pct"] >= 0
    assert burst["actors"] == 12 and burst["capacity"] == 4
    assert 1 <= burst["lateness_free_slot_runs"] <= 12
    assert 0 <= burst["queued_p50_ms"] <= burst["lateness_all_p50_ms"]
    assert burst["lateness_free_slot_p50_ms"] <= burst["lateness_free_slot_p99_ms"]
    assert burst["lateness_all_p99_ms"] <= burst["drain_s"] * 1000
    assert "burst runs 12/12" in stderr  # the progress line's last figures


@pytest.mark.timeout(120)
def test_flood_answers_every_submission_and_refuses_beyond_the_queue_as_busy() -> None:
    report, stderr = bench(
        "--flood", "400", "--queue-size", "40", "--flood-clients", "2", "--workers", "1"
    )
    assert report["submissions"] == 400
    assert report["accepted"] + report["busy"] + report["no_reply"] == 400
    assert report["busy"] > 0  # 400 at once into a queue of 40
    assert report["busy_rejections"] >= report["busy"]
    assert report["replies_dropped"] == report["no_reply"]  # a lost reply is a counted one
    assert report["runs_recorded"] + report["busy_rejections"] == 400  # each one or the other
    assert report["status_failures"] == 0 and report["status_requests"] > 0
    assert report["rss_peak_mb"] >= report["rss_start_mb"] > 0
    assert "submissions 400/400" in stderr


@pytest.mark.timeout(150)
def test_a_workers_sweep_draws_its_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    report, _ = bench("--runs", "20", "--workers", "1,2", "--plot", str(png))
    assert [p["workers"] for p in report["points"]] == [1, 2]
    assert all(p["runs_per_s"] > 0 and p["failures"] == 0 for p in report["points"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(150)
def test_throughput_is_reported_next_to_the_ceiling_by_runs_and_by_cpu() -> None:
    report, _ = bench("--runs", "30", "--preload", "json")
    assert report["runs"] > 0 and report["failures"] == 0
    ceiling, ceiling_cpu = report["ceiling_runs_per_s"], report["ceiling_cpu_ms_per_run"]
    assert ceiling > 0 and ceiling_cpu > 0  # the bare loops ran (benchmarks/ceiling.py)
    # the report divides unrounded figures, and prints each rounded: equal to a rounding's
    assert report["efficiency"] == pytest.approx(report["runs_per_s"] / ceiling, abs=0.002)
    total = report["cpu_ms_per_run"]["total"]
    assert report["cpu_efficiency"] == pytest.approx(ceiling_cpu / total, abs=0.002)


@pytest.mark.timeout(60)
def test_the_exec_ceiling_spawns_the_script_and_fails_loudly_when_it_cannot(
    tmp_path: Path,
) -> None:
    sys.path.insert(0, str(RUN_PY.parent))
    try:
        from run import measure_ceiling  # benchmarks/run.py
    finally:
        sys.path.remove(str(RUN_PY.parent))
    script = tmp_path / "noop.py"
    script.write_text("import json, sys\njson.dump(json.load(sys.stdin), sys.stdout)\n")
    rate, cpu_ms = measure_ceiling("exec", 2, 4, script, sys.executable)
    assert rate > 0 and cpu_ms > 0
    script.write_text("raise SystemExit(3)\n")
    with pytest.raises(SystemExit, match="the ceiling's loop failed"):
        measure_ceiling("exec", 1, 1, script, sys.executable)


@pytest.mark.timeout(150)
def test_profile_writes_a_cprofile_file_of_the_supervisor_and_says_how_to_read_it(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "supervisor.prof"
    report, stderr = bench("--runs", "40", "--profile", str(profile), "--preload", "json")
    assert report["runs"] > 0 and report["failures"] == 0
    # a run's queued, running and final rows: three transactions at most, fewer when runs
    # share them (the margin: the loop's own periodic writes)
    assert 0 < report["store_commits_per_run"] <= 4
    assert f"python -m pstats {profile}" in stderr
    stats = pstats.Stats(str(profile))
    functions = {name for _, _, name in stats.stats}  # type: ignore[attr-defined]
    assert "_loop" in functions  # the supervisor's main loop, profiled


@pytest.mark.timeout(150)
@pytest.mark.skipif(
    not (Path(sys.executable).with_name("py-spy").exists() or shutil.which("py-spy")),
    reason="py-spy is not installed (the 'profile' extra)",
)
def test_profile_to_an_svg_samples_the_supervisor_with_py_spy(tmp_path: Path) -> None:
    flame = tmp_path / "supervisor.svg"
    report, stderr = bench("--flood", "300", "--queue-size", "50", "--profile", str(flame))
    assert report["accepted"] > 0
    assert "sampling the supervisor with py-spy" in stderr
    assert flame.read_text().lstrip().startswith("<?xml") and "_loop" in flame.read_text()


def test_bad_sweeps_are_refused_with_a_reason() -> None:
    for flags, reason in [
        (["--workers", "1,2", "--clients", "1,2"], "one of --workers and --clients"),
        (["--plot", "x.png"], "--plot draws a sweep"),
        (["--workers", "0,2"], "at least 1"),
        (["--actors", "5", "--workers", "1,2"], "one --workers"),
    ]:
        done = subprocess.run(
            [sys.executable, str(RUN_PY), *flags], capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0 and reason in done.stderr, (flags, done.stderr)


@pytest.mark.timeout(120)
def test_workflow_runs_every_item_through_every_step_and_times_a_conversation() -> None:
    report, _ = bench(
        "--workflow", "--workflow-items", "12", "--conversation-queries", "5",
        "--query-rows", "500",
    )  # fmt: skip
    flow, plain = report["workflow"], report["plain"]
    assert (flow["items"], flow["status"], flow["errors"]) == (12, "succeeded", 0)
    assert (plain["runs"], plain["errors"]) == (36, 0)  # the same 12 x 3 step runs, plain
    assert report["ratio"] > 0 and flow["cpu_ms_per_step_run"] > 0
    (query,) = report["conversation_query"]
    assert query["queries"] == 5 and query["p50_ms"] <= query["p99_ms"]

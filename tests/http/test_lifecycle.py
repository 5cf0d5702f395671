"""The HTTP process's life: started with the supervisor, restarted when it dies, stopped with it."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import free_port, wait_for
from tests.http.conftest import HttpSupervisor, actors_toml
from tests.uids import session_uids


def http_child(sup_pid: int) -> psutil.Process:
    children = psutil.Process(sup_pid).children()
    found = [c for c in children if "supervisor.http" in " ".join(c.cmdline())]
    assert len(found) == 1, [c.cmdline() for c in children]
    return found[0]


@pytest.mark.timeout(90)
def test_health_ready_and_restart_after_kill(http_sup: HttpSupervisor) -> None:
    body = http_sup.http.get("/health").json()
    assert body["status"] == "healthy"
    checks = body["checks"]
    assert checks["workers_ready"] == checks["workers_total"] == 2
    assert checks["queue_capacity"] == 10000 and checks["store_degraded"] is False
    assert {"uptime_s", "version", "paused_actors", "oldest_queued_age_s"} <= set(checks)
    assert http_sup.http.get("/ready").json() == {"ready": True}

    child = http_child(http_sup.sup.proc.pid)
    child.kill()
    child.wait(10)

    def back() -> bool:
        try:
            return http_sup.http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(back, 30, "the HTTP process to be restarted")
    assert http_child(http_sup.sup.proc.pid).pid != child.pid
    assert "http: the HTTP process exited" in http_sup.sup.log()


@pytest.mark.timeout(90)
def test_draining_supervisor_is_not_ready_nor_healthy(http_sup: HttpSupervisor) -> None:
    accepted = http_sup.http.post("/api/v1/actors/sleepy/runs", json={"seconds": 30})
    assert accepted.status_code == 202
    wait_for(lambda: http_sup.http.get("/health").json()["checks"]["runs_in_flight"] == 1,
             20, "the sleepy run to be in flight")  # fmt: skip
    http_sup.sup.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: http_sup.http.get("/ready").status_code == 503, 10, "/ready to say 503")
    assert http_sup.http.get("/ready").json() == {"ready": False, "reason": "draining"}
    health = http_sup.http.get("/health")
    assert health.status_code == 503 and "draining" in health.json()["reasons"]


@pytest.mark.timeout(60)
def test_supervisor_stops_the_http_process(http_sup: HttpSupervisor) -> None:
    child = http_child(http_sup.sup.proc.pid)
    assert http_sup.sup.stop() == 0
    wait_for(lambda: not psutil.pid_exists(child.pid), 10, "the HTTP process to exit")
    with pytest.raises(httpx.TransportError):
        http_sup.http.get("/health")


def _start(folder: Path, extra: str) -> subprocess.CompletedProcess[str]:
    config = folder / "supervisor.toml"
    config.write_text(
        f'[supervisor]\ncontrol = "ipc://{folder}/c.sock"\n{extra}\n'
        f'run_as_range = "{session_uids()[0]}-{session_uids()[-1]}"\n' + actors_toml(folder)
    )
    return subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=folder,
    )  # fmt: skip


@pytest.mark.timeout(90)
def test_start_up_refuses_non_loopback_without_token_and_a_taken_port(public_tmp: Path) -> None:
    done = _start(public_tmp, f'http_listen = "0.0.0.0:{free_port()}"')
    assert done.returncode == 4, done.stderr
    assert "http_token_file" in done.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _start(public_tmp, f'http_listen = "127.0.0.1:{port}"')
    assert done.returncode == 4, done.stderr
    assert "cannot listen" in done.stderr


def test_http_flag_and_environment_variable_set_http_listen(public_tmp: Path) -> None:
    from supervisor.config import load_config

    config = public_tmp / "s.toml"
    config.write_text("[supervisor]\n")
    env = {"ACTOR_SUPERVISOR_HTTP_LISTEN": "127.0.0.1:9999"}
    assert load_config(config, overrides={}, environ=env).supervisor.http_listen == "127.0.0.1:9999"
    flag = load_config(config, overrides={"http_listen": "[::1]:8080"}, environ=env)
    assert flag.supervisor.http_listen == "[::1]:8080"
    from supervisor.errors import ConfigError

    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(config, overrides={"http_listen": "nonsense"}, environ={})

"""A control endpoint reachable from other hosts: CURVE keys or no start; strangers get nothing."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq.auth

from protocol.client import Client, ClientTimeout, RunOutcome
from protocol.curve import ClientKeys
from tests.helpers import free_port
from tests.supervisor.harness import ECHO, RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]


def _keys(folder: Path) -> dict[str, Path]:
    keys = folder / "keys"
    for name in ("server", "client", "stranger"):
        (keys / name).mkdir(parents=True)
        zmq.auth.create_certificates(keys / name, name)
    (keys / "server" / "server.key_secret").chmod(0o600)  # start refuses one a run could read
    allowed = keys / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((keys / "client" / "client.key").read_bytes())
    return {
        "server_secret": keys / "server" / "server.key_secret",
        "server_public": keys / "server" / "server.key",
        "client_secret": keys / "client" / "client.key_secret",
        "stranger_secret": keys / "stranger" / "stranger.key_secret",
        "allowed": allowed,
    }


def test_a_remote_endpoint_without_keys_refuses_to_start(public_tmp: Path) -> None:
    config = public_tmp / "supervisor.toml"
    config.write_text(f'[supervisor]\ncontrol = "tcp://0.0.0.0:{free_port()}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.cli", "start", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4
    assert "reachable from other hosts" in done.stderr and "control_curve_secret_key" in done.stderr


@pytest.mark.timeout(120)
def test_only_authorized_clients_are_answered(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "echo.py", ECHO)
    keys = _keys(public_tmp)
    port = free_port()
    config = public_tmp / "supervisor.toml"
    config.write_text(
        f"""
        [supervisor]
        control = "tcp://0.0.0.0:{port}"
        control_curve_secret_key = "{keys["server_secret"]}"
        control_curve_authorized_keys = "{keys["allowed"]}"

        [[actors]]
        name = "echo"
        script = "scripts/echo.py"
        """.replace("\n        ", "\n")
    )
    endpoint = f"tcp://127.0.0.1:{port}"
    sup = supervisors(config=config, endpoint=endpoint, wait_ready=False)
    good = ClientKeys.load(str(keys["server_public"]), str(keys["client_secret"]))
    bad = ClientKeys.load(str(keys["server_public"]), str(keys["stranger_secret"]))
    with Client(endpoint, timeout_s=60, curve=good) as client:
        outcome = client.submit("echo", {"secret": True}, wait=True)
        assert isinstance(outcome, RunOutcome) and outcome.output == {"echo": {"secret": True}}
    for curve in (bad, None):
        with Client(endpoint, timeout_s=2, curve=curve) as client, pytest.raises(ClientTimeout):
            client.status()
    assert sup.stop() == 0


@pytest.mark.timeout(120)
def test_loopback_tcp_without_keys_gets_generated_ones_that_the_cli_picks_up(
    public_tmp: Path, supervisors: Start
) -> None:
    """An operator's --control tcp://127.0.0.1:PORT: any local process could connect, so the
    supervisor guards it with a key pair set of its own, found again through --config."""
    write_script(public_tmp, "echo.py", ECHO)
    port = free_port()
    config = public_tmp / "supervisor.toml"
    config.write_text(
        f'[supervisor]\ncontrol = "tcp://127.0.0.1:{port}"\n'
        '[[actors]]\nname = "echo"\nscript = "scripts/echo.py"\n'
    )
    sup = supervisors(config=config)
    keys = public_tmp / "state" / "control-curve"
    assert {p.name: p.stat().st_mode & 0o777 for p in keys.iterdir()} == dict.fromkeys(
        ("client.key", "client.key_secret", "server.key", "server.key_secret"), 0o600
    )
    done = sup.cli("submit", "echo", "--input", '{"via": "cli"}', "--wait", "--json")
    assert done.returncode == 0, done.stderr
    assert '"output":{"echo":{"via":"cli"}}' in done.stdout
    with Client(f"tcp://127.0.0.1:{port}", timeout_s=2) as client, pytest.raises(ClientTimeout):
        client.status()  # no keys: the CURVE handshake never completes
    assert sup.stop() == 0
    again = supervisors(config=config)  # a restart keeps the keys the CLI already knows
    assert again.cli("status").returncode == 0
    assert again.stop() == 0

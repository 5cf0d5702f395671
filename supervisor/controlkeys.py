"""Who may talk to the control endpoint: the keys of each side, and a client built from them.

Scripts run on the same host as the supervisor, with the network, so a control endpoint that
any local process can reach is a way out of the sandbox. The default is an ``ipc://`` socket in
the state folder (0700: only the supervisor's user can connect). An operator may choose loopback
TCP instead; without configured CURVE keys, the supervisor then generates a key pair set in the
state folder at its first start (files 0600) and admits only that client key, which the CLI and
:func:`client_for` pick up from the same configuration. Other hosts always need configured keys.
"""

import os
import tempfile
from pathlib import Path

import zmq.auth

from protocol.client import Client
from protocol.curve import ClientKeys, CurveKeyError
from supervisor.config import Config
from supervisor.errors import ConfigError
from supervisor.settings import (
    SupervisorSettings,
    require_curve,
)
from supervisor.settings_addresses import (
    is_loopback,
    resolve_endpoint,
)
from supervisor.settings_kinds import STATE_DIR

GENERATED_DIR = "control-curve"  # inside the state folder


def state_folder(config: Config) -> Path:
    """The folder the supervisor keeps private: store, spool, control socket, keys."""
    return config.base_dir / STATE_DIR


def generates_keys(settings: SupervisorSettings) -> bool:
    """Loopback TCP without configured keys: the supervisor's own generated pair guards it."""
    return (
        settings.control.startswith("tcp://")
        and is_loopback(settings.control)
        and settings.control_curve_secret_key is None
    )


def server_keys(config: Config) -> tuple[str, str] | None:
    """The server's secret certificate and the authorized client keys, or None for none.

    Generates the key pair set on first use (the state folder must exist).
    :raises ConfigError: the endpoint is reachable from other hosts and has no keys.
    """
    settings = config.supervisor
    require_curve(settings, server=True)
    if settings.control_curve_secret_key and settings.control_curve_authorized_keys:
        return settings.control_curve_secret_key, settings.control_curve_authorized_keys
    if not generates_keys(settings):
        return None
    folder = _generated(state_folder(config) / GENERATED_DIR)
    return str(folder / "server.key_secret"), str(folder / "client.key")


def client_for(config: Config, *, timeout_s: float = 10.0) -> Client:
    """A client of the supervisor ``config`` describes, with the keys its endpoint needs.

    :raises ConfigError: the keys are missing, unreadable (another user's state folder) or
        not certificates; or the endpoint is reachable from other hosts and has none.
    """
    files = client_key_files(config)
    curve = None
    if files is not None:
        try:
            curve = ClientKeys.load(*files)
        except CurveKeyError as exc:
            raise ConfigError(
                f"control {config.supervisor.control}: {exc} (the supervisor writes these keys at "
                "its first start; run this command as the supervisor's user, with its --config)"
            ) from exc
    return Client(control_endpoint(config), timeout_s=timeout_s, curve=curve)


def client_key_files(config: Config) -> tuple[str, str] | None:
    """``(server public key, client secret key)`` files a client of ``config`` connects with:
    the configured pair, the generated one (loopback TCP), or None (ipc needs none).

    :raises ConfigError: the endpoint is reachable from other hosts and has no keys.
    """
    settings = config.supervisor
    require_curve(settings, server=False)
    if settings.control_curve_server_key and settings.control_curve_client_key:
        return settings.control_curve_server_key, settings.control_curve_client_key
    if generates_keys(settings):
        folder = state_folder(config) / GENERATED_DIR
        return str(folder / "server.key"), str(folder / "client.key_secret")
    return None


def control_endpoint(config: Config) -> str:
    """Where the control endpoint is: a relative ipc path is relative to the config's folder.

    :raises ConfigError: the socket path is too long for a unix socket.
    """
    return resolve_endpoint(config.supervisor.control, config.base_dir)


def _generated(folder: Path) -> Path:
    """``folder`` holding a server and a client certificate pair, created once, atomically."""
    if folder.is_dir():
        return folder
    temp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))  # 0700
    try:
        for name in ("server", "client"):
            for written in zmq.auth.create_certificates(temp, name):
                os.chmod(written, 0o600)
        os.rename(temp, folder)
    except OSError:
        for path in temp.iterdir():
            path.unlink()
        temp.rmdir()
        if not folder.is_dir():  # not a concurrent start that got there first
            raise
    return folder

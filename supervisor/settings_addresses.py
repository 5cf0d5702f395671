"""Address kinds: the control endpoint and the HTTP listen address, and helpers on them."""

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError
from supervisor.settings_kinds import Kind

IPC_PATH_MAX = 107  # bytes: a unix socket path must fit sockaddr_un.sun_path with its NUL


@dataclass(frozen=True, slots=True)
class Endpoint(Kind):
    """A ZeroMQ endpoint the supervisor binds and clients connect to; kept as written (a relative
    ``ipc://`` path is resolved where it is used, by :func:`resolve_endpoint`)."""

    @property
    def expected(self) -> str:
        return "a ZeroMQ endpoint 'tcp://HOST:PORT' or 'ipc://PATH'"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        if value.startswith("ipc://") and len(value) > len("ipc://"):
            return value
        match = _TCP.match(value)
        if not match or not 1 <= int(match["port"]) <= 65535:
            raise self._wrong(value)
        return value


def resolve_endpoint(endpoint: str, base_dir: Path) -> str:
    """``endpoint`` with a relative ``ipc://`` path made absolute against the configuration's
    folder (as ``database`` is), so the supervisor and the CLI find the same socket from any
    working directory.

    :raises ConfigError: the socket path is longer than a unix socket address can hold.
    """
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):  # tcp, abstract
        return endpoint
    path = os.path.normpath(base_dir / Path(endpoint[len("ipc://") :]).expanduser())
    size = len(os.fsencode(path))
    if size > IPC_PATH_MAX:
        raise ConfigError(
            f"control: the socket path {path!r} is {size} bytes, more than a unix socket "
            f"address holds ({IPC_PATH_MAX}); move the configuration to a shorter folder or "
            "choose another endpoint with --control"
        )
    return f"ipc://{path}"


_TCP = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})$")


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint is reachable only from this host (ipc, or tcp on loopback)."""
    match = _TCP.match(endpoint)
    if match is None:
        return endpoint.startswith("ipc://")
    host = match["host"].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name or '*': other hosts may reach it
        return False


@dataclass(frozen=True, slots=True)
class HttpListen(Kind):
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) the operator HTTP server listens on; empty: off."""

    @property
    def expected(self) -> str:
        return "'HOST:PORT' (such as '127.0.0.1:8080') or '' (off)"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        text: str = value.strip()
        if text and split_listen(text) is None:
            raise self._wrong(value)
        return text


def split_listen(listen: str) -> tuple[str, int] | None:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; None when malformed."""
    match = _TCP.match("tcp://" + listen)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        return None
    return match["host"].strip("[]"), int(match["port"])

"""Start, watch and stop the HTTP process: the supervisor's side of the operator surface.

Why a process of its own: request handling (JSON, templates, Prometheus text for a thousand
actors) would otherwise hold the loop's GIL. The child talks to the supervisor over the control
endpoint, like the CLI, and reads the store read-only.

The supervisor binds the listening socket itself, before its workers start: a taken port or a
bad address refuses start-up at once, and a restarted child inherits the same socket, so no
connection attempt is refused while it comes back. The child's settings go in on its stdin
(the database URL may hold a password: never on a command line). Its exit is seen through a
``pidfd`` registered in the loop's poller; it is restarted with a growing delay.
"""

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from supervisor.config import Config
from supervisor.controlkeys import client_key_files, control_endpoint, state_folder
from supervisor.errors import StartupError
from supervisor.settings_addresses import split_listen

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0  # a child that lived this long starts the backoff afresh
TOKEN_FILE = "http-token"  # inside the state folder, when no http_token_file is configured


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The bearer token in ``path`` (surrounding whitespace removed); at least 16 characters."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"http_token_file: cannot read {path!r}: {exc}") from exc
    if len(token) < 16 or any(c.isspace() for c in token):
        raise StartupError(
            f"http_token_file: {path!r} must hold one token of at least 16 characters"
        )
    return token


def token_file(config: Config) -> Path:
    """The file holding the HTTP token: ``http_token_file``, else the generated one in the state
    folder (it may not exist yet: see :func:`generated_token`)."""
    configured = config.supervisor.http_token_file
    return Path(configured) if configured is not None else state_folder(config) / TOKEN_FILE


def generated_token(path: Path) -> Path:
    """``path`` holding a random token, written once (0600, atomically) and kept across starts.

    The token is written to a private temporary file beside it, then linked into place: a
    reader never sees a partial file, and two starts at once keep the first one's token.
    """
    if path.exists():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # a concurrent start's token stands
            os.link(temp, path)
    finally:
        os.unlink(temp)
    return path


class HttpSide:
    """The HTTP child process of one supervisor; does nothing when ``http_listen`` is empty."""

    def __init__(self, payload: dict[str, Any] | None, sock: socket.socket | None) -> None:
        self._payload = payload
        self._socket = sock
        self._proc: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None
        self._started_at = 0.0
        self._failures = 0
        self._respawn_at: float | None = None
        self.restarts = 0

    @classmethod
    def prepare(cls, config: Config) -> "HttpSide":
        """Check the settings and bind the socket. :raises StartupError: refused."""
        s = config.supervisor
        if not s.http_listen:
            return cls(None, None)
        parts = split_listen(s.http_listen)
        assert parts is not None  # the setting's kind checked it
        host, port = parts
        if s.http_token_file is None and not is_loopback_host(host):
            raise StartupError(
                f"http_listen: {s.http_listen!r} is reachable from other hosts; set "
                "http_token_file (a bearer token), or listen on a loopback address"
            )
        # Always a token: scripts share the host and its loopback, so an open listener would
        # hand them every run's input and output and the pause/trigger buttons.
        tokens = token_file(config)
        if s.http_token_file is None:
            try:
                generated_token(tokens)
            except OSError as exc:
                raise StartupError(f"http: cannot write the token file {tokens}: {exc}") from exc
        read_token(str(tokens))  # refuse an unreadable or empty one now
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            family, _, _, _, address = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError as exc:
            raise StartupError(f"http_listen: cannot listen on {s.http_listen}: {exc}") from exc
        sock.set_inheritable(True)
        keys = client_key_files(config) or (None, None)
        payload = {
            "listen": s.http_listen,
            "address": list(sock.getsockname()[:2]),
            "token_file": str(tokens),
            "control": control_endpoint(config),
            "curve_server_key": keys[0],
            "curve_client_key": keys[1],
            "database": s.database,
            "base_dir": str(config.base_dir),
            "log_level": s.log_level,
            "log_format": s.log_format,
            "supervisor_pid": os.getpid(),
        }
        return cls(payload, sock)

    @property
    def enabled(self) -> bool:
        return self._payload is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._payload is None or self._socket is None:
            return
        fd = self._socket.fileno()
        payload = {**self._payload, "fd": fd}
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.http"],
            stdin=subprocess.PIPE,
            pass_fds=(fd,),
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
        )
        assert proc.stdin is not None
        try:
            proc.stdin.write(orjson.dumps(payload))
            proc.stdin.close()
        except OSError as exc:  # it died at once: seen through the sentinel like any exit
            log.error("http: could not hand the settings to the HTTP process: %s", exc)
        self._proc = proc
        self._pidfd = os.pidfd_open(proc.pid)
        self._started_at = time.monotonic()
        self._respawn_at = None
        log.info(
            "http: dashboard at http://%s/ (sign in with the token in %s)",
            self._payload["listen"], self._payload["token_file"],
            extra={"event": "http_started", "pid": proc.pid},
        )  # fmt: skip

    def sentinel(self) -> int | None:
        """A file descriptor that becomes readable when the process exits (None: none running)."""
        return self._pidfd

    def on_exit(self) -> None:
        """The process exited on its own: record it and plan the restart."""
        if self._proc is None:
            return
        code = self._proc.wait()
        self._close_pidfd()
        self._proc = None
        lived = time.monotonic() - self._started_at
        self._failures = 1 if lived >= STABLE_S else self._failures + 1
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        self._respawn_at = time.monotonic() + delay
        self.restarts += 1
        log.error(
            "http: the HTTP process exited with %s after %.1fs; restarting in %.1fs",
            code, lived, delay, extra={"event": "http_exited", "exit_code": code},
        )  # fmt: skip

    def maintain(self, *, respawn: bool) -> None:
        if respawn and self._respawn_at is not None and time.monotonic() >= self._respawn_at:
            self.start()

    def stop(self) -> None:
        """Graceful stop (SIGTERM: uvicorn finishes the requests in progress), then SIGKILL."""
        self._respawn_at = None
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log.warning("http: the HTTP process ignored SIGTERM; killing it")
                proc.kill()
                proc.wait()
        self._close_pidfd()
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

"""CURVE authentication and encryption for a control endpoint reachable from other hosts.

Keys are ZeroMQ certificate files, as written by ``zmq.auth.create_certificates`` (or the
``curve_keygen`` tool): the server holds its secret certificate and a file or folder of the
client public certificates it accepts; each client holds the server's public certificate and
its own secret certificate. A client whose key is not listed never gets a reply.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class CurveKeyError(ValueError):
    """A key file is missing, unreadable or not the kind of certificate expected."""


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """What a client needs: the server's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def load(cls, server_public_file: str, client_secret_file: str) -> "ClientKeys":
        server_public, _ = _load(server_public_file, need_secret=False)
        public, secret = _load(client_secret_file, need_secret=True)
        assert secret is not None
        return cls(server_public=server_public, public=public, secret=secret)

    def apply(self, sock: "zmq.Socket[Any]") -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def secure_server(
    ctx: "zmq.Context[Any]", sock: "zmq.Socket[Any]", secret_file: str, authorized: str
) -> ThreadAuthenticator:
    """Make ``sock`` (before it binds) a CURVE server that admits only ``authorized`` keys.

    Returns the authenticator thread, which the caller stops when it closes the socket.
    """
    public, secret = _load(secret_file, need_secret=True)
    allowed = allowed_keys(authorized)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_Allowed(allowed))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def allowed_keys(path: str) -> frozenset[bytes]:
    """The public keys in one certificate file, or in every ``*.key`` file of a folder."""
    folder = Path(path)
    files = sorted(folder.glob("*.key")) if folder.is_dir() else [folder]
    keys = frozenset(_load(str(f), need_secret=False)[0] for f in files)
    if not keys:
        raise CurveKeyError(f"{path}: no public key certificates (*.key) found")
    return keys


class _Allowed:
    """The authenticator's callback: is this client key one of ours?"""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys


def _load(path: str, *, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveKeyError(f"{path}: not a readable ZeroMQ certificate: {exc}") from exc
    if need_secret and not secret:
        raise CurveKeyError(f"{path}: holds no secret key (use the .key_secret certificate)")
    return public, secret

"""Whether a PostgreSQL store lets anyone in without a password: a run could then connect.

Runs with network access reach whatever the host reaches. A server whose ``pg_hba.conf``
trusts local TCP connections (a common development set-up, and this project's CI) accepts the
store's own user from any process of the host, runs included: a script would read every run's
input and output and forge results. Only the server can say, so we ask it the way a run would:
the start of a connection (protocol 3.0) as the store's user, to its database, without a
password, from a child switched to the runs' user (:func:`workers.access.problems_as_user`).
Ready for a query means it would be let in; a password or SASL request, an error (no such role,
a rejecting ``pg_hba`` line, SSL required) means it would not.
"""

import os
import pwd
import socket
import struct
from typing import Any

PROTOCOL_3 = 196608
AUTH_OK = 0
TIMEOUT_S = 3.0
MAX_MESSAGES = 100  # ParameterStatus and the like before ReadyForQuery: about fifteen
MAX_MESSAGE_BYTES = 1 << 16
_SOCKETS = "/var/run/postgresql"  # libpq's usual default socket folder


def address_of(url: str) -> tuple[str, int, str, str] | None:
    """``(host, port, user, database)`` of a single-host PostgreSQL URL or conninfo, with
    libpq's defaults (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``, else the socket
    folder, 5432, our own user name, the user's name); ``host`` is a folder for a Unix socket.
    None when it names several hosts (not probed)."""
    from psycopg.conninfo import conninfo_to_dict  # here: a SQLite store never loads psycopg

    params: dict[str, Any] = conninfo_to_dict(url)
    env = os.environ
    host = str(params.get("host") or params.get("hostaddr") or env.get("PGHOST") or _SOCKETS)
    if "," in host:
        return None
    port = int(str(params.get("port") or env.get("PGPORT") or 5432))
    user = str(params.get("user") or env.get("PGUSER") or pwd.getpwuid(os.geteuid()).pw_name)
    return host, port, user, str(params.get("dbname") or env.get("PGDATABASE") or user)


Endpoint = tuple[int, Any]  # (address family, socket address), resolved


def endpoint_of(host: str, port: int) -> Endpoint | None:
    """Where to connect, resolved here: the probe runs as a user that may not be able to
    import what name resolution loads lazily (the ``idna`` codec). None: no such host."""
    if host.startswith("/"):
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, IndexError):
        return None
    return family, address


def lets_in_without_password(endpoint: Endpoint, user: str, database: str) -> bool:
    """Whether the server lets ``user`` into ``database`` without any password, asked now."""
    family, address = endpoint
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False
    with sock:
        fields = b"".join(
            key + b"\0" + value.encode() + b"\0"
            for key, value in ((b"user", user), (b"database", database))
        )
        body = struct.pack("!i", PROTOCOL_3) + fields + b"\0"
        try:
            sock.settimeout(TIMEOUT_S)
            sock.connect(address)
            sock.sendall(struct.pack("!i", len(body) + 4) + body)
            return _let_in(sock)
        except (OSError, ValueError, struct.error):
            return False


def _let_in(sock: socket.socket) -> bool:
    """Read the server's messages: in once ReadyForQuery ('Z') follows an AuthenticationOk;
    out at an ErrorResponse ('E': no such role or database, pg_hba rejects, SSL required) or a
    request for a password ('R' with another code). A trust line answers AuthenticationOk before
    it checks the role, so that alone proves nothing."""
    for _ in range(MAX_MESSAGES):
        head = _read(sock, 5)
        if len(head) < 5:
            return False
        kind, size = head[:1], struct.unpack("!i", head[1:])[0]
        if not 4 <= size <= MAX_MESSAGE_BYTES:
            return False
        body = _read(sock, size - 4)
        if kind == b"Z":
            sock.sendall(b"X\0\0\0\4")  # Terminate: a clean goodbye, not an EOF in its log
            return True
        if kind == b"E" or (kind == b"R" and struct.unpack("!i", body[:4])[0] != AUTH_OK):
            return False
    return False


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data

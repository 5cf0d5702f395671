"""Hostile scripts against a PostgreSQL store whose server trusts local connections (as this
project's CI server does): a run with network access connects as the store's user and reads
another run's input. The sandbox cannot close that -- the server's pg_hba.conf is the host's --
so start and check name it, asking the server as the runs' user would, and an actor with
``network = "none"`` cannot connect over TCP."""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import pg
from tests.hostile.common import check_report, output_of
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs are another user only as root")

# The PostgreSQL protocol with the standard library: a startup message, a simple query, and the
# rows' text values. What any script could do; not psycopg, which the run may not import.
THIEF = r"""
import json, socket, struct, sys
request = json.load(sys.stdin)
found = {"rows": [], "error": None}
try:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no name lookup (no idna)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", request["port"]))
    body = struct.pack("!i", 196608) + b"user\0" + request["user"].encode() + b"\0database\0"
    body += request["database"].encode() + b"\0\0"
    sock.sendall(struct.pack("!i", len(body) + 4) + body)
    query = b"SELECT input_json::text FROM runs WHERE actor = 'victim'\0"
    sent = False
    buffer = b""
    while True:
        while len(buffer) < 5 or len(buffer) < 1 + struct.unpack("!i", buffer[1:5])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buffer += chunk
        size = struct.unpack("!i", buffer[1:5])[0]
        kind, payload, buffer = buffer[:1], buffer[5:1 + size], buffer[1 + size:]
        if kind == b"E":
            raise PermissionError(payload.decode(errors="replace"))
        if kind == b"D":
            length = struct.unpack("!i", payload[2:6])[0]
            found["rows"].append(payload[6:6 + length].decode())
        if kind == b"Z":
            if sent:
                break
            sock.sendall(b"Q" + struct.pack("!i", len(query) + 4) + query)
            sent = True
except Exception as exc:
    found["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(found))
"""

ACTORS = "".join(
    f'[[actors]]\nname = "{name}"\nscript = "scripts/{script}"\n{extra}'
    for name, script, extra in (
        ("victim", "echo.py", ""),
        ("thief", "thief.py", ""),
        ("offline", "thief.py", 'network = "none"\n'),  # the same script, without network
    )
)


@pytest.fixture
def database() -> Iterator[str]:
    with pg.fresh_database() as name:
        yield name


def test_a_store_that_lets_runs_in_is_named_by_start_and_check(
    public_tmp: Path, supervisors: Start, database: str
) -> None:
    write_script(public_tmp, "echo.py", "import sys; print(sys.stdin.read())")
    write_script(public_tmp, "thief.py", THIEF)
    url = pg.database_url(database)
    sup = supervisors(ACTORS, settings=f'database = "{url}"\n')
    params = {"port": pg.server_port(), "user": "postgres", "database": database}
    with sup.client() as client:
        assert client.submit("victim", {"card": "4111-secret"}, wait=True).succeeded
        stolen = output_of(client.submit("thief", params, wait=True))
        offline = output_of(client.submit("offline", params, wait=True))
    if stolen["error"] is not None:
        pytest.skip(f"this server does not let runs in ({stolen['error']}): nothing to name")
    assert any("4111-secret" in row for row in stolen["rows"]), stolen  # the hole, shown
    assert offline["rows"] == [] and offline["error"] is not None, offline  # no network
    warning = "the store's server lets the runs' user in without a password"
    assert warning in sup.log(), sup.log()
    assert f"127.0.0.1:{pg.server_port()}: user" in sup.log()
    report = check_report(sup.config_path)
    assert any(warning in w for w in report["warnings"]), report

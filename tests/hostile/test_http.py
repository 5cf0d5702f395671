"""A hostile script against the operator's HTTP server on loopback.

Scripts have the network, loopback included, so ``127.0.0.1:8080`` is in their reach as the
control channel was (issue 8). The server always has a token (here the one the supervisor
generates into its state folder, 0600): a script gets 401 for the API and the dashboard, can
read neither another run's input nor the token file, and cannot pause anyone. The operator, with
the token, still can.
"""

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from supervisor.http.auth import SESSION_COOKIE, session_value
from tests.helpers import free_port
from tests.hostile.common import is_paused, output_of
from tests.supervisor.harness import RunningSupervisor, write_script

Start = Callable[..., RunningSupervisor]
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="scripts run as another user only as root")

# Only the standard library, and only what a sandboxed script can import wherever Python is
# installed (here a plain socket speaking HTTP/1.1; http.client may sit in a folder the sandbox
# user cannot read): what any script can do on the host's loopback.
ATTACKER = """\
    import json, os, socket, sys

    request = json.load(sys.stdin)
    port, run, victim = request["port"], request["run"], request["victim"]
    report = {"uid": os.getuid(), "http": {}, "token_file": None}

    def exchange(method, path, body=b"", headers=None):
        lines = [method + " " + path + " HTTP/1.1", "Host: 127.0.0.1:%d" % port,
                 "Connection: close", "Content-Length: %d" % len(body)]
        lines += [k + ": " + v for k, v in (headers or {}).items()]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(("\\r\\n".join(lines) + "\\r\\n\\r\\n").encode() + body)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, rest = data.partition(b"\\r\\n\\r\\n")
        head = head.decode("latin-1").split("\\r\\n")
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields.setdefault(name.strip().lower(), value.strip())
        return int(head[0].split()[1]), fields, rest.decode("latin-1")

    def call(method, path, body=b"", headers=None):
        key = method + " " + path + (" " + json.dumps(headers) if headers else "")
        try:
            status, fields, text = exchange(method, path, body, headers)
            report["http"][key] = {"status": status, "headers": fields, "body": text[:20000]}
        except (OSError, ValueError, IndexError) as exc:
            report["http"][key] = {"status": None, "body": type(exc).__name__}

    for path in ["/api/v1/runs", "/api/v1/runs/" + run, "/api/v1/runs/" + run[:8],
                 "/api/v1/events?run=" + run, "/api/v1/actors", "/api/v1/openapi.json",
                 "/", "/actors", "/actors/" + victim, "/runs/" + run, "/events",
                 "/events?run=" + run]:
        call("GET", path)
    call("POST", "/api/v1/actors/" + victim + "/pause", b'{"reason": "pwned"}',
         {"Content-Type": "application/json"})
    call("POST", "/api/v1/actors/" + victim + "/trigger")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    call("POST", "/ui/actors/" + victim + "/pause", b"reason=pwned&next=/actors", form)
    # guessed credentials: a forged session cookie, an empty or a made-up bearer token
    call("GET", "/runs/" + run, headers={"Cookie": "as_session=" + "0" * 64})
    call("GET", "/api/v1/runs/" + run, headers={"Authorization": "Bearer "})
    call("GET", "/api/v1/runs/" + run, headers={"Authorization": "Bearer " + "A" * 43})
    # a guessed token through the sign-in form, with a valid CSRF pair (the form is open to all)
    try:
        _, fields, page = exchange("GET", "/login")
        cookie = fields.get("set-cookie", "").split(";")[0]
        field = page.split('name="csrf" value="')[1].split('"')[0]
        call("POST", "/login", ("token=guess-" + "x" * 40 + "&csrf=" + field).encode(),
             {**form, "Cookie": cookie})
    except (OSError, ValueError, IndexError) as exc:
        report["http"]["POST /login"] = {"status": None, "body": repr(exc)}
    # what stays open on loopback: probes, which carry no run data
    for path in ["/health", "/ready", "/metrics"]:
        call("GET", path)
    try:
        with open(request["token_file"], "rb") as handle:
            report["token_file"] = "read %d bytes" % len(handle.read())
    except OSError as exc:
        report["token_file"] = type(exc).__name__
    print(json.dumps(report))
"""

SECRETIVE = """\
    import json, sys
    request = json.load(sys.stdin)
    print(json.dumps({"kept": request}))
"""

PROBES = ("GET /health", "GET /ready", "GET /metrics")


@as_root
@pytest.mark.timeout(240)
def test_a_script_cannot_use_the_http_server(public_tmp: Path, supervisors: Start) -> None:
    write_script(public_tmp, "attacker.py", ATTACKER)
    write_script(public_tmp, "secretive.py", SECRETIVE)
    port = free_port()
    actors = (
        '\n[[actors]]\nname = "attacker"\nscript = "scripts/attacker.py"\ntimeout_s = 60\n'
        '\n[[actors]]\nname = "victim"\nscript = "scripts/secretive.py"\n'
    )
    sup = supervisors(actors, settings=f'http_listen = "127.0.0.1:{port}"\n')
    token_file = public_tmp / "state" / "http-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    secret = "s3cret-" + os.urandom(8).hex()
    with sup.client(timeout_s=60) as client:
        victim_run = client.submit("victim", {"password": secret}, wait=True)
        assert output_of(victim_run) == {"kept": {"password": secret}}
        attack = {"port": port, "run": victim_run.run_id, "victim": "victim",
                  "token_file": str(token_file)}  # fmt: skip
        report = output_of(client.submit("attacker", attack, wait=True))

    assert report["uid"] != 0  # the sandbox user, not the supervisor's
    answers = report["http"]
    assert len(answers) == 22, sorted(answers)
    refused = {k: v["status"] for k, v in answers.items() if k not in PROBES}
    assert set(refused.values()) == {401}, refused  # every call reached the server: refused
    assert {answers[k]["status"] for k in PROBES} <= {200, 503}  # open on loopback, no run data
    received = orjson.dumps(report).decode()
    assert secret not in received and token not in received
    assert report["token_file"] == "PermissionError"
    assert not is_paused(sup, "victim")
    store = sup.store()
    try:  # the trigger did not get through: the victim ran once, for the operator
        assert [r.run_id for r in store.list_runs(actor="victim")] == [victim_run.run_id]
    finally:
        store.close()

    # The operator, with the token, can do all of it.
    base = f"http://127.0.0.1:{port}"
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=bearer, timeout=30) as http:
        assert http.get("/api/v1/runs").status_code == 200
        shown = http.get(f"/api/v1/runs/{victim_run.run_id}")
        assert shown.status_code == 200 and secret in shown.text
        assert http.post("/api/v1/actors/victim/pause", json={"reason": "operator"}).json()[
            "paused"
        ]
        assert is_paused(sup, "victim")
    with httpx.Client(base_url=base, timeout=30) as browser:
        browser.cookies.set(SESSION_COOKIE, session_value(token))
        for path in ("/", "/actors", "/actors/victim", f"/runs/{victim_run.run_id}", "/events"):
            assert browser.get(path).status_code == 200, path
        assert secret in browser.get(f"/runs/{victim_run.run_id}").text
    assert token not in sup.log() and token not in str(sup.status())

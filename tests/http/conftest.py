"""A real supervisor with its HTTP process on a free loopback port, and an HTTP client."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for
from tests.supervisor.harness import ECHO, RunningSupervisor, start_supervisor, write_script

SLEEPY = """\
    import json, sys, time
    time.sleep(json.load(sys.stdin).get("seconds", 1))
    print("{}")
"""
FAIL = """\
    import sys
    sys.stderr.write("failing on purpose\\n")
    sys.exit(3)
"""
FLAKY = """\
    import sys
    sys.exit(75)  # EX_TEMPFAIL: a retryable failure
"""


def versioned(n: int) -> str:
    """A script that says which version of it ran (``dbcode`` runs its stored code)."""
    return f"""\
    import json, sys
    json.load(sys.stdin)
    print(json.dumps({{"version": {n}}}))
"""


@dataclass
class HttpSupervisor:
    sup: RunningSupervisor
    base: str
    http: httpx.Client  # the operator's client: it sends the token
    token: str

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy() -> bool:
            try:
                return self.http.get("/health").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, "GET /health to answer 200")


def actors_toml(folder: Path) -> str:
    write_script(folder, "echo.py", ECHO)
    write_script(folder, "fail.py", FAIL)
    write_script(folder, "sleepy.py", SLEEPY)
    write_script(folder, "flaky.py", FLAKY)
    write_script(folder, "dbcode.py", versioned(1))
    return """
[[actors]]
name = "echo"
script = "scripts/echo.py"

[[actors]]
name = "fail"
script = "scripts/fail.py"
max_consecutive_failures = 0

[[actors]]
name = "sleepy"
script = "scripts/sleepy.py"
timeout_s = 60

[[actors]]
name = "ticker"
script = "scripts/echo.py"
schedule = { type = "interval", seconds = 3600 }

[[actors]]
name = "flaky"
script = "scripts/flaky.py"
max_retries = 2
retry_backoff_s = 0.05
retry_jitter = false
max_consecutive_failures = 0

[[actors]]
name = "dbcode"
script = "scripts/dbcode.py"
exec_mode = "database"
"""


def generated_token(folder: Path) -> str:
    """The token the supervisor generated into its state folder (the test reads it as the
    supervisor's user, as an operator would)."""
    return (folder / "state" / "http-token").read_text().strip()


def start_http(
    folder: Path, settings: str = "", token: str | None = None, env: dict[str, str] | None = None
) -> HttpSupervisor:
    """``token``: written to ``http_token_file``; None: the supervisor generates one."""
    port = free_port()
    extra = f'http_listen = "127.0.0.1:{port}"\n' + settings
    if token is not None:
        (folder / "token").write_text(token + "\n")
        (folder / "token").chmod(0o600)  # start refuses a token file the runs could read
        extra += 'http_token_file = "token"\n'
    sup = start_supervisor(folder, actors_toml(folder), settings=extra, env=env)
    if token is None:
        token = generated_token(folder)
    headers = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0, headers=headers)
    running = HttpSupervisor(sup, f"http://127.0.0.1:{port}", client, token)
    running.wait_healthy()
    return running


@pytest.fixture
def http_sup(public_tmp: Path) -> Iterator[HttpSupervisor]:
    running = start_http(public_tmp)
    try:
        yield running
    finally:
        running.http.close()
        running.sup.stop()

"""A supervisor in a temporary folder for the benchmarks' own modes (``--actors``, ``--flood``).

It differs from the one ``run.py`` starts for throughput in three ways the scale benchmarks
need: the actors are given as TOML, the run uids are a block of their own (so the benchmark
can run while a test suite or another benchmark holds the default range), and start-up is timed
to the supervisor's own ``READY=1`` (systemd's notify protocol, on a socket of ours), which it
sends once its actors are seeded and its loop is about to run, without asking ``status``, whose
reply grows with the number of actors.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
from profiling import supervisor_command, wait_samplers

from protocol.client import Client, ClientError

NOOP_SCRIPT = """\
import json, sys
json.dump({"ok": True, "echo": json.load(sys.stdin)}, sys.stdout)
"""
MB = 1024 * 1024


class BenchError(Exception):
    """The benchmark could not measure what it was asked to (the message says why)."""


def uid_block(size: int) -> str:
    """A ``run_as_range`` of ``size`` uids far above systemd's DynamicUser block (which the
    default range and the test sessions' ranges share), picked by pid so that two benchmarks
    running at once rarely collide."""
    low = 1_000_000 + 1024 * (os.getpid() % 4096)
    return f"{low}-{low + max(size, 1) - 1}"


class BenchSupervisor:
    """Writes the folder, starts ``actor-supervisor start`` on it, stops it; a context manager.

    ``settings``: extra ``[supervisor]`` lines; ``actors``: the ``[[actors]]`` tables, whose
    scripts may name ``scripts/noop.py``.
    """

    def __init__(
        self,
        *,
        workers: int,
        concurrency: int,
        mode: str,
        database: str | None,
        actors: str,
        settings: str = "",
        profile: str | None = None,
        keep: bool = False,
    ) -> None:
        # not /tmp/actor-supervisor-*: that is where supervisors' runtime folders are swept
        self.folder = Path(tempfile.mkdtemp(prefix="bench-supervisor-"))
        self.endpoint = f"ipc://{self.folder}/control.sock"
        self.database = database or "sqlite:state/bench.db"
        self.workers = workers
        self._profile = profile
        self._keep = keep
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched_at = 0.0  # monotonic, just before the process was started
        self.ready_at: float | None = None  # monotonic, when READY=1 arrived
        scripts = self.folder / "scripts"
        scripts.mkdir()
        (scripts / "noop.py").write_text(NOOP_SCRIPT)
        for path in (self.folder, scripts):
            path.chmod(0o755)
        self.config = self.folder / "supervisor.toml"
        self.config.write_text(
            f"""[supervisor]
workers = {workers}
concurrency = {concurrency}
mode = "{mode}"
database = "{self.database}"
control = "{self.endpoint}"
log_level = "warning"
run_as_range = "{uid_block(workers * concurrency)}"
shutdown_grace_s = 5
kill_grace_s = 1
{settings}
{actors}"""
        )

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervisor; :meth:`wait_ready` then times its start-up."""
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self.folder / "notify.sock"))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.folder / "notify.sock")}
        env.pop("WATCHDOG_USEC", None)
        self._log = open(self.folder / "supervisor.log", "wb")  # noqa: SIM115 - closed in stop
        self.launched_at = time.monotonic()
        self.proc = subprocess.Popen(
            supervisor_command(self.config, self._profile),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
            env=env,
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from process start to ``READY=1`` (actors seeded, loop about to run)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.ready_at is None:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"the supervisor exited with {self.proc.returncode} before it was ready; "
                    f"its log: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"the supervisor was not ready within {timeout_s:.0f} s")
            self._notify.settimeout(0.2)
            try:
                message = self._notify.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in message.split(b"\n"):
                self.ready_at = time.monotonic()
        return self.ready_at - self.launched_at

    def wait_workers(self, timeout_s: float) -> None:
        """Until every worker said hello (``status``: once, so keep the actors few here)."""
        deadline = time.monotonic() + timeout_s
        with Client(self.endpoint, timeout_s=timeout_s) as client:
            while time.monotonic() < deadline:
                try:
                    workers = client.status()["workers"]
                except ClientError as exc:
                    raise BenchError(f"status failed while waiting for workers: {exc}") from exc
                if sum(w["ready"] for w in workers) == self.workers:
                    return
                time.sleep(0.1)
        raise BenchError(f"the workers were not ready within {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 300.0) -> int | None:
        """SIGTERM, then wait (a profiled supervisor writes its profile as it exits)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        wait_samplers()
        self._log.close()
        self._notify.close()
        return code

    def __enter__(self) -> "BenchSupervisor":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            if not self._keep:
                shutil.rmtree(self.folder, ignore_errors=True)

    # --- what the benchmarks read -----------------------------------------------------------

    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.folder / "supervisor.log").read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def store_url(self) -> str:
        """The store's URL, a relative SQLite path made absolute."""
        if self.database.startswith("sqlite:") and not self.database.startswith("sqlite:/"):
            return "sqlite:" + str(self.folder / self.database.removeprefix("sqlite:"))
        return self.database

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` from the supervisor's store, over a connection of our own."""
        url = self.store_url()
        if url.startswith("sqlite:"):
            import sqlite3

            with sqlite3.connect(url.removeprefix("sqlite:"), timeout=30) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(url) as conn:
            return conn.execute(sql).fetchall()


def peak_rss_mb(proc: psutil.Process) -> float:
    """The process's peak RSS so far (``VmHWM``): no sample can miss a short peak."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(proc.memory_info().rss / MB, 1)

"""The worker process on its own: a real spawned worker against a ROUTER the test owns."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import multiprocess
import orjson
import psutil
import pytest
import zmq

from protocol.codec import decode, encode
from protocol.messages import Hello, Result, Stop
from tests.helpers import write_script
from tests.workers.conftest import RUN_AS, make_run
from workers.sandbox import SandboxConfig
from workers.scoreboard import Scoreboard, SlotState
from workers.worker import WorkerSpec, worker_main


class Harness:
    """The supervisor's side of one worker: a ROUTER, a scoreboard and the process."""

    def __init__(self, folder: Path) -> None:
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{folder}/workers.sock"
        self.router.bind(endpoint)
        self.board = Scoreboard.create(1)
        spec = WorkerSpec(
            worker_id="w0.1",
            slot=0,
            endpoint=endpoint,
            scoreboard_path=str(self.board.path),
            scoreboard_slots=1,
            supervisor_pid=os.getpid(),
            capacity=2,
            sandbox=SandboxConfig(worker_id="w0.1", env_allow=("PATH",), run_as=RUN_AS),
        )
        self.process = multiprocess.get_context("spawn").Process(target=_main, args=(spec,))
        self.process.start()

    def receive(self, timeout: float = 30.0) -> object:
        assert self.router.poll(int(timeout * 1000)), "nothing from the worker"
        identity, body = self.router.recv_multipart()
        assert identity == b"w0.1"
        return decode(body)

    def send(self, body: bytes) -> None:
        self.router.send_multipart([b"w0.1", body])

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.router.close()
        self.ctx.term()
        self.board.close()


def _main(spec: WorkerSpec) -> None:
    raise SystemExit(worker_main(spec))


@pytest.fixture
def worker(public_tmp: Path) -> Iterator[Harness]:
    harness = Harness(public_tmp)
    yield harness
    harness.close()


@pytest.mark.timeout(60)
def test_worker_relays_runs_and_keeps_its_slot(public_tmp: Path, worker: Harness) -> None:
    hello = worker.receive()
    assert isinstance(hello, Hello) and hello.capacity == 2 and hello.pid == worker.process.pid
    assert psutil.Process(hello.launcher_pid).ppid() == hello.pid
    script = write_script(
        public_tmp, "echo.py", "import json,sys\nprint(json.dumps(json.load(sys.stdin)))\n"
    )
    run = make_run(script, "fork", input_json='{"x": 1}')
    worker.send(encode(run))
    result = worker.receive()
    assert isinstance(result, Result)
    assert (result.run_id, result.status, result.output) == (run.run_id, "succeeded", {"x": 1})
    assert result.worker_id == "w0.1"
    view = worker.board.read(0)
    assert (view.pid, view.state, view.runs_done, view.in_flight) == (
        worker.process.pid, SlotState.READY, 1, 0,
    )  # fmt: skip
    assert view.run_id == run.run_id and view.child_pid > 0
    assert view.heartbeat_age() < 5

    failing = make_run(write_script(public_tmp, "fail.py", "raise SystemExit(3)\n"), "fork")
    worker.send(encode(failing))
    failed = worker.receive()
    assert isinstance(failed, Result) and (failed.status, failed.exit_code) == (
        "failed_permanent", 3,
    )  # fmt: skip
    view = worker.board.read(0)
    assert (view.runs_done, view.runs_failed) == (2, 1)


@pytest.mark.timeout(60)
def test_worker_drops_malformed_messages_and_keeps_working(
    public_tmp: Path, worker: Harness
) -> None:
    assert isinstance(worker.receive(), Hello)
    for body in [b"garbage", b'{"v": 1, "type": "run"}', b'{"v": 2, "type": "stop"}',
                 orjson.dumps({"v": 1, "type": "hello", "worker_id": "x", "pid": 1,
                               "launcher_pid": 1, "capacity": 1}), os.urandom(64)]:  # fmt: skip
        worker.send(body)
    worker.router.send_multipart([b"w0.1", b"two", b"frames"])
    script = write_script(public_tmp, "ok.py", "print('{}')\n")
    run = make_run(script, "fork")
    worker.send(encode(run))
    result = worker.receive()
    assert isinstance(result, Result) and result.status == "succeeded"
    assert worker.process.is_alive()
    deadline = time.monotonic() + 10.0  # counted in its slot (for status), written with a beat
    while worker.board.read(0).bad_messages < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.board.read(0).bad_messages >= 5


@pytest.mark.timeout(60)
def test_stop_with_kill_ends_runs_in_flight_and_the_worker(
    public_tmp: Path, worker: Harness
) -> None:
    assert isinstance(worker.receive(), Hello)
    script = write_script(public_tmp, "forever.py", "import time\ntime.sleep(600)\n")
    run = make_run(script, "fork", timeout_s=600.0)
    worker.send(encode(run))
    deadline = time.monotonic() + 20
    while worker.board.read(0).child_pid == 0:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    worker.send(encode(Stop(kill=True)))
    result = worker.receive()
    assert isinstance(result, Result) and (result.status, result.reason) == (
        "failed_retryable", "shutdown",
    )  # fmt: skip
    worker.process.join(20)
    assert worker.process.exitcode == 0


@pytest.mark.timeout(60)
def test_a_worker_whose_launcher_dies_exits_so_it_can_be_replaced(worker: Harness) -> None:
    hello = worker.receive()
    assert isinstance(hello, Hello)
    os.kill(hello.launcher_pid, signal.SIGKILL)
    worker.process.join(20)
    assert worker.process.exitcode == 4  # EXIT_LAUNCHER_GONE

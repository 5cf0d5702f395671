"""Encode/decode: every message round-trips; anything malformed is one clear ProtocolError."""

import contextlib
import random

import orjson
import pytest

from protocol import MAX_BODY_BYTES, ProtocolError, decode, encode
from protocol.codec import request_id_of
from protocol.messages import (
    CLIENT_REQUESTS,
    Cancel,
    CancelRun,
    Hello,
    Limits,
    Pause,
    Refresh,
    Reply,
    Rerun,
    Result,
    Resume,
    Run,
    Rusage,
    StatusRequest,
    Stop,
    Submit,
    Trigger,
)

RUN = Run(
    run_id="r" * 32,
    attempt=2,
    actor="heartbeat",
    script="/srv/actors/heartbeat.py",
    cwd="/srv/actors",
    mode="exec",
    input_json='{"greeting": "hi"}',
    env={"LOG_LEVEL": "info"},
    limits=Limits(cpu_s=10, memory_mb=256, nofile=64, nproc=32, fsize_mb=10, output_kb=512),
    timeout_s=30.0,
    code_sha256="ab" * 32,
)
RESULT = Result(
    run_id="r" * 32,
    attempt=2,
    worker_id="w0.1",
    status="failed_permanent",
    reason="exit_code",
    exit_code=3,
    output={"error": "nope", "nested": [1, 2.5, None, "ü"]},
    stderr_tail="Traceback ...\n",
    error="nope",
    duration_ms=12.5,
    started_at=1_780_000_000.25,
    finished_at=1_780_000_000.5,
    child_pid=4242,
    rusage=Rusage(utime_s=0.01, stime_s=0.002, maxrss_kb=9000),
)
MESSAGES = [
    Hello(worker_id="w0.1", pid=10, launcher_pid=11, capacity=2),
    RUN,
    RESULT,
    Stop(kill=True),
    Submit(id="q1", actor="a", input={"x": [1, 2]}, wait=True, idempotency_key="k"),
    Trigger(id="q2", actor="a", input=None, force=True),
    Pause(id="q3", actor="a", reason="maintenance"),
    Resume(id="q4", actor="a"),
    StatusRequest(id="q5"),
    Refresh(id="q7", actor="a"),
    Rerun(id="q8", run_id="r" * 32, wait=True),
    Cancel(id="q9", run_id="r" * 32),
    CancelRun(run_id="r" * 32, attempt=3),
    Reply(id="q6", ok=False, kind="error", error="busy", message="queue full"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.type)
def test_every_message_round_trips(message: object) -> None:
    body = encode(message)  # type: ignore[arg-type]
    assert orjson.loads(body)["v"] == 1
    assert decode(body) == message


def _body(**changes: object) -> bytes:
    obj = orjson.loads(encode(RUN))
    obj.update(changes)
    return orjson.dumps({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"v": 2}, "unsupported protocol version: 2, expected 1"),
        ({"v": _DROP}, "unsupported protocol version: None"),
        ({"type": "launch"}, "unknown message type 'launch'"),
        ({"type": 7}, "unknown message type 7"),
        ({"attempt": "2"}, "run.attempt: expected an integer, got str"),
        ({"attempt": True}, "run.attempt: expected an integer, got bool"),
        ({"attempt": 0}, "run.attempt: must be >= 1, got 0"),
        ({"run_id": _DROP}, "run.run_id: expected a non-empty string, got nothing"),
        ({"run_id": "x" * 65}, "run.run_id: longer than 64 characters"),
        ({"mode": "thread"}, "run.mode: expected one of ['exec', 'fork'], got 'thread'"),
        ({"env": {"A": 1}}, "run.env.A: expected a string"),
        ({"limits": []}, "run.limits: expected an object, got list"),
        ({"limits": {"output_kb": 1, "stderr_kb": 1, "cpu_s": "x"}}, "run.limits.cpu_s"),
        ({"timeout_s": -1}, "run.timeout_s: must be >= 0.001"),
        ({"limits": {"output_kb": 8193, "stderr_kb": 8}}, "run.limits.output_kb: must be <= 8192"),
        ({"limits": {"output_kb": 1, "stderr_kb": 1025}}, "run.limits.stderr_kb: must be <= 1024"),
    ],
)
def test_malformed_fields_name_the_problem(changes: dict[str, object], expected: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_body(**changes))
    assert expected in str(info.value)


def test_result_with_unknown_reason_is_rejected() -> None:
    obj = orjson.loads(encode(RESULT))
    obj["reason"] = "gremlins"
    with pytest.raises(ProtocolError, match=r"result\.reason: unknown value 'gremlins'"):
        decode(orjson.dumps(obj))


def test_type_not_accepted_on_this_socket_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="message type 'run' is not accepted here"):
        decode(encode(RUN), CLIENT_REQUESTS)


def test_oversized_body_is_rejected_before_parsing() -> None:
    body = b'{"v":1,"type":"status","id":"' + b"x" * MAX_BODY_BYTES + b'"}'
    with pytest.raises(ProtocolError, match="message too large"):
        decode(body)


@pytest.mark.parametrize("body", [b"", b"\x00\xff", b"[]", b"null", b"42", b'"run"', b"{"])
def test_non_objects_and_garbage_are_rejected(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: m.type)
def test_every_truncation_of_a_valid_message_is_a_protocol_error(message: object) -> None:
    body = encode(message)  # type: ignore[arg-type]
    for cut in range(len(body)):
        with pytest.raises(ProtocolError):
            decode(body[:cut])


def test_random_frames_only_ever_raise_protocol_error() -> None:
    rng = random.Random(20261129)
    valid = [encode(m) for m in MESSAGES]  # type: ignore[arg-type]
    for _ in range(5000):
        kind = rng.random()
        if kind < 0.3:
            body = rng.randbytes(rng.randrange(0, 200))
        elif kind < 0.8:  # flip bytes of a valid message
            body = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 6)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body)
        else:  # valid JSON, wrong shapes
            obj = orjson.loads(rng.choice(valid))
            key = rng.choice(list(obj))
            obj[key] = rng.choice([None, 0, -1, 1.5, "", [], {}, True, "x" * 5000])
            body = orjson.dumps(obj)
        with contextlib.suppress(ProtocolError):
            decode(body)


def test_request_id_is_recovered_from_an_invalid_request() -> None:
    assert request_id_of(b'{"id": "abc", "type": "submit"}') == "abc"
    assert request_id_of(b"not json") == ""
    assert request_id_of(b'{"id": 5}') == ""

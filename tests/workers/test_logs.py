"""Structured log lines: key=value text or one JSON object per line, extras included."""

import logging

import orjson
import pytest

from workers.logs import JsonFormatter, TextFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.getLogger("supervisor.core").makeRecord(
        "supervisor.core", logging.WARNING, __file__, 1, "run %s", ("failed_permanent",), None
    )
    record.__dict__.update(extra)
    return record


def test_text_lines_carry_extras_as_key_value_quoting_when_needed() -> None:
    line = TextFormatter().format(_record(actor="echo", attempt=2, error="exit 3 (boom)"))
    assert " WARNING supervisor.core[" in line
    assert line.endswith('run failed_permanent actor=echo attempt=2 error="exit 3 (boom)"')


def test_json_lines_are_one_object_with_every_extra() -> None:
    obj = orjson.loads(JsonFormatter().format(_record(actor="echo", duration_ms=1.5)))
    assert obj["level"] == "warning" and obj["logger"] == "supervisor.core"
    assert (obj["msg"], obj["actor"], obj["duration_ms"]) == ("run failed_permanent", "echo", 1.5)
    assert obj["ts"].endswith("Z")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_exceptions_are_included(formatter: logging.Formatter) -> None:
    try:
        raise ValueError("kaput")
    except ValueError:
        import sys

        record = _record()
        record.exc_info = sys.exc_info()
    assert "ValueError: kaput" in formatter.format(record)


def test_an_extra_named_pid_does_not_replace_the_pid_of_the_process_that_logged() -> None:
    """``log.info("worker ready", extra={"pid": worker_pid})`` used to overwrite the line's
    pid with the worker's; the worker's now goes under ``extra_pid``."""
    record = logging.getLogger("supervisor.core").makeRecord(
        "supervisor.core", logging.INFO, __file__, 1, "worker ready", (), None,
        extra={"pid": 424242, "msg_id": 1},
    )  # fmt: skip
    obj = orjson.loads(JsonFormatter().format(record))
    assert obj["pid"] == record.process != 424242
    assert obj["extra_pid"] == 424242 and obj["msg_id"] == 1

"""Structured log lines on stderr, as text (``key=value``) or JSON, one line per record.

Structure comes from ``extra={...}``: ``log.info("run finished", extra={"run_id": ...})``
prints ``... run finished run_id=...``; with ``log_format = "json"`` every extra is a JSON field.
"""

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )


class TextFormatter(logging.Formatter):
    """``2026-11-29T15:15:24.123Z INFO supervisor.core[123]: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record.created)} {record.levelname} {record.name}[{record.process}]: "
            f"{record.getMessage()}"
        )
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in extras.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if text and " " not in text and '"' not in text else orjson.dumps(text).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg, then every extra.

    An extra named like a field of the line (``extra={"pid": worker_pid}``) must not replace
    it: the line's ``pid`` is always the process that logged. The extra goes under
    ``extra_<name>`` instead."""

    RESERVED = frozenset({"ts", "level", "logger", "pid", "msg", "exc"})

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj[f"extra_{key}" if key in self.RESERVED else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once per process (supervisor, workers, CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())

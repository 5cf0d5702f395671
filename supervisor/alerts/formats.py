"""What a receiver gets: the body in the destination's format, and its signature.

``json`` is the payload itself; ``slack`` and ``discord`` wrap a readable summary in what
their incoming webhooks accept. The signature covers the exact bytes sent.
"""

import hashlib
import hmac
from typing import Any

import orjson

SIGNATURE_HEADER = "X-Actor-Supervisor-Signature"
_DISCORD_MAX = 2000  # characters of a Discord message


def body(fmt: str, payload: dict[str, Any]) -> bytes:
    """The request body for ``fmt`` (``json``, ``slack`` or ``discord``)."""
    if fmt == "json":
        return orjson.dumps(payload)
    text = _text(payload)
    if fmt == "slack":
        return orjson.dumps({"text": text})
    if fmt == "discord":
        return orjson.dumps({"content": text[: _DISCORD_MAX - 1]})
    raise ValueError(f"unknown alert format {fmt!r}")


def signature(secret: str, data: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of data>``, the value of :data:`SIGNATURE_HEADER`."""
    return "sha256=" + hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _text(payload: dict[str, Any]) -> str:
    lines = [str(payload.get("summary") or payload.get("event"))]
    if payload.get("link"):
        lines.append(str(payload["link"]))
    tail = payload.get("stderr_tail")
    if tail:
        lines.append("```\n" + str(tail)[-1200:].rstrip() + "\n```")
    return "\n".join(lines)

"""Encode and decode messages.

``decode`` checks, in this order: size, JSON, object, protocol version, type (and whether that
type is expected on this socket), then each field. Any failure is one :class:`ProtocolError`
whose message says exactly what was wrong; nothing else escapes.
"""

import re
from collections.abc import Collection
from typing import Any

import orjson

from protocol.errors import ProtocolError
from protocol.fields import FieldReader
from protocol.messages import MESSAGE_TYPES, PROTOCOL_VERSION, Message

__all__ = ["MAX_BODY_BYTES", "PROTOCOL_VERSION", "decode", "decode_object", "encode"]

MAX_BODY_BYTES = 32 << 20


def encode(message: Message) -> bytes:
    """Serialize a message; dataclasses go straight through orjson."""
    return orjson.dumps(message)


def decode(body: bytes, expected: Collection[str] | None = None) -> Message:
    """Parse and validate one message body.

    :param expected: the message types this socket accepts; anything else is an error.
    :raises ProtocolError: on any problem, with a message naming it.
    """
    if len(body) > MAX_BODY_BYTES:
        raise ProtocolError(f"message too large: {len(body)} bytes (max {MAX_BODY_BYTES})")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"body is not valid JSON: {exc}") from exc
    return decode_object(obj, expected)


def decode_object(obj: Any, expected: Collection[str] | None = None) -> Message:
    """Validate an already-parsed message object (see :func:`decode`)."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python
        raise ProtocolError(
            f"unsupported protocol version: {version!r}, expected {PROTOCOL_VERSION}"
        )
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    cls = MESSAGE_TYPES[kind]
    if expected is not None and kind not in expected:
        raise ProtocolError(f"message type {kind!r} is not accepted here")
    try:
        message: Message = cls.read(FieldReader(kind, obj))
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # a reader met a shape it did not foresee
        raise ProtocolError(f"{kind}: {exc}") from exc
    return message


_ID_IN_HEAD = re.compile(rb'"id"\s*:\s*"([^"\\]{1,64})"')


def request_id_in_head(body: bytes) -> str:
    """The request id of a body too large to parse, found near its start (where encoders put
    ``v``, ``type`` and ``id``); "" when it is not there."""
    match = _ID_IN_HEAD.search(body, 0, 512)
    return match.group(1).decode("utf-8", "replace") if match else ""


def request_id_of(body: bytes) -> str:
    """Best-effort request id of a message that failed to decode, for the error reply."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) and len(rid) <= 64 else ""

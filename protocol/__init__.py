"""Wire protocol shared by the supervisor, its workers and its clients.

Every message is one orjson-encoded object with a protocol version ``v`` and a ``type``; see
:mod:`protocol.messages` for the types and :mod:`protocol.codec` for the rules.
"""

from protocol.codec import MAX_BODY_BYTES, PROTOCOL_VERSION, decode, encode
from protocol.errors import ProtocolError

__all__ = ["MAX_BODY_BYTES", "PROTOCOL_VERSION", "ProtocolError", "decode", "encode"]

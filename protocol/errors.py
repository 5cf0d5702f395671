"""Errors of the protocol package."""


class ProtocolError(ValueError):
    """A message was malformed, oversized, of an unknown type or of another protocol version."""

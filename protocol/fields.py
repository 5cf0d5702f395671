"""Typed, bounded access to the fields of a decoded message.

Each getter raises :class:`ProtocolError` naming the message type and the field, so that a bad
message is answered with an error that says exactly what was wrong.
"""

from collections.abc import Mapping
from typing import Any

from protocol.errors import ProtocolError

MAX_STR = 4096  # names, ids, reasons: anything but payloads
MAX_TEXT = 1 << 20  # stderr tails, error details


class FieldReader:
    """Reads fields of one message object; ``kind`` names the message in errors."""

    __slots__ = ("_kind", "_obj")

    def __init__(self, kind: str, obj: Mapping[str, Any]) -> None:
        self._kind = kind
        self._obj = obj

    def _fail(self, name: str, expected: str) -> ProtocolError:
        got = type(self._obj.get(name)).__name__ if name in self._obj else "nothing"
        return ProtocolError(f"{self._kind}.{name}: expected {expected}, got {got}")

    def string(self, name: str, *, max_len: int = MAX_STR, empty: bool = False) -> str:
        value = self._obj.get(name)
        if not isinstance(value, str) or (not empty and not value):
            raise self._fail(name, "a non-empty string" if not empty else "a string")
        if len(value) > max_len:
            raise ProtocolError(f"{self._kind}.{name}: longer than {max_len} characters")
        return value

    def opt_string(self, name: str, *, max_len: int = MAX_STR) -> str | None:
        if self._obj.get(name) is None:
            return None
        return self.string(name, max_len=max_len, empty=True)

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._obj.get(name)
        # type() first: what orjson makes is exactly int (never bool) in the common case
        if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
            raise self._fail(name, "an integer")
        if minimum is not None and value < minimum:
            raise ProtocolError(f"{self._kind}.{name}: must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ProtocolError(f"{self._kind}.{name}: must be <= {maximum}, got {value}")
        return value

    def opt_integer(self, name: str, *, minimum: int | None = None) -> int | None:
        if self._obj.get(name) is None:
            return None
        return self.integer(name, minimum=minimum)

    def number(self, name: str, *, minimum: float | None = None) -> float:
        value = self._obj.get(name)
        if type(value) is not float and (
            not isinstance(value, int | float) or isinstance(value, bool)
        ):
            raise self._fail(name, "a number")
        if minimum is not None and value < minimum:
            raise ProtocolError(f"{self._kind}.{name}: must be >= {minimum}, got {value}")
        return float(value)

    def boolean(self, name: str, *, default: bool | None = None) -> bool:
        value = self._obj.get(name, default)
        if not isinstance(value, bool):
            raise self._fail(name, "true or false")
        return value

    def choice(self, name: str, choices: frozenset[str]) -> str:
        value = self.string(name)
        if value not in choices:
            raise ProtocolError(
                f"{self._kind}.{name}: expected one of {sorted(choices)}, got {value!r}"
            )
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        value = self._obj.get(name)
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return value

    def str_map(self, name: str) -> dict[str, str]:
        value = self.mapping(name)
        for key, item in value.items():
            if not isinstance(item, str):
                raise ProtocolError(f"{self._kind}.{name}.{key}: expected a string")
        return value

    def str_list(self, name: str, *, max_items: int = 1024) -> tuple[str, ...]:
        """A list of strings; absent means empty."""
        value = self._obj.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._fail(name, "a list of strings")
        if len(value) > max_items or any(len(item) > MAX_STR for item in value):
            raise ProtocolError(f"{self._kind}.{name}: too many or too long strings")
        return tuple(value)

    def any(self, name: str) -> Any:
        """A JSON value of any type (payloads); absent means null."""
        return self._obj.get(name)

    def sub(self, name: str) -> "FieldReader":
        return FieldReader(f"{self._kind}.{name}", self.mapping(name))

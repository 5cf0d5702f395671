"""Value kinds: how one setting's values are checked, parsed from text, merged and shown.

Each :class:`Kind` checks a value from the file or a flag, parses one from an environment
variable, merges layers and says what a valid value looks like (for errors and ``--help``).
Checks raise :class:`Invalid`; the loader adds the file and key path to make a ``ConfigError``.
The declarations that use them are in :mod:`supervisor.settings`.
"""

import abc
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from protocol.messages import LIMIT_CAPS, Limits
from supervisor.schedule import did_you_mean

ENV_PREFIX = "ACTOR_SUPERVISOR_"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# The minimums protocol.messages.Limits.read enforces on the wire: checking them here turns a
# RUN message a worker would refuse into a configuration error at start-up.
LIMIT_MINIMUMS = {
    "cpu_s": 1, "memory_mb": 16, "nofile": 8, "nproc": 1, "fsize_mb": 0, "tmp_mb": 1,
    "output_kb": 1, "stderr_kb": 0,
}  # fmt: skip
UNLIMITED = "unlimited"
STATE_DIR = "state"  # beside the config file: store, spool, control socket and keys (0700)
# The longest duration a setting may hold: every timer of the supervisor, the worker and the
# launcher must be able to wait that long (epoll's timeout overflows near 24.8 days, and a
# retry time must stay a representable timestamp).
MAX_DURATION_S = 7 * 86400.0


class Invalid(ValueError):
    """A value failed its check; ``path`` names the entry inside it (``("cpu_s",)``, ``(2,)``)."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def under(self, *keys: str | int) -> "Invalid":
        """The same error, one or more levels further down."""
        return Invalid(self.message, *keys, *self.path)


def key_path(*parts: str | int) -> str:
    """``("actors", 2, "limits", "cpu_s")`` -> ``"actors[2].limits.cpu_s"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def describe(value: Any) -> str:
    """How a found value is shown in errors: ``string '4'``, ``boolean true``, ``a table``."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, datetime | date | time):
        return f"date-time {value.isoformat()}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def unknown_key(key: str, allowed: Iterable[str], what: str = "key") -> Invalid:
    """An error for an unexpected key, with a did-you-mean and the allowed keys."""
    names = sorted(allowed)
    hint = did_you_mean(key, names)
    hint_text = f" (did you mean {hint!r}?)" if hint else ""
    return Invalid(f"unknown {what}{hint_text}; allowed: {', '.join(names)}", key)


class Kind(abc.ABC):
    """How the values of one setting are checked, parsed from text, merged and shown."""

    @property
    @abc.abstractmethod
    def expected(self) -> str:
        """What a valid value looks like, for errors and ``--help``."""

    @abc.abstractmethod
    def check(self, value: Any) -> Any:
        """A value from the file or a flag, checked and normalized; raises :class:`Invalid`."""

    def parse(self, text: str) -> Any:
        """A value from an environment variable."""
        return self.check(text)

    def combine(self, default: Any, layers: Sequence[Any]) -> Any:
        """The effective value from checked layers, lowest precedence first."""
        return layers[-1] if layers else default

    def resolve(self, value: Any, base_dir: Path) -> Any:
        """A final check that needs the configuration's folder (paths)."""
        return value

    def to_json(self, value: Any) -> Any:
        return value

    def _wrong(self, value: Any) -> Invalid:
        return Invalid(f"expected {self.expected}, got {describe(value)}")


@dataclass(frozen=True, slots=True)
class Integer(Kind):
    minimum: int | None = None
    maximum: int | None = None

    @property
    def expected(self) -> str:
        return "an integer" + _bounds(self.minimum, self.maximum)

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {describe(value)}")
        _check_range(value, self.minimum, self.maximum)
        return value

    def parse(self, text: str) -> int:
        try:
            number = int(text.strip())
        except ValueError:
            raise Invalid(f"expected an integer, got {text!r}") from None
        return self.check(number)


@dataclass(frozen=True, slots=True)
class Number(Kind):
    """A finite number of seconds, milliseconds, ...; integers are accepted and made floats."""

    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False  # strictly greater than zero

    @property
    def expected(self) -> str:
        return "a positive number" if self.positive else "a number" + _bounds(self.minimum, None)

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._wrong(value)
        number = float(value)
        if not math.isfinite(number):
            raise Invalid(f"expected a finite number, got {value}")
        if self.positive and number <= 0:
            raise Invalid(f"must be > 0, got {value}")
        if self.maximum is not None and number > self.maximum:
            days = f" ({self.maximum / 86400:g} days)" if self.maximum >= 86400 else ""
            raise Invalid(f"must be <= {self.maximum:g}{days}, got {value}")
        _check_range(number, self.minimum, None)
        return number

    def parse(self, text: str) -> float:
        try:
            number = float(text.strip())
        except ValueError:
            raise Invalid(f"expected a number, got {text!r}") from None
        return self.check(number)


# Durations, at most MAX_DURATION_S: a delay or a grace may be zero, a timeout or a period not.
DELAY_S = Number(minimum=0, maximum=MAX_DURATION_S)
TIMEOUT_S = Number(positive=True, maximum=MAX_DURATION_S)


@dataclass(frozen=True, slots=True)
class Boolean(Kind):
    @property
    def expected(self) -> str:
        return "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self._wrong(value)
        return value

    def parse(self, text: str) -> bool:
        folded = text.strip().lower()
        if folded in ("1", "true", "yes", "on"):
            return True
        if folded in ("0", "false", "no", "off"):
            return False
        raise Invalid(f"expected true or false, got {text!r}")


@dataclass(frozen=True, slots=True)
class Choice(Kind):
    """One of a few words; matched case-insensitively and stored in lower case."""

    choices: tuple[str, ...]

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        folded = value.strip().lower()
        if folded not in self.choices:
            raise self._wrong(value)
        return folded


@dataclass(frozen=True, slots=True)
class Names(Kind):
    """Names of one kind: an array in the file, comma-separated in the environment; each
    checked against ``pattern`` (environment variable names unless told otherwise)."""

    one: str = "an environment variable name"
    many: str = "environment variable names"
    pattern: re.Pattern[str] = ENV_NAME

    @property
    def expected(self) -> str:
        return f"an array of {self.many}"

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise self._wrong(value)
        names: dict[str, None] = {}
        for index, name in enumerate(value):
            if not isinstance(name, str) or not self.pattern.match(name):
                glob = " (globs are not supported: list each name)" if "*" in str(name) else ""
                raise Invalid(f"expected {self.one}{glob}, got {describe(name)}", index)
            names[name] = None
        return tuple(names)

    def parse(self, text: str) -> tuple[str, ...]:
        return self.check([part.strip() for part in text.split(",") if part.strip()])

    def to_json(self, value: Any) -> Any:
        return list(value)


MODULES = Names("a Python module name such as 'urllib.parse'", "Python module names", MODULE_NAME)


@dataclass(frozen=True, slots=True)
class LimitsKind(Kind):
    """Resource limits, merged key by key over the layers below (defaults, then wider scopes).

    In TOML there is no null, so ``"unlimited"`` leaves an optional limit unset.
    """

    @property
    def expected(self) -> str:
        return "a table of limits (" + ", ".join(Limits.NAMES) + ")"

    def check(self, value: Any) -> dict[str, int | None]:
        if isinstance(value, Limits):
            return {name: getattr(value, name) for name in Limits.NAMES}
        if not isinstance(value, Mapping):
            raise self._wrong(value)
        checked: dict[str, int | None] = {}
        for name, limit in value.items():
            if name not in LIMIT_MINIMUMS:
                raise unknown_key(name, Limits.NAMES, "limit")
            checked[name] = self._limit(name, limit)
        return checked

    def parse(self, text: str) -> dict[str, int | None]:
        pairs: dict[str, Any] = {}
        for item in (part.strip() for part in text.split(",")):
            name, sep, raw = item.partition("=")
            if not item:
                continue
            if not sep:
                raise Invalid(f"expected name=value pairs such as 'cpu_s=10', got {item!r}")
            raw = raw.strip()
            pairs[name.strip()] = raw if raw == UNLIMITED else Integer().parse(raw)
        return self.check(pairs)

    def combine(self, default: Any, layers: Sequence[Any]) -> Limits:
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update(layer)
        base: Limits = default
        return dataclasses.replace(base, **merged)

    def to_json(self, value: Any) -> Any:
        return {name: getattr(value, name) for name in Limits.NAMES}

    @staticmethod
    def _limit(name: str, value: Any) -> int | None:
        optional = name not in ("output_kb", "stderr_kb")
        if optional and value == UNLIMITED:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            unset = f" or {UNLIMITED!r}" if optional else ""
            raise Invalid(f"expected an integer{unset}, got {describe(value)}", name)
        if value < LIMIT_MINIMUMS[name]:
            raise Invalid(f"must be >= {LIMIT_MINIMUMS[name]}, got {value}", name)
        if name in LIMIT_CAPS and value > LIMIT_CAPS[name]:  # what Limits.read accepts
            raise Invalid(f"must be <= {LIMIT_CAPS[name]}, got {value}", name)
        return value


@dataclass(frozen=True, slots=True)
class PublicUrl(Kind):
    """An http(s) base URL, or unset."""

    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            raise self._wrong(value)
        return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class Database(Kind):
    """Kept as written: the store resolves a relative SQLite path against the config folder."""

    @property
    def expected(self) -> str:
        return "'sqlite:PATH' or 'postgresql://...'"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        if value.startswith("sqlite:") and value[len("sqlite:") :].strip():
            return value
        if value.startswith(("postgresql://", "postgres://")):
            return value
        raise self._wrong(value)


@dataclass(frozen=True, slots=True)
class Folder(Kind):
    """A folder, kept as written: its user resolves a relative one against the config folder
    (as ``database`` does), so the defaults compare equal whatever the working directory."""

    @property
    def expected(self) -> str:
        return "a path to a folder"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            raise self._wrong(value)
        return value


@dataclass(frozen=True, slots=True)
class Word(Kind):
    """A non-empty string without whitespace (a user name, a uid)."""

    @property
    def expected(self) -> str:
        return "a non-empty word"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or any(c.isspace() for c in value):
            raise self._wrong(value)
        return value


@dataclass(frozen=True, slots=True)
class UidRange(Kind):
    """``"LOW-HIGH"``: a block of uids (each also used as a gid), neither 0 nor past 2^31."""

    @property
    def expected(self) -> str:
        return "'LOW-HIGH', two uids with 1 <= LOW <= HIGH < 2^31"

    def check(self, value: Any) -> tuple[int, int]:
        if isinstance(value, tuple | list) and len(value) == 2:
            value = f"{value[0]}-{value[1]}"
        if not isinstance(value, str):
            raise self._wrong(value)
        low, sep, high = value.strip().partition("-")
        if not (sep and low.strip().isdigit() and high.strip().isdigit()):
            raise self._wrong(value)
        bounds = (int(low), int(high))
        if not 1 <= bounds[0] <= bounds[1] < 1 << 31:
            raise self._wrong(value)
        return bounds

    def to_json(self, value: Any) -> Any:
        return f"{value[0]}-{value[1]}"


@dataclass(frozen=True, slots=True)
class OptionalPath(Kind):
    """A path that must exist, relative to the configuration's folder; stored absolute."""

    directory_ok: bool = False

    @property
    def expected(self) -> str:
        return "a path to a file or directory" if self.directory_ok else "a path to a file"

    def check(self, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self._wrong(value)
        return value

    def resolve(self, value: Any, base_dir: Path) -> Any:
        if value is None:
            return None
        path = (base_dir / Path(value).expanduser()).absolute()
        if not path.exists():
            raise Invalid(f"no such file: {str(path)!r}")
        if not path.is_file() and not (self.directory_ok and path.is_dir()):
            raise Invalid(f"expected {self.expected}, got {str(path)!r}")
        return str(path)


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    return ""


def _check_range(value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise Invalid(f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise Invalid(f"must be <= {maximum}, got {value}")


# --- [supervisor] -----------------------------------------------------------------------------

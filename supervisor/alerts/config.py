"""``[[alerts]]`` entries: where alerts go and which ones each destination wants.

Each entry is a ``webhook`` (an http(s) URL; optional ``secret`` to sign the body with
HMAC-SHA256, ``headers``, ``format``) or a ``command`` (an argv that gets the alert JSON on
stdin, confined like a run; its own ``limits`` override the ``[supervisor]`` ones key by
key). ``events`` names what it wants (or ``["*"]``), ``actors`` optionally narrows the
actor-bearing events to some actors (supervisor and store events always pass).
"""

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from supervisor.alerts.records import ALERT_EVENTS
from supervisor.errors import ConfigError
from supervisor.settings import (
    checked,
    config_error,
)
from supervisor.settings_kinds import (
    Choice,
    Integer,
    Invalid,
    Kind,
    LimitsKind,
    Number,
    describe,
    unknown_key,
)
from workers.confine import LIMIT_KEYS

FORMATS = ("json", "slack", "discord")
ALL = "*"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertConfig:
    """One ``[[alerts]]`` entry, validated. Exactly one of ``webhook`` and ``command`` is set."""

    name: str
    webhook: str | None = None
    command: tuple[str, ...] | None = None
    secret: str | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict)
    format: str = "json"
    timeout_s: float = 10.0
    events: frozenset[str]
    actors: frozenset[str] | None = None  # None: every actor
    max_attempts: int = 10
    retry_backoff_s: float = 5.0  # doubled after each failed attempt
    retry_backoff_max_s: float = 600.0
    limits: dict[str, int | None] = field(default_factory=dict)  # a command's, over [supervisor]

    def wants(self, event: str, actor: str | None) -> bool:
        if event not in self.events:
            return False
        return actor is None or self.actors is None or actor in self.actors

    def describe(self) -> dict[str, Any]:
        """For ``status``/``check``: everything but the secret and header values."""
        return {
            "name": self.name,
            "webhook": _without_credentials(self.webhook) if self.webhook else None,
            "command": list(self.command) if self.command else None,
            "signed": self.secret is not None,
            "headers": sorted(self.headers),
            "format": self.format,
            "events": sorted(self.events),
            "actors": sorted(self.actors) if self.actors is not None else None,
            "limits": dict(self.limits),
        }


class _Url(Kind):
    @property
    def expected(self) -> str:
        return "an http:// or https:// URL"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self._wrong(value)
        return value


class _Argv(Kind):
    @property
    def expected(self) -> str:
        return "a non-empty array of strings (the program and its arguments)"

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise self._wrong(value)
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item or "\0" in item:
                raise Invalid(f"expected a non-empty string, got {describe(item)}", index)
        return tuple(value)


class _Secret(Kind):
    @property
    def expected(self) -> str:
        return "a non-empty string"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self._wrong(value)
        return value


class _Headers(Kind):
    @property
    def expected(self) -> str:
        return "a table of HTTP header names to string values"

    def check(self, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self._wrong(value)
        for name, text in value.items():
            if not _HEADER.match(name):
                raise Invalid("not an HTTP header name", name)
            if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
                raise Invalid(f"expected a one-line string, got {describe(text)}", name)
        return dict(value)


class _Words(Kind):
    def __init__(self, allowed: Collection[str] | None, what: str) -> None:
        self._allowed, self._what = allowed, what

    @property
    def expected(self) -> str:
        return f"a non-empty array of {self._what}"

    def check(self, value: Any) -> frozenset[str]:
        if not isinstance(value, list) or not value:
            raise self._wrong(value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise Invalid(f"expected a string, got {describe(item)}", index)
            if self._allowed is not None and item not in self._allowed:
                raise Invalid(
                    f"unknown {self._what[:-1]} {item!r}; allowed: {', '.join(self._allowed)}",
                    index,
                )
        return frozenset(value)


class _Name(Kind):
    @property
    def expected(self) -> str:
        return "a name of 1-100 characters [A-Za-z0-9_.-]"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self._wrong(value)
        return value


_KEYS: dict[str, Kind] = {
    "name": _Name(),
    "webhook": _Url(),
    "command": _Argv(),
    "secret": _Secret(),
    "headers": _Headers(),
    "format": Choice(FORMATS),
    "timeout_s": Number(positive=True),
    "events": _Words((*ALERT_EVENTS, ALL), "events"),
    "actors": _Words(None, "actors"),
    "max_attempts": Integer(1, 1000),
    "retry_backoff_s": Number(positive=True),
    "retry_backoff_max_s": Number(positive=True),
    "limits": LimitsKind(),
}


def parse_alerts(entries: Any, where: str, actor_names: Collection[str]) -> tuple[AlertConfig, ...]:
    """The ``alerts`` array of tables; raise a :class:`ConfigError` naming file and key."""
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ConfigError(
            f"{where}alerts: expected an array of tables ([[alerts]]), got {describe(entries)}"
        )
    found: dict[str, int] = {}
    alerts: list[AlertConfig] = []
    for index, entry in enumerate(entries):
        alert = _alert(entry, f"{where}alerts[{index}]", index, actor_names)
        if alert.name in found:
            raise ConfigError(
                f"{where}alerts[{index}].name: duplicate alert name {alert.name!r} "
                f"(first defined at alerts[{found[alert.name]}])"
            )
        found[alert.name] = index
        alerts.append(alert)
    return tuple(alerts)


def _alert(
    entry: Mapping[str, Any], label: str, index: int, actor_names: Collection[str]
) -> AlertConfig:
    for key in entry:
        if key not in _KEYS:
            raise config_error(label, unknown_key(key, _KEYS))
    values: dict[str, Any] = {
        key: checked(_KEYS[key].check, raw, f"{label}.{key}") for key, raw in entry.items()
    }
    if ("webhook" in values) == ("command" in values):
        raise ConfigError(f"{label}: needs exactly one of webhook (a URL) and command (an argv)")
    if "command" in values:
        for key in ("secret", "headers", "format"):
            if key in values:
                raise ConfigError(f"{label}.{key}: only a webhook takes {key}")
    elif "limits" in values:
        raise ConfigError(f"{label}.limits: only a command takes limits")
    for key in values.get("limits", {}):  # a run's rlimits; its output caps mean nothing here
        if key not in LIMIT_KEYS:
            raise ConfigError(
                f"{label}.limits.{key}: not a limit of a command alert; "
                f"allowed: {', '.join(LIMIT_KEYS)}"
            )
    if "events" not in values:
        raise ConfigError(
            f"{label}.events: missing; name the events wanted ({', '.join(ALERT_EVENTS)}) or '*'"
        )
    if ALL in values["events"]:
        values["events"] = frozenset(ALERT_EVENTS)
    if unknown := sorted(values.get("actors", frozenset()) - set(actor_names)):
        raise ConfigError(f"{label}.actors: no such actor: {', '.join(unknown)}")
    values.setdefault("name", f"alert{index + 1}")
    if values.get("retry_backoff_max_s", 600.0) < values.get("retry_backoff_s", 5.0):
        raise ConfigError(f"{label}.retry_backoff_max_s: must be >= retry_backoff_s")
    return AlertConfig(**values)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def names(alerts: Sequence[AlertConfig]) -> list[str]:
    return [alert.name for alert in alerts]

"""When actors fire: schedule value objects, the schedule heap and the missed-fire policies.

All times are epoch seconds (floats); the clock is always passed in, so every function here is
pure and can be tested by simulating hours of downtime in one line.

Cron and daylight saving time. Expressions are evaluated by croniter on timezone-aware
datetimes in the actor's zone, on top of which this module applies the rule Vixie cron
documents, so that an operator's expectations hold:

* Spring forward (the wall clock jumps, e.g. Europe/Berlin 02:00 -> 03:00 on 2026-03-29): a
  *fixed-hour* schedule (the hour field is not ``*``) whose time falls in the gap fires once at
  the first instant after it, so a daily ``30 2 * * *`` runs at 03:00 that day and no day is
  skipped. A schedule whose hour field is ``*`` (hourly, every N minutes or seconds) follows
  elapsed time: the wall-clock times that do not exist are simply not fired (``0 * * * *``
  fires at 01:00 and then 03:00, one real hour apart).
* Fall back (the wall clock repeats, e.g. 03:00 -> 02:00 on 2026-10-25): a fixed-hour schedule
  fires exactly once per wall-clock time, at its first occurrence (summer time), and never
  again in the repeated hour: ``30 2 * * *`` runs once that day. A schedule whose hour field is
  ``*`` again follows elapsed time and fires in both passes of the repeated hour (an hourly job
  still runs every real hour; ``0 * * * *`` fires at 02:00 CEST, 02:00 CET and 03:00 CET).

croniter alone fires a fixed-hour time twice at fall-back (02:30 CEST and 02:30 CET); the second
occurrence is filtered out here.
"""

import abc
import difflib
import functools
import math
import random
import re
import threading
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

CATCH_UP_POLICIES = ("none", "once", "all")
SCHEDULE_TYPES = ("cron", "interval", "once", "immediate")

_EPSILON_S = 1e-3  # first_due(now) counts a fire less than a millisecond old as "now"
_MAX_YEARS = 130  # croniter's year field spans 1970-2099; its default search stops at 50 years
_HOUR = 1  # croniter's index of the hour field, whatever the number of fields
_DOW = 4
_FIELDS = {
    5: ("minute", "hour", "day-of-month", "month", "day-of-week"),
    6: ("second", "minute", "hour", "day-of-month", "month", "day-of-week"),
    7: ("second", "minute", "hour", "day-of-month", "month", "day-of-week", "year"),
}
_ALLOWED = {
    "second": "0-59",
    "minute": "0-59",
    "hour": "0-23",
    "day-of-month": "1-31, L or nW",
    "month": "1-12 or jan-dec",
    "day-of-week": "0-7, sun-sat, n#k or Ln",
    "year": "1970-2099",
}
_HASHED = re.compile(r"^[hr](\(\d+-\d+\))?(/\d+)?$", re.IGNORECASE)
_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRONITER_PREFIX = re.compile(r"^\[.*?\] is not acceptable[.,]?\s*")


class ScheduleError(ValueError):
    """A schedule table is invalid; ``key`` names the offending entry of the table, if any."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.message = message
        self.key = key


class Schedule(abc.ABC):
    """When an actor fires. Schedules are frozen values; times are epoch seconds.

    A fresh start (no stored state) asks :meth:`first_due`; after each fire at ``due`` the
    supervisor pushes :meth:`next_due` of ``due`` (of the *due* time, not of when the run
    finished, so that periodic schedules do not drift). After downtime, :func:`missed_fires`
    and :meth:`resume_due` continue the series from the last stored due time.
    """

    __slots__ = ()

    #: True when the schedule ignores stored state: it is armed with :meth:`first_due` at every
    #: start of the supervisor (``immediate``).
    once_per_start: ClassVar[bool] = False

    @abc.abstractmethod
    def first_due(self, now: float) -> float | None:
        """The first fire at or after ``now`` for a fresh start; ``None`` if it never fires."""

    @abc.abstractmethod
    def next_due(self, after: float) -> float | None:
        """The next fire strictly after ``after``; ``None`` when it never fires again."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description, for the store and ``status``."""

    def fires_between(self, last_due: float, until: float, limit: int) -> list[float]:
        """The newest ``limit`` fires of the series continuing from ``last_due``.

        That is the fires ``t`` with ``last_due < t <= until``, in ascending order.
        ``last_due`` should be a real fire time: an interval's grid is anchored on it. This
        default walks forward with :meth:`next_due`, which suits schedules with few fires.
        """
        fires: deque[float] = deque(maxlen=max(limit, 0))
        if limit <= 0:
            return []
        due = self.next_due(last_due)
        while due is not None and due <= until:
            fires.append(due)
            due = self.next_due(due)
        return list(fires)

    def resume_due(self, last_due: float, now: float) -> float | None:
        """The first fire strictly after ``now`` of the series continuing from ``last_due``."""
        return self.next_due(max(last_due, now))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class CronSchedule(Schedule):
    """A cron expression evaluated in an IANA time zone (DST rules: see the module docstring).

    5 fields: ``min hour day month weekday``; 6 fields: a leading seconds field;
    7 fields: ``sec min hour day month weekday year``. The ``@hourly``-style aliases work too.
    Day-of-month and day-of-week combine with OR when both are restricted, as in cron.
    """

    expression: str
    timezone: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _fixed_hours: bool = field(init=False, repr=False, compare=False)
    _iter: croniter = field(init=False, repr=False, compare=False)
    # croniter iterators are stateful; reusing one is 4x cheaper than building one per call.
    _lock: threading.Lock = field(init=False, repr=False, compare=False)
    # The last next_due (after, due): actors sharing this schedule are seeded with one ``now``.
    _last: list[float | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = load_zone(self.timezone)
        expanded = _expand(self.expression)
        it = croniter(
            self.expression,
            datetime.fromtimestamp(0, zone),  # every call passes its own start time
            second_at_beginning=True,
            max_years_between_matches=_MAX_YEARS,
        )
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_fixed_hours", expanded[_HOUR] != ("*",))
        object.__setattr__(self, "_iter", it)
        object.__setattr__(self, "_lock", threading.Lock())
        object.__setattr__(self, "_last", [None, None])

    def __reduce__(self) -> tuple[Any, ...]:
        # The iterator and the lock cannot be pickled; rebuild them from the two values.
        return (CronSchedule, (self.expression, self.timezone))

    def first_due(self, now: float) -> float | None:
        return self.next_due(now - _EPSILON_S)

    def next_due(self, after: float) -> float | None:
        with self._lock:
            if self._last[0] == after:
                return self._last[1]
            due = self._step(after, prev=False)
            while due is not None and self._repeated(due):
                due = self._step(due, prev=False)
            self._last[:] = [after, due]
            return due

    def fires_between(self, last_due: float, until: float, limit: int) -> list[float]:
        # Walk backwards from ``until`` so that a week of downtime on a per-second schedule
        # costs ``limit`` steps, not 600,000.
        fires: list[float] = []
        with self._lock:
            cursor = self._step(until + _EPSILON_S, prev=True)
            while cursor is not None and cursor > last_due and len(fires) < limit:
                if cursor <= until and not self._repeated(cursor):
                    fires.append(cursor)
                cursor = self._step(cursor, prev=True)
        fires.reverse()
        return fires

    def describe(self) -> dict[str, Any]:
        return {"type": "cron", "expression": self.expression, "timezone": self.timezone}

    def _step(self, start: float, *, prev: bool) -> float | None:
        when = datetime.fromtimestamp(start, self._zone)
        try:
            if prev:
                return float(self._iter.get_prev(float, start_time=when))
            return float(self._iter.get_next(float, start_time=when))
        except CroniterBadDateError:  # no fire within croniter's year range
            return None

    def _repeated(self, due: float) -> bool:
        """Whether ``due`` is the second occurrence of a fixed-hour wall-clock time."""
        if not self._fixed_hours:
            return False
        local = datetime.fromtimestamp(due, self._zone)
        return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


@dataclass(frozen=True, slots=True)
class IntervalSchedule(Schedule):
    """Every ``seconds``: at once on a fresh start, then anchored to the previous due time."""

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds <= 0:
            raise ScheduleError(f"must be a positive number, got {self.seconds!r}", "seconds")

    def first_due(self, now: float) -> float | None:
        return now

    def next_due(self, after: float) -> float | None:
        return after + self.seconds

    def fires_between(self, last_due: float, until: float, limit: int) -> list[float]:
        count = math.floor((until - last_due) / self.seconds)
        first = max(1, count - limit + 1)
        return [last_due + k * self.seconds for k in range(first, count + 1)]

    def resume_due(self, last_due: float, now: float) -> float | None:
        steps = max(0, math.floor((now - last_due) / self.seconds)) + 1
        return last_due + steps * self.seconds

    def describe(self) -> dict[str, Any]:
        return {"type": "interval", "seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class OnceSchedule(Schedule):
    """Once, at ``at`` (epoch seconds). A time already past at a fresh start fires once now."""

    at: float

    def first_due(self, now: float) -> float | None:
        return max(self.at, now)

    def next_due(self, after: float) -> float | None:
        return self.at if self.at > after else None

    def describe(self) -> dict[str, Any]:
        return {"type": "once", "at": datetime.fromtimestamp(self.at, UTC).isoformat()}


@dataclass(frozen=True, slots=True)
class ImmediateSchedule(Schedule):
    """Once at every start of the supervisor, whatever the stored state says."""

    once_per_start: ClassVar[bool] = True

    def first_due(self, now: float) -> float | None:
        return now

    def next_due(self, after: float) -> float | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"type": "immediate"}


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; raises :class:`ScheduleError` naming a close match if unknown."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        pass
    names = available_timezones()
    folded = {n.casefold(): n for n in names}
    hint = folded.get(name.casefold()) or did_you_mean(name, names)
    suffix = f" (did you mean {hint!r}?)" if hint else ""
    raise ScheduleError(f"unknown time zone {name!r}{suffix}; expected an IANA name")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to a misspelt ``word``, if any is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return matches[0] if matches else None


def validate_cron(expression: str) -> list[list[Any]]:
    """Check a cron expression and return croniter's expansion; raise a precise error."""
    return [list(values) for values in _expand(expression)]


def cron_schedule(expression: str, timezone: str) -> "CronSchedule":
    """The :class:`CronSchedule` of ``expression`` in ``timezone``, one object per distinct pair
    while any actor holds it: 100,000 actors on a few dozen expressions parse each once and
    share its iterator (behind its lock) instead of holding 100,000 of them."""
    key = (expression, timezone)
    with _CRON_LOCK:
        schedule = _CRONS.get(key)
        if schedule is None:
            schedule = _CRONS[key] = CronSchedule(expression, timezone)
    return schedule


_CRONS: "weakref.WeakValueDictionary[tuple[str, str], CronSchedule]" = weakref.WeakValueDictionary()
_CRON_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _expand(expression: str) -> tuple[tuple[Any, ...], ...]:
    """:func:`validate_cron`'s work, once per expression (it costs croniter two expansions)."""
    fields = expression.split()
    if expression.startswith("@"):
        if expression.lower() not in _ALIASES:
            raise ScheduleError(
                f"invalid cron expression {expression!r}: unknown alias; expected one of "
                + ", ".join(_ALIASES),
                "expression",
            )
    elif len(fields) not in _FIELDS:
        raise ScheduleError(
            f"invalid cron expression {expression!r}: expected 5 fields "
            "(minute hour day-of-month month day-of-week), 6 (a leading second) or 7 "
            f"(second minute hour day-of-month month day-of-week year), got {len(fields)}",
            "expression",
        )
    names = _FIELDS.get(len(fields), ())
    for name, text in zip(names, fields, strict=False):
        if any(_HASHED.match(part) for part in text.split(",")):
            raise ScheduleError(
                f"invalid cron expression {expression!r}: the {name} field {text!r} uses "
                "hashed or random values (H, R), which are not supported",
                "expression",
            )
    try:
        expanded = croniter.expand(expression, second_at_beginning=True)[0]
        if expanded[_DOW] == ["*"]:  # with a day-of-week, day/month combine with OR
            croniter.expand(expression, second_at_beginning=True, strict=True)
    except CroniterBadCronError as exc:
        raise ScheduleError(
            f"invalid cron expression {expression!r} ({_explain(fields, names, exc)})",
            "expression",
        ) from None
    return tuple(tuple(values) for values in expanded)


def _explain(fields: list[str], names: tuple[str, ...], exc: Exception) -> str:
    """Name the first field croniter rejects on its own, else repeat croniter's reason."""
    for index, name in enumerate(names):
        probe = ["*"] * len(fields)
        probe[index] = fields[index]
        try:
            croniter.expand(" ".join(probe), second_at_beginning=True)
        except CroniterBadCronError:
            return f"the {name} field {fields[index]!r} is not valid; allowed: {_ALLOWED[name]}"
    lines = str(exc).strip().splitlines()
    reason = _CRONITER_PREFIX.sub("", lines[-1]) if lines else ""
    return reason or "not a valid cron expression"


def parse_schedule(table: Mapping[str, Any], timezone: str) -> Schedule:
    """Build a schedule from its configuration table (``{type = "cron", expression = ...}``).

    Type names are case-insensitive. A naive ``once`` time is read in ``timezone``. Raises
    :class:`ScheduleError` (a ``ValueError``) whose ``key`` names the offending entry.
    """
    kind = table.get("type")
    if not isinstance(kind, str):
        expected = ", ".join(repr(t) for t in SCHEDULE_TYPES)
        got = "nothing" if kind is None else repr(kind)
        raise ScheduleError(f"expected one of {expected}, got {got}", "type")
    kind = kind.strip().lower()
    required = {"cron": ("expression",), "interval": ("seconds",), "once": ("at",)}
    if kind not in SCHEDULE_TYPES:
        expected = ", ".join(repr(t) for t in SCHEDULE_TYPES)
        raise ScheduleError(f"expected one of {expected}, got {table['type']!r}", "type")
    allowed = {"type", *required.get(kind, ())}
    for key in table:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            hint_text = f" (did you mean {hint!r}?)" if hint else ""
            keys = ", ".join(sorted(allowed))
            raise ScheduleError(
                f"unknown key for a {kind} schedule{hint_text}; allowed: {keys}", key
            )
    for key in required.get(kind, ()):
        if key not in table:
            raise ScheduleError(f"missing: a {kind} schedule needs {key!r}", key)
    if kind == "cron":
        expression = table["expression"]
        if not isinstance(expression, str):
            raise ScheduleError(f"expected a string, got {expression!r}", "expression")
        return cron_schedule(expression.strip(), timezone)
    if kind == "interval":
        seconds = table["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ScheduleError(f"expected a number of seconds, got {seconds!r}", "seconds")
        return IntervalSchedule(float(seconds))
    if kind == "once":
        return OnceSchedule(parse_instant(table["at"], timezone))
    return ImmediateSchedule()


def parse_instant(value: Any, timezone: str) -> float:
    """An ISO 8601 string or TOML datetime/date as epoch seconds; naive means ``timezone``.

    A naive time in a DST gap is read with the offset in force before the gap (zoneinfo's
    ``fold=0``), so 02:30 on a spring-forward day means 03:30 summer time.
    """
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScheduleError(
                f"expected an ISO 8601 date-time such as '2026-12-01T09:00:00Z', got {value!r}",
                "at",
            ) from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if not isinstance(value, datetime):
        raise ScheduleError(f"expected a date-time, got {value!r}", "at")
    moment: datetime = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=load_zone(timezone))
    return moment.timestamp()


def missed_fires(
    schedule: Schedule, last_due: float, now: float, policy: str, cap: int
) -> list[float]:
    """The fires to run for what was missed between ``last_due`` and ``now`` (downtime).

    Missed fires are those in ``(last_due, now]``. Policy ``none``: nothing; ``once``: the
    latest missed fire, if any; ``all``: every missed fire, at most the newest ``cap``.
    Afterwards the supervisor continues with ``schedule.resume_due(last_due, now)``.
    """
    if policy not in CATCH_UP_POLICIES:
        raise ValueError(f"unknown catch-up policy {policy!r}; expected one of {CATCH_UP_POLICIES}")
    if cap < 0:
        raise ValueError(f"cap must be >= 0, got {cap}")
    if policy == "none" or now <= last_due:
        return []
    return schedule.fires_between(last_due, now, 1 if policy == "once" else cap)


def retry_delay(attempt: int, base: float, cap: float, jitter: bool, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    ``base * 2**(attempt-1)``, capped at ``cap``; with ``jitter``, "full jitter" (uniform in
    ``0..delay``) so that actors failing together do not retry in lockstep.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    delay = min(cap, base * 2.0 ** min(attempt - 1, 1000))  # 2.0**1000 is finite
    return rng.uniform(0.0, delay) if jitter else delay

"""Kinds of value the ``[[actors]]`` and ``[[workflows]]`` tables share: JSON data (a run's
input, a workflow's items), a time zone, and a schedule table (checked in full by
:func:`~supervisor.schedule.parse_schedule`, which needs the zone)."""

import math
from collections.abc import Mapping
from datetime import date, datetime, time
from typing import Any

from supervisor.schedule import ScheduleError, load_zone
from supervisor.settings_kinds import Invalid, Kind


class Json(Kind):
    """Any TOML value as JSON-compatible data: date-times become ISO 8601 strings."""

    @property
    def expected(self) -> str:
        return "a JSON-compatible value"

    def check(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): self._under(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._under(i, v) for i, v in enumerate(value)]
        if isinstance(value, datetime | date | time):
            return value.isoformat()
        if isinstance(value, float) and not math.isfinite(value):
            raise Invalid(f"{value} is not valid in JSON")
        return value

    def _under(self, key: str | int, value: Any) -> Any:
        try:
            return self.check(value)
        except Invalid as exc:
            raise exc.under(key) from None


class Zone(Kind):
    @property
    def expected(self) -> str:
        return "an IANA time zone name"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self._wrong(value)
        try:
            load_zone(value)
        except ScheduleError as exc:
            raise Invalid(exc.message) from None
        return value


class ScheduleTable(Kind):
    """Checked as a table here; :func:`parse_schedule` needs the actor's zone for the rest."""

    @property
    def expected(self) -> str:
        return "a table such as { type = 'interval', seconds = 60 }"

    def check(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise self._wrong(value)
        return value

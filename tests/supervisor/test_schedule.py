"""Schedules, the schedule heap and the missed-fire and retry policies, with the clock passed in."""

import itertools
import pickle
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from supervisor.heap import ScheduleHeap
from supervisor.schedule import (
    CronSchedule,
    ImmediateSchedule,
    IntervalSchedule,
    OnceSchedule,
    Schedule,
    ScheduleError,
    missed_fires,
    parse_schedule,
    retry_delay,
)

BERLIN = ZoneInfo("Europe/Berlin")


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
    *, tz: ZoneInfo | None = None,
) -> float:  # fmt: skip
    """Epoch seconds of a wall-clock time (UTC unless ``tz``)."""
    return datetime(year, month, day, hour, minute, second, tzinfo=tz or UTC).timestamp()


def iso(ts: float | None, tz: ZoneInfo | None = None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz or UTC).isoformat()


def series(schedule: Schedule, start: float, count: int, tz: ZoneInfo | None = None) -> list[str]:
    """The next ``count`` fires after ``start``, as ISO strings in ``tz``."""
    out: list[str] = []
    due: float | None = start
    while len(out) < count:
        assert due is not None
        due = schedule.next_due(due)
        if due is None:
            break
        out.append(iso(due, tz) or "")
    return out


def fires_until(schedule: Schedule, start: float, end: float) -> list[float]:
    out: list[float] = []
    due = schedule.next_due(start)
    while due is not None and due <= end:
        out.append(due)
        due = schedule.next_due(due)
    return out


# --- cron -------------------------------------------------------------------------------------


def test_five_field_cron_fires_on_weekday_mornings() -> None:
    schedule = CronSchedule("30 9 * * 1-5")
    assert series(schedule, at(2026, 5, 1, 10, 0), 3) == [  # a Friday, after 09:30
        "2026-05-04T09:30:00+00:00",
        "2026-05-05T09:30:00+00:00",
        "2026-05-06T09:30:00+00:00",
    ]


def test_six_field_cron_has_a_leading_seconds_field() -> None:
    assert series(CronSchedule("15 30 9 * * *"), at(2026, 5, 1), 2) == [
        "2026-05-01T09:30:15+00:00",
        "2026-05-02T09:30:15+00:00",
    ]


def test_every_ten_seconds() -> None:
    schedule = CronSchedule("*/10 * * * * *")
    assert series(schedule, at(2026, 5, 1, 12, 0, 3), 4) == [
        "2026-05-01T12:00:10+00:00",
        "2026-05-01T12:00:20+00:00",
        "2026-05-01T12:00:30+00:00",
        "2026-05-01T12:00:40+00:00",
    ]


def test_seven_field_cron_with_a_year_that_excludes_this_year() -> None:
    schedule = CronSchedule("0 0 12 1 1 * 2030")
    assert series(schedule, at(2026, 5, 1), 3) == ["2030-01-01T12:00:00+00:00"]  # then never
    assert CronSchedule("0 0 12 1 1 * 2020").first_due(at(2026, 5, 1)) is None
    assert series(CronSchedule("0 0 0 1 1 * 2099"), at(2026, 5, 1), 1) == [
        "2099-01-01T00:00:00+00:00"  # beyond croniter's default 50-year search
    ]


def test_first_due_is_at_or_after_now_and_next_due_strictly_after() -> None:
    schedule = CronSchedule("0 * * * *")
    noon = at(2026, 5, 1, 12)
    assert schedule.first_due(noon) == noon
    assert schedule.next_due(noon) == at(2026, 5, 1, 13)
    assert schedule.first_due(noon + 0.5) == at(2026, 5, 1, 13)


def test_cron_aliases_and_names_work() -> None:
    assert series(CronSchedule("@daily"), at(2026, 5, 1, 12), 1) == ["2026-05-02T00:00:00+00:00"]
    assert series(CronSchedule("0 0 12 * * mon"), at(2026, 5, 1), 1) == [
        "2026-05-04T12:00:00+00:00"
    ]


def test_cron_schedules_are_values_that_pickle() -> None:
    schedule = CronSchedule("*/5 * * * *", "Europe/Berlin")
    assert schedule == CronSchedule("*/5 * * * *", "Europe/Berlin")
    assert hash(schedule) == hash(CronSchedule("*/5 * * * *", "Europe/Berlin"))
    clone = pickle.loads(pickle.dumps(schedule))
    assert clone == schedule
    assert clone.next_due(at(2026, 5, 1)) == schedule.next_due(at(2026, 5, 1))
    assert schedule.describe() == {
        "type": "cron",
        "expression": "*/5 * * * *",
        "timezone": "Europe/Berlin",
    }


# --- daylight saving time (Europe/Berlin: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00)


@pytest.mark.parametrize("month", [3, 10])
@pytest.mark.parametrize("expression", ["30 2 * * *", "0 2 * * *", "0 3 * * *", "0 0 2 * * *"])
def test_a_daily_fire_happens_exactly_once_every_day_across_dst(
    month: int, expression: str
) -> None:
    schedule = CronSchedule(expression, "Europe/Berlin")
    fires = fires_until(schedule, at(2026, month, 1, tz=BERLIN), at(2026, month, 31, 23, tz=BERLIN))
    days = [datetime.fromtimestamp(f, BERLIN).date().day for f in fires]
    assert days == list(range(1, 32))


def test_spring_forward_moves_a_fire_in_the_gap_to_the_end_of_the_gap() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert series(schedule, at(2026, 3, 27, 12, tz=BERLIN), 4, BERLIN) == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist that day
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_fall_back_fires_a_repeated_wall_clock_time_once() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Berlin")
    assert series(schedule, at(2026, 10, 23, 12, tz=BERLIN), 3, BERLIN) == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",  # not again at 02:30+01:00
        "2026-10-26T02:30:00+01:00",
    ]


def test_hourly_follows_elapsed_time_through_the_gap_and_the_overlap() -> None:
    schedule = CronSchedule("0 * * * *", "Europe/Berlin")
    assert series(schedule, at(2026, 3, 29, 0, 30, tz=BERLIN), 3, BERLIN) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist; one real hour after 01:00
        "2026-03-29T04:00:00+02:00",
    ]
    assert series(schedule, at(2026, 10, 25, 0, 30, tz=BERLIN), 4, BERLIN) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # the repeated hour is another real hour
        "2026-10-25T03:00:00+01:00",
    ]


@pytest.mark.parametrize("month", [3, 10])
def test_every_few_minutes_keeps_a_steady_real_time_pace_across_dst(month: int) -> None:
    schedule = CronSchedule("*/20 * * * *", "Europe/Berlin")
    day = 29 if month == 3 else 25
    fires = fires_until(
        schedule, at(2026, month, day, tz=BERLIN), at(2026, month, day, 6, tz=BERLIN)
    )
    gaps = {b - a for a, b in itertools.pairwise(fires)}
    assert gaps == {1200.0}
    assert len(fires) == (5 if month == 3 else 7) * 3  # 00:00-06:00 lasts 5 h or 7 h


def test_a_fixed_hour_minutely_schedule_runs_once_per_wall_clock_minute() -> None:
    schedule = CronSchedule("*/20 2 * * *", "Europe/Berlin")
    fall = fires_until(schedule, at(2026, 10, 25, tz=BERLIN), at(2026, 10, 25, 12, tz=BERLIN))
    assert [iso(f, BERLIN) for f in fall] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:20:00+02:00",
        "2026-10-25T02:40:00+02:00",
    ]
    spring = fires_until(schedule, at(2026, 3, 29, tz=BERLIN), at(2026, 3, 29, 12, tz=BERLIN))
    assert [iso(f, BERLIN) for f in spring] == ["2026-03-29T03:00:00+02:00"]


@pytest.mark.parametrize(
    "expression", ["30 2 * * *", "0 * * * *", "*/20 2 * * *", "*/30 */5 * * * *", "0 */2 * * *"]
)
@pytest.mark.parametrize("month", [3, 10])
def test_walking_back_finds_the_same_fires_as_walking_forward(expression: str, month: int) -> None:
    schedule = CronSchedule(expression, "Europe/Berlin")
    day = 29 if month == 3 else 25
    start, end = at(2026, month, day - 2, 12, tz=BERLIN), at(2026, month, day + 2, 12, tz=BERLIN)
    forward = fires_until(schedule, start, end)
    assert schedule.fires_between(start, end, 100_000) == forward
    assert schedule.fires_between(start, end, 3) == forward[-3:]


# --- interval, once, immediate ----------------------------------------------------------------


def test_interval_fires_at_once_then_stays_anchored_to_the_due_time() -> None:
    schedule = IntervalSchedule(60)
    now = at(2026, 5, 1, 12)
    assert schedule.first_due(now) == now
    due = now
    for _ in range(100):  # each run finishes 7 s late; the series does not drift
        due = schedule.next_due(due) or 0.0
    assert due == now + 6000
    assert schedule.resume_due(now, now + 125) == now + 180  # after downtime: on the grid


def test_once_fires_at_its_time_and_a_past_time_fires_once_now() -> None:
    noon = at(2026, 12, 1, 9)
    schedule = OnceSchedule(noon)
    assert schedule.first_due(noon - 3600) == noon
    assert schedule.next_due(noon - 1) == noon
    assert schedule.next_due(noon) is None
    late = noon + 86400
    assert schedule.first_due(late) == late
    assert schedule.describe() == {"type": "once", "at": "2026-12-01T09:00:00+00:00"}


def test_immediate_fires_once_per_start() -> None:
    schedule = ImmediateSchedule()
    assert schedule.first_due(100.0) == 100.0
    assert schedule.next_due(100.0) is None
    assert schedule.once_per_start and not IntervalSchedule(1).once_per_start


# --- parse_schedule ---------------------------------------------------------------------------


def test_parse_schedule_builds_each_type_case_insensitively() -> None:
    assert parse_schedule({"type": "Cron", "expression": "* * * * *"}, "UTC") == CronSchedule(
        "* * * * *"
    )
    assert parse_schedule({"type": "INTERVAL", "seconds": 5}, "UTC") == IntervalSchedule(5.0)
    assert parse_schedule({"type": "immediate"}, "UTC") == ImmediateSchedule()
    once = parse_schedule({"type": "once", "at": "2026-12-01T09:00:00Z"}, "Europe/Berlin")
    assert once == OnceSchedule(at(2026, 12, 1, 9))


def test_actors_on_one_cron_expression_and_zone_share_one_schedule() -> None:
    """100,000 actors on a few expressions parse each once and hold one iterator each."""
    table = {"type": "cron", "expression": "0 2 * * *"}
    first = parse_schedule(table, "Europe/Berlin")
    assert parse_schedule(dict(table), "Europe/Berlin") is first
    assert parse_schedule(table, "UTC") is not first
    assert parse_schedule(table, "UTC") == CronSchedule("0 2 * * *", "UTC")
    # the shared schedule's remembered answer is the answer: asked in turn from two times
    fresh = CronSchedule("0 2 * * *", "Europe/Berlin")
    start = at(2026, 3, 28, 12, tz=BERLIN)
    for after in (start, start, start + 86_400, start, start + 86_400):
        assert first.next_due(after) == fresh.next_due(after)
    assert first.first_due(start) == at(2026, 3, 29, 3, tz=BERLIN)  # spring forward: 02:00 gone


def test_a_naive_once_time_is_read_in_the_actors_zone() -> None:
    naive = datetime(2026, 7, 1, 9, 0)  # what tomllib gives for a local date-time
    assert parse_schedule({"type": "once", "at": naive}, "Europe/Berlin") == OnceSchedule(
        at(2026, 7, 1, 7, 0)
    )
    assert parse_schedule({"type": "once", "at": "2026-07-01 09:00"}, "Europe/Berlin") == (
        OnceSchedule(at(2026, 7, 1, 7, 0))
    )


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ({"type": "cron", "expression": "61 * * * *"}, "expression", "minute field '61'"),
        ({"type": "cron", "expression": "* * * *"}, "expression", "expected 5 fields"),
        ({"type": "cron", "expression": "0 0 * 13 *"}, "expression", "month field '13'"),
        ({"type": "cron", "expression": "0 0 30 2 *"}, "expression", "can never occur"),
        ({"type": "cron", "expression": "H * * * *"}, "expression", "hashed or random"),
        ({"type": "cron", "expression": "@often"}, "expression", "unknown alias"),
        ({"type": "cron", "expression": 5}, "expression", "expected a string"),
        ({"type": "cron"}, "expression", "needs 'expression'"),
        ({"type": "cron", "expresion": "* * * * *"}, "expresion", "did you mean 'expression'"),
        ({"type": "weekly"}, "type", "expected one of 'cron', 'interval', 'once', 'immediate'"),
        ({"expression": "* * * * *"}, "type", "got nothing"),
        ({"type": "interval", "seconds": 0}, "seconds", "positive"),
        ({"type": "interval", "seconds": "10"}, "seconds", "expected a number"),
        ({"type": "interval", "seconds": True}, "seconds", "expected a number"),
        ({"type": "once", "at": "tomorrow"}, "at", "ISO 8601"),
        ({"type": "immediate", "seconds": 1}, "seconds", "unknown key"),
    ],
)
def test_invalid_schedules_are_rejected_with_the_key_and_reason(
    table: dict[str, object], key: str, fragment: str
) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(table, "UTC")
    assert info.value.key == key
    assert fragment in info.value.message
    assert str(info.value).startswith(f"{key}: ")


# --- the heap ---------------------------------------------------------------------------------


def test_heap_pops_due_entries_in_due_order_with_ties_in_push_order() -> None:
    heap: ScheduleHeap[str] = ScheduleHeap()
    for key, due in [("c", 30.0), ("a", 10.0), ("b", 20.0), ("a2", 10.0), ("d", 40.0)]:
        heap.push(key, due)
    assert heap.next_due() == 10.0
    assert heap.pop_due(25.0) == [("a", 10.0), ("a2", 10.0), ("b", 20.0)]
    assert len(heap) == 2 and "c" in heap and "a" not in heap
    assert heap.pop_due(30.0) == [("c", 30.0)]  # due exactly now counts
    assert heap.pop_due(35.0) == []


def test_pushing_a_key_again_replaces_it_and_remove_forgets_it() -> None:
    heap: ScheduleHeap[tuple[str, str]] = ScheduleHeap()
    heap.push(("fire", "x"), 10.0)
    heap.push(("fire", "y"), 15.0)
    heap.push(("fire", "x"), 50.0)  # rescheduled later
    assert len(heap) == 2
    assert heap.due_of(("fire", "x")) == 50.0
    assert heap.pop_due(20.0) == [(("fire", "y"), 15.0)]
    assert heap.remove(("fire", "x")) and not heap.remove(("fire", "x"))
    assert heap.pop_due(100.0) == [] and heap.next_due() is None and len(heap) == 0


def test_timeout_ms_is_the_time_to_the_top_rounded_up_and_capped() -> None:
    heap: ScheduleHeap[str] = ScheduleHeap()
    assert heap.timeout_ms(now=0.0, cap_ms=1000) == 1000
    heap.push("a", 10.0)
    assert heap.timeout_ms(now=9.7, cap_ms=1000) == 300
    assert heap.timeout_ms(now=9.9995, cap_ms=1000) == 1  # never a busy 0 before it is due
    assert heap.timeout_ms(now=0.0, cap_ms=1000) == 1000
    assert heap.timeout_ms(now=10.0, cap_ms=1000) == 0
    assert heap.timeout_ms(now=11.0, cap_ms=1000) == 0


def test_stale_entries_are_compacted_away() -> None:
    heap: ScheduleHeap[str] = ScheduleHeap()
    for i in range(10_000):
        heap.push("same", float(i))  # 9,999 stale entries would pile up without compaction
    assert len(heap) == 1
    assert len(heap._heap) <= 2 * len(heap) + ScheduleHeap._COMPACT_MIN
    for i in range(1000):
        heap.push(f"k{i}", float(i))
    for i in range(1000):
        heap.remove(f"k{i}")
    assert len(heap._heap) <= 2 * len(heap) + ScheduleHeap._COMPACT_MIN
    assert heap.pop_due(1e9) == [("same", 9999.0)]


def test_a_hundred_thousand_entries_come_out_sorted_and_memory_stays_bounded() -> None:
    rng = random.Random(7)
    heap: ScheduleHeap[int] = ScheduleHeap()
    expected: dict[int, float] = {}
    for key in range(100_000):
        expected[key] = rng.uniform(0, 1e6)
        heap.push(key, expected[key])
    for key in range(0, 100_000, 2):  # reschedule half, drop a tenth
        expected[key] = rng.uniform(0, 1e6)
        heap.push(key, expected[key])
    for key in range(1, 100_000, 10):
        heap.remove(key)
        del expected[key]
    assert len(heap) == len(expected)
    assert len(heap._heap) <= 2 * len(heap) + ScheduleHeap._COMPACT_MIN
    popped = heap.pop_due(5e5) + heap.pop_due(1e6)
    assert popped == sorted(expected.items(), key=lambda kv: kv[1])
    assert len(heap) == 0


# --- missed fires and retries -----------------------------------------------------------------


@pytest.mark.parametrize("schedule", [CronSchedule("* * * * *"), IntervalSchedule(60)])
def test_missed_fires_after_ten_minutes_of_downtime(schedule: Schedule) -> None:
    last_due, now = at(2026, 5, 1, 12, 0), at(2026, 5, 1, 12, 10)
    minute = [at(2026, 5, 1, 12, m) for m in range(1, 11)]
    assert missed_fires(schedule, last_due, now, "none", 100) == []
    assert missed_fires(schedule, last_due, now, "once", 100) == [minute[-1]]
    assert missed_fires(schedule, last_due, now, "all", 100) == minute
    assert missed_fires(schedule, last_due, now, "all", 3) == minute[-3:]
    assert missed_fires(schedule, last_due, last_due + 30, "all", 100) == []
    assert schedule.resume_due(last_due, now) == at(2026, 5, 1, 12, 11)


def test_a_week_of_downtime_on_a_per_second_schedule_costs_only_the_cap() -> None:
    schedule = CronSchedule("* * * * * *")
    now = at(2026, 5, 8)
    assert missed_fires(schedule, at(2026, 5, 1), now, "all", 5) == [
        now - 4,
        now - 3,
        now - 2,
        now - 1,
        now,
    ]


def test_missed_fires_of_once_and_immediate() -> None:
    once = OnceSchedule(at(2026, 5, 1, 12, 5))
    assert missed_fires(once, at(2026, 5, 1, 12), at(2026, 5, 1, 12, 10), "all", 10) == [
        at(2026, 5, 1, 12, 5)
    ]
    assert missed_fires(ImmediateSchedule(), 0.0, 600.0, "all", 10) == []
    with pytest.raises(ValueError, match="catch-up policy"):
        missed_fires(once, 0.0, 1.0, "some", 10)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, 2.0, 300.0, False, rng) for n in range(1, 11)]
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert retry_delay(10_000, 2.0, 300.0, False, rng) == 300.0
    with pytest.raises(ValueError):
        retry_delay(0, 2.0, 300.0, False, rng)


def test_retry_delay_full_jitter_stays_within_bounds_and_is_seeded() -> None:
    first = [retry_delay(n, 2.0, 300.0, True, random.Random(42)) for n in range(1, 12)]
    again = [retry_delay(n, 2.0, 300.0, True, random.Random(42)) for n in range(1, 12)]
    assert first == again
    rng = random.Random(3)
    samples = [retry_delay(4, 2.0, 300.0, True, rng) for _ in range(2000)]
    assert all(0.0 <= s <= 16.0 for s in samples)
    assert min(samples) < 2.0 and max(samples) > 14.0  # spread over the whole range

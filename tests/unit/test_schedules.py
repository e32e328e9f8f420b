"""Tick maths and schedule validation: pure functions, no database."""

from __future__ import annotations

import datetime as dt

import pytest

from pgjobs import ArgumentError, Schedule
from pgjobs.schedules import next_tick, plan, ticks_between

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def cron(expr: str, **kwargs: object) -> Schedule:
    return Schedule(name="s", task="t", cron=expr, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cron": "61 * * * *"}, "bad cron"),
        ({"cron": "* * *"}, "bad cron"),
        ({"cron": "*/5 * * * *", "every": 60}, "exactly one"),
        ({}, "exactly one"),
        ({"every": -1}, "every"),
        ({"cron": "@daily", "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 5, "missed": "sometimes"}, "missed"),
        ({"every": 5, "job_options": {"retrys": 1}}, "unknown job option"),
    ],
)
def test_bad_schedules_are_refused_when_declared(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        Schedule(name="s", task="t", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expr", ["0 0 30 2 *", "0 0 31 4 *", "0 0 30,31 2 ?", "0 0 31 4,6,9,11 *", "0 0 31 feb-apr/2 *", "0 0 31 2 * 0"]
)
def test_a_cron_that_never_fires_is_refused_when_declared(expr: str) -> None:
    with pytest.raises(ArgumentError, match="no date ever matches it"):
        cron(expr)


@pytest.mark.parametrize(
    ("expr", "after", "first"),
    [
        ("0 0 29 2 *", "2097-01-01", "2104-02-29"),  # leap days: 2100 is no leap year
        ("0 0 * 2 5#5", "2009-01-01", "2036-02-29"),  # a fifth Friday in February: 28 to 40 years apart
        ("0 0 30 2 mon", "2026-01-01", "2026-02-02"),  # day 30 or a Monday: the Mondays fire
        ("0 0 31 2/2 *", "2026-01-01", "2026-08-31"),  # February, April, June, August…
    ],
)
def test_rare_crons_are_accepted_and_find_their_next_tick(expr: str, after: str, first: str) -> None:
    assert next_tick(cron(expr), at(f"{after}T00:00+00:00")) == at(f"{first}T00:00+00:00")


def test_cron_ticks_in_a_range_include_the_start_and_exclude_the_end() -> None:
    ticks = ticks_between(cron("0 6 * * *"), at("2026-10-01T06:00+00:00"), at("2026-11-01T06:00+00:00"))
    assert len(ticks) == 31 and ticks[0] == at("2026-10-01T06:00+00:00") and ticks[-1] == at("2026-10-31T06:00+00:00")


def test_seconds_field_and_interval_ticks() -> None:
    start = at("2026-01-01T00:00:00+00:00")
    assert len(ticks_between(cron("* * * * * *"), start, start + dt.timedelta(seconds=10))) == 10
    every = Schedule(name="s", task="t", every=90)
    assert ticks_between(every, start, start + dt.timedelta(minutes=5)) == [
        start + dt.timedelta(seconds=90 * k) for k in range(4)
    ]
    assert next_tick(every, start) == start + dt.timedelta(seconds=90)


def test_a_time_zone_moves_the_ticks() -> None:
    (tick,) = ticks_between(
        cron("0 9 * * *", timezone="America/New_York"), at("2026-07-01T00:00+00:00"), at("2026-07-02T00:00+00:00")
    )
    assert tick == at("2026-07-01T13:00+00:00")


def test_dst_spring_forward_fires_a_skipped_local_time_once_after_the_gap() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 local does not exist (clocks go to 03:00).
    s = cron("30 2 * * *", timezone="Europe/Berlin")
    ticks = ticks_between(s, at("2026-03-28T00:00+01:00"), at("2026-03-31T00:00+02:00"))
    assert [t.astimezone(s.zone).isoformat() for t in ticks] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
    ]


def test_dst_fall_back_fires_a_repeated_local_time_once() -> None:
    # Europe/Berlin, 2026-10-25: 02:00-03:00 local happens twice.
    daily = cron("30 2 * * *", timezone="Europe/Berlin")
    ticks = ticks_between(daily, at("2026-10-24T00:00+02:00"), at("2026-10-27T00:00+01:00"))
    assert [t.astimezone(daily.zone).isoformat() for t in ticks] == [
        "2026-10-24T02:30:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]
    half_hourly = cron("*/30 * * * *", timezone="Europe/Berlin")
    ticks = ticks_between(half_hourly, at("2026-10-25T01:30+02:00"), at("2026-10-25T03:31+01:00"))
    walls = [t.astimezone(half_hourly.zone).strftime("%H:%M%z") for t in ticks]
    assert walls == ["01:30+0200", "02:00+0200", "02:30+0200", "03:00+0100", "03:30+0100"]
    # Starting from inside the second pass of the hour does not fire its wall times again.
    assert next_tick(half_hourly, at("2026-10-25T02:40+02:00")) == at("2026-10-25T03:00+01:00")


NOW = at("2026-05-01T12:00:00.300+00:00")


def test_a_new_schedule_waits_for_its_first_tick_unless_triggered_on_start() -> None:
    assert plan(cron("*/5 * * * *"), None, NOW) == ([], at("2026-05-01T12:05+00:00"))
    assert plan(cron("*/5 * * * *", trigger_on_start=True), None, NOW)[0] == [NOW]


def test_on_time_ticks_fire_and_the_next_run_is_after_now() -> None:
    s = cron("* * * * * *")
    ticks, following = plan(s, at("2026-05-01T11:59:59+00:00"), NOW)
    assert ticks == [at("2026-05-01T11:59:59+00:00"), at("2026-05-01T12:00:00+00:00")]
    assert following == at("2026-05-01T12:00:01+00:00")
    assert plan(s, following, NOW) == ([], following)  # not due yet


def minutes(first: str, last: str) -> list[dt.datetime]:
    t, end, out = at(f"2026-05-01T{first}+00:00"), at(f"2026-05-01T{last}+00:00"), []
    while t <= end:
        out.append(t)
        t += dt.timedelta(minutes=1)
    return out


@pytest.mark.parametrize(
    ("missed", "fired"),
    [
        ("skip", minutes("12:00", "12:00")),  # only the tick within misfire_grace
        ("once", minutes("11:59", "12:00")),  # the latest missed tick, then the on-time one
        ("all", minutes("10:58", "12:00")),  # the last max_catchup missed ticks, then the on-time one
    ],
)
def test_missed_ticks_after_downtime_follow_the_policy(missed: str, fired: list[dt.datetime]) -> None:
    s = cron("* * * * *", missed=missed, misfire_grace=60, max_catchup=62)
    # Down since 09:00, back at 12:00:00.300: 12:00 is on time, 11:59 is 60.3 s late.
    assert plan(s, at("2026-05-01T09:00+00:00"), NOW)[0] == fired


def test_an_interval_schedule_waits_for_its_previous_run() -> None:
    s = Schedule(name="s", task="t", every=10)
    due = at("2026-05-01T12:00:00+00:00")
    assert plan(s, due, NOW, busy=True) == ([], due)
    assert plan(s, due, NOW) == ([due], due + dt.timedelta(seconds=10))
    again = Schedule(name="s", task="t", every=0)
    assert plan(again, due, NOW) == ([NOW], NOW)  # every=0: as soon as the last run is done

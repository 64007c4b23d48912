"""Business calendar: open-time arithmetic over weekends, French holidays and DST."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.sla.calendar import ALWAYS_OPEN, BusinessCalendar, public_holidays

PARIS = ZoneInfo("Europe/Paris")
CAL = BusinessCalendar()
H2 = timedelta(hours=2)


def paris(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS)


def test_friday_evening_two_hours_end_monday_morning() -> None:
    assert CAL.add(paris(2026, 1, 9, 17, 30), H2) == paris(2026, 1, 12, 9, 30)


def test_result_is_utc_and_accepts_any_zone() -> None:
    start_utc = paris(2026, 1, 9, 17, 30).astimezone(UTC)
    end = CAL.add(start_utc, H2)
    assert end.tzinfo is UTC
    assert end == datetime(2026, 1, 12, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "expected", "why"),
    [
        (paris(2027, 3, 26, 17, 30), paris(2027, 3, 30, 9, 30), "Easter Monday 2027"),
        (paris(2027, 5, 5, 17, 0), paris(2027, 5, 7, 9, 0), "Ascension Thursday 2027"),
        (paris(2026, 7, 13, 17, 0), paris(2026, 7, 15, 9, 0), "14 July 2026 (Tuesday)"),
        (paris(2026, 4, 30, 17, 0), paris(2026, 5, 4, 9, 0), "1 May 2026 (Friday)"),
        (paris(2026, 12, 24, 17, 0), paris(2026, 12, 28, 9, 0), "Christmas 2026 (Friday)"),
        (paris(2027, 5, 14, 17, 30), paris(2027, 5, 18, 9, 30), "Whit Monday 2027 kept closed"),
        (paris(2026, 5, 7, 17, 0), paris(2026, 5, 11, 9, 0), "8 May 2026 (Friday)"),
    ],
)
def test_public_holidays_are_skipped(start: datetime, expected: datetime, why: str) -> None:
    assert CAL.add(start, H2) == expected, why


def test_package_lists_the_movable_holidays_we_rely_on() -> None:
    fr = holidays.country_holidays("FR", years=2027)
    assert {date(2027, 3, 29), date(2027, 5, 6), date(2027, 5, 17)} <= set(fr)
    assert public_holidays(2027) == frozenset(fr)
    assert not CAL.is_business_day(date(2027, 5, 17))  # Whit Monday: closed by default


def test_holiday_sets_are_cached_per_year() -> None:
    assert public_holidays(2031) is public_holidays(2031)
    assert CAL.holidays_of(2031) is public_holidays(2031, "FR", None)


def test_a_territory_can_open_whit_monday() -> None:
    solidarity = replace(CAL, open_dates=frozenset({date(2027, 5, 17)}))
    assert solidarity.add(paris(2027, 5, 14, 17, 30), H2) == paris(2027, 5, 17, 9, 30)


def test_extra_closed_dates_are_skipped() -> None:
    bridge = replace(CAL, closed_dates=frozenset({date(2026, 1, 12)}))
    assert bridge.add(paris(2026, 1, 9, 17, 30), H2) == paris(2026, 1, 13, 9, 30)


def test_alsace_moselle_closes_good_friday() -> None:
    alsace = replace(CAL, subdiv="57")
    assert not alsace.is_business_day(date(2027, 3, 26))
    assert CAL.is_business_day(date(2027, 3, 26))
    assert alsace.add(paris(2027, 3, 25, 17, 0), H2) == paris(2027, 3, 30, 9, 0)


def test_dst_spring_forward_keeps_wall_clock() -> None:
    # 29 March 2026: clocks go 02:00 → 03:00; Friday is CET (+1), Monday CEST (+2)
    end = CAL.add(paris(2026, 3, 27, 17, 0), H2)
    assert end == paris(2026, 3, 30, 9, 0)
    assert end == datetime(2026, 3, 30, 7, 0, tzinfo=UTC)
    ten_hours = CAL.add(paris(2026, 3, 27, 12, 0), timedelta(hours=10))
    assert ten_hours.astimezone(PARIS).hour == 12


def test_dst_fall_back_keeps_wall_clock() -> None:
    # 25 October 2026: clocks go 03:00 → 02:00; Friday CEST (+2), Monday CET (+1)
    end = CAL.add(paris(2026, 10, 23, 17, 0), H2)
    assert end == datetime(2026, 10, 26, 8, 0, tzinfo=UTC)
    assert end.astimezone(PARIS).hour == 9


def test_always_open_counts_elapsed_time_and_wall_clock_days() -> None:
    assert ALWAYS_OPEN.add(paris(2026, 1, 9, 17, 30), H2) == paris(2026, 1, 9, 19, 30)
    assert ALWAYS_OPEN.is_open(paris(2026, 12, 25, 3, 0))
    # a calendar day across spring-forward lasts 23 h but ends at the same clock time
    day_after = ALWAYS_OPEN.add_days(paris(2026, 3, 28, 12, 0), 1)
    assert day_after == paris(2026, 3, 29, 12, 0)
    assert day_after - paris(2026, 3, 28, 12, 0) == timedelta(hours=23)


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (paris(2026, 1, 7, 10, 0), paris(2026, 1, 14, 10, 0)),  # Wed → next Wed
        (paris(2027, 5, 3, 10, 0), paris(2027, 5, 11, 10, 0)),  # Ascension skipped
        (paris(2026, 1, 10, 12, 0), paris(2026, 1, 16, 18, 0)),  # from Saturday: end of Fri
        (paris(2026, 3, 25, 15, 0), paris(2026, 4, 1, 15, 0)),  # across DST
    ],
)
def test_five_business_days(start: datetime, expected: datetime) -> None:
    assert CAL.add_days(start, 5) == expected


def test_delay_ending_at_closing_time_ends_then() -> None:
    assert CAL.add(paris(2026, 1, 9, 16, 0), H2) == paris(2026, 1, 9, 18, 0)


def test_start_before_opening_counts_from_opening() -> None:
    assert CAL.add(paris(2026, 1, 12, 6, 0), H2) == paris(2026, 1, 12, 10, 0)
    assert CAL.add(paris(2026, 1, 10, 10, 0), H2) == paris(2026, 1, 12, 10, 0)


def test_negative_delay_walks_back_through_open_time() -> None:
    assert CAL.add(paris(2026, 1, 12, 9, 0), -H2) == paris(2026, 1, 9, 17, 0)
    assert CAL.add_days(paris(2026, 1, 14, 10, 0), -5) == paris(2026, 1, 7, 10, 0)


def test_is_open_and_next_open() -> None:
    assert CAL.is_open(paris(2026, 1, 9, 17, 59))
    assert not CAL.is_open(paris(2026, 1, 9, 18, 0))
    assert not CAL.is_open(paris(2026, 1, 1, 10, 0))  # New Year's Day
    assert CAL.next_open(paris(2026, 1, 9, 18, 0)) == paris(2026, 1, 12, 8, 0)
    assert CAL.next_open(paris(2026, 1, 12, 9, 0)) == paris(2026, 1, 12, 9, 0)


def test_open_time_between_is_the_inverse_of_add() -> None:
    start, end = paris(2026, 1, 9, 17, 30), paris(2026, 1, 12, 9, 30)
    assert CAL.open_time_between(start, end) == H2
    assert CAL.open_time_between(end, start) == -H2


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        CAL.add(datetime(2026, 1, 9, 17, 30), H2)


@pytest.mark.parametrize(
    "bad",
    [
        {"open_time": time(18), "close_time": time(8)},
        {"weekdays": frozenset()},
        {"weekdays": frozenset({7})},
    ],
)
def test_impossible_calendars_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        BusinessCalendar(**bad)


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(Exception, match="Mars"):
        BusinessCalendar(tz="Mars/Olympus")


def test_adding_iterates_per_day_not_per_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    window = BusinessCalendar._window

    def counting(self: BusinessCalendar, day: date) -> tuple[datetime, datetime]:
        calls.append(day)
        return window(self, day)

    monkeypatch.setattr(BusinessCalendar, "_window", counting)
    CAL.add(paris(2027, 3, 26, 17, 30), H2)  # Friday before Easter Monday
    assert len(calls) == 2  # Friday, Tuesday: weekend and holiday cost no window
    calls.clear()
    CAL.add_days(paris(2026, 1, 7, 10, 0), 5)
    assert len(calls) == 6


@settings(max_examples=300, deadline=None)
@given(
    start=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    minutes=st.integers(min_value=1, max_value=60 * 80),
)
def test_add_consumes_exactly_the_delay_in_open_time(start: datetime, minutes: int) -> None:
    delta = timedelta(minutes=minutes)
    end = CAL.add(start, delta)
    assert end > start
    assert CAL.open_time_between(start, end) == delta
    # it ends inside an open window or exactly at a closing time, never in closed time
    local = end.astimezone(PARIS)
    assert CAL.is_open(end) or (
        local.time() == CAL.close_time and CAL.is_business_day(local.date())
    )
    # and walking back lands on start, or in the same closed gap as start
    assert CAL.open_time_between(start, CAL.add(end, -delta)) == timedelta(0)

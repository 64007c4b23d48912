"""Business calendar: delays that only count the hours a territory is open.

Field rules are phrased in office time: Entr'Actes answers "within 2 h, 8:00–18:00 on
weekdays, not on public holidays", so a 2-hour delay that starts on Friday at 17:30 ends on
Monday at 09:30, or on Tuesday when Monday is Easter Monday. This module turns such rules
into absolute UTC instants the deadline queue can fire on.

Design choices (why):
- Everything the rest of the bus sees is a tz-aware UTC `datetime`; the calendar only
  *reads* local wall time (zoneinfo, default Europe/Paris) to know which day it is and
  where the open window lies. Window bounds are converted to UTC before any comparison or
  subtraction: two datetimes sharing one ZoneInfo compare by wall time, which is wrong
  across a DST change.
- `add` walks day by day (never minute by minute): a 2-hour delay costs at most a few
  iterations, 5 business days about a week of them.
- French public holidays come from the `holidays` package and are cached per
  (country, subdivision, year). The package lists Whit Monday (lundi de Pentecôte) as a
  public holiday. Since 2008 it is legally the "journée de solidarité" each employer may
  choose to work, but most practices and hospital offices run a holiday service that day,
  so it stays *closed* by default; a territory that works on it lists the date in
  `open_dates`. Alsace-Moselle territories set `subdiv="57"` (or 67/68) to add Good Friday
  and St Stephen's Day.
- `always_open=True` is the 24/7 calendar (hospital wards, J+7 follow-up): time is plain
  elapsed time and days are calendar days in local wall time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

#: guard against configurations with no open day at all (would loop forever)
_MAX_DAYS = 366 * 20
_ONE_DAY = timedelta(days=1)
_ZERO = timedelta(0)


def as_utc(at: datetime) -> datetime:
    """Normalise an aware datetime to UTC; refuse naive ones (their zone is a guess)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"naive datetime {at.isoformat()}: pass a tz-aware datetime")
    return at.astimezone(UTC)


@lru_cache(maxsize=512)
def public_holidays(year: int, country: str = "FR", subdiv: str | None = None) -> frozenset[date]:
    """Public holidays of one year, computed once per (year, country, subdivision)."""
    return frozenset(holidays.country_holidays(country, subdiv=subdiv, years=year).keys())


@dataclass(frozen=True, slots=True, kw_only=True)
class BusinessCalendar:
    """Opening hours of a territory; immutable and hashable so it can key caches.

    Settings-shaped: pydantic validates it from a TOML table, e.g.
    `{open_time = "08:00", close_time = "18:00", weekdays = [0, 1, 2, 3, 4]}`.
    `weekdays` uses Python numbering (Monday = 0).
    """

    open_time: time = time(8, 0)
    close_time: time = time(18, 0)
    weekdays: frozenset[int] = frozenset(range(5))
    tz: str = "Europe/Paris"
    country: str = "FR"
    subdiv: str | None = None
    always_open: bool = False
    #: extra closures of the territory (e.g. a "pont" between a holiday and a weekend)
    closed_dates: frozenset[date] = frozenset()
    #: holidays the territory works anyway (e.g. Whit Monday as journée de solidarité)
    open_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if self.always_open:
            return
        if self.open_time >= self.close_time:
            raise ValueError("open_time must be before close_time")
        if not self.weekdays or not self.weekdays <= frozenset(range(7)):
            raise ValueError("weekdays must be a non-empty subset of 0 (Monday) … 6 (Sunday)")
        ZoneInfo(self.tz)  # fail at configuration time on an unknown zone

    @property
    def zone(self) -> ZoneInfo:
        """The territory's time zone (ZoneInfo caches instances by key)."""
        return ZoneInfo(self.tz)

    @property
    def day_length(self) -> timedelta:
        """Open time in one business day (a "business day" delay is this much open time)."""
        if self.always_open:
            return _ONE_DAY
        return datetime.combine(date.min, self.close_time) - datetime.combine(
            date.min, self.open_time
        )

    def holidays_of(self, year: int) -> frozenset[date]:
        """Public holidays of `year` for this calendar's country and subdivision."""
        return public_holidays(year, self.country, self.subdiv)

    def is_business_day(self, day: date) -> bool:
        """True when the territory is open at some point of `day` (local date)."""
        if self.always_open or day in self.open_dates:
            return True
        if day.weekday() not in self.weekdays or day in self.closed_dates:
            return False
        return day not in self.holidays_of(day.year)

    def is_open(self, at: datetime) -> bool:
        """True when `at` lies inside an open window."""
        at = as_utc(at)
        if self.always_open:
            return True
        day = at.astimezone(self.zone).date()
        if not self.is_business_day(day):
            return False
        opens, closes = self._window(day)
        return opens <= at < closes

    def _window(self, day: date) -> tuple[datetime, datetime]:
        """UTC bounds of the open window of a local `day`, DST-correct."""
        zone = self.zone
        opens = datetime.combine(day, self.open_time, tzinfo=zone).astimezone(UTC)
        closes = datetime.combine(day, self.close_time, tzinfo=zone).astimezone(UTC)
        return opens, closes

    def add(self, start: datetime, delta: timedelta) -> datetime:
        """`start` plus `delta` of open time (elapsed time when always open).

        A delay that runs out exactly at closing time ends at closing time (the deadline
        is "by end of business"), not at the next opening. A negative `delta` walks back
        through open time (reminders "1 h before due").
        """
        start = as_utc(start)
        if self.always_open or delta == _ZERO:
            return start + delta
        if delta > _ZERO:
            return self._forward(start, delta)
        return self._backward(start, -delta)

    def _forward(self, start: datetime, remaining: timedelta) -> datetime:
        day = start.astimezone(self.zone).date()
        for _ in range(_MAX_DAYS):
            if self.is_business_day(day):
                opens, closes = self._window(day)
                cursor = max(start, opens)
                if cursor < closes:
                    available = closes - cursor
                    if remaining <= available:
                        return cursor + remaining
                    remaining -= available
            day += _ONE_DAY
        raise ValueError("delay too long for the business calendar")

    def _backward(self, start: datetime, remaining: timedelta) -> datetime:
        day = start.astimezone(self.zone).date()
        for _ in range(_MAX_DAYS):
            if self.is_business_day(day):
                opens, closes = self._window(day)
                cursor = min(start, closes)
                if cursor > opens:
                    available = cursor - opens
                    if remaining <= available:
                        return cursor - remaining
                    remaining -= available
            day -= _ONE_DAY
        raise ValueError("delay too long for the business calendar")

    def add_days(self, start: datetime, days: int) -> datetime:
        """`start` plus `days` business days (calendar days when always open).

        Business days count `days * day_length` of open time: from inside an open window
        this is the same wall-clock time `days` open days later; from outside it is the
        end of the `days`-th open day. Calendar days keep the local wall-clock time, so
        "7 days" across a DST change still ends at the same hour on the clock.
        """
        start = as_utc(start)
        if days == 0:
            return start
        if not self.always_open:
            return self.add(start, days * self.day_length)
        zone = self.zone
        local = start.astimezone(zone).replace(tzinfo=None) + timedelta(days=days)
        return local.replace(tzinfo=zone).astimezone(UTC)

    def open_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Open time elapsed from `start` to `end` (negative when `end` is earlier).

        The inverse of `add`: the coordinator's dashboard shows "pending for 3 business
        hours", and tests use it to check `add`.
        """
        start, end = as_utc(start), as_utc(end)
        if end < start:
            return -self.open_time_between(end, start)
        if self.always_open:
            return end - start
        total = _ZERO
        day = start.astimezone(self.zone).date()
        last = end.astimezone(self.zone).date()
        while day <= last:
            if self.is_business_day(day):
                opens, closes = self._window(day)
                lo, hi = max(start, opens), min(end, closes)
                if hi > lo:
                    total += hi - lo
            day += _ONE_DAY
        return total

    def next_open(self, at: datetime) -> datetime:
        """`at` itself when open, else the next opening instant."""
        at = as_utc(at)
        if self.always_open:
            return at
        day = at.astimezone(self.zone).date()
        for _ in range(_MAX_DAYS):
            if self.is_business_day(day):
                opens, closes = self._window(day)
                if at < closes:
                    return max(at, opens)
            day += _ONE_DAY
        raise ValueError("the business calendar never opens")


#: 24/7 calendar for delays that run day and night (J+7 follow-up, tele-expertise days)
ALWAYS_OPEN = BusinessCalendar(always_open=True)

"""SLA policies: which delays, reminders and escalations apply to which case.

Territories tune these rules without code (ARCHITECTURE: "SLA policies … are settings"),
so every model here validates from a plain TOML/JSON table and dumps back to one:

    [sla.calendar]
    open_time = "08:00"
    close_time = "18:00"

    [[sla.policies]]
    name = "referral-urgent"
    applies_to = "referral.requested"
    priorities = ["urgent", "asap", "stat"]
    due = "2h"                         # business hours: business_hours defaults to true
    reminder_at = [{after = "0h", anchor = "due", notify = ["performer"]}]
    escalate_after = "2h"
    escalate_to = ["coordinator", "requester"]

Delays are `Delay` values, written "2h", "30min", "5d", "1d4h", "-1h" or ISO 8601
("PT2H", "P5D"). Days and hours are kept apart on purpose: under a business clock "5d"
means five *business days* and "2h" two *business hours*; folding both into one timedelta
would make "PT24H" (one business day, 10 open hours) shorter than "PT12H" (12 open hours).

Defaults come from the field (see DOMAIN.md):
- referral urgent/asap/stat — Entr'Actes: accept or decline within 2 business hours, one
  reminder at the deadline, and 2 business hours later escalate to the territory
  coordinator and tell the requester;
- referral routine — due within 5 business days, a reminder at the deadline, escalation
  2 business days after it (our choice: long enough for a specialist back from a short
  absence to answer, short enough for the coordinator to act within the same week);
- tele-expertise — answer within 7 calendar days, reminder after 3 days, escalation at 7;
- discharge — 48 h notice (late notice to the coordinator at once), 24 h for each
  recipient to acknowledge, J+7 follow-up for the coordinator.
No default has a breach step; `breach_after` is there for territories that want one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, model_validator

from processors.sla.calendar import BusinessCalendar
from schemas.codes import EventType
from schemas.model import Priority

#: who a step notifies; the agent resolves roles to addresses from the case's resources.
#: "recipient" is the individual recipient a deadline tracks (discharge acknowledgements).
Role = Literal["performer", "requester", "coordinator", "recipient", "gp"]
ROLES: tuple[Role, ...] = ("performer", "requester", "coordinator", "recipient", "gp")
#: events that open a watched request, and so may carry an SlaPolicy
OPENING_EVENTS = frozenset({EventType.REFERRAL_REQUESTED, EventType.EXPERTISE_REQUESTED})

_HUMAN = re.compile(r"(\d+(?:\.\d+)?)\s*(days?|d|j|hours?|h|minutes?|min|m|seconds?|sec|s)")
_ISO = re.compile(
    r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?"
)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


@dataclass(frozen=True, slots=True)
class Delay:
    """A delay of `days` (business or calendar) followed by `time` (business or elapsed).

    Which clock applies is the policy's `business_hours` flag; `apply` does the maths.
    """

    days: int = 0
    time: timedelta = timedelta(0)

    @classmethod
    def parse(cls, value: object) -> Delay:
        """Read a delay from settings: "2h", "5d", "1d4h30min", "-1h", "PT2H", seconds.

        A `timedelta` is taken as time only (timedelta(days=5) is 120 hours, not 5 days):
        Python normalises hours into days, so its `days` cannot carry intent.
        """
        if isinstance(value, Delay):
            return value
        if isinstance(value, timedelta):
            return cls(0, value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return cls(0, timedelta(seconds=value))
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"not a delay: {value!r} (write e.g. '2h', '5d' or 'PT2H')")
        text = value.strip().lower()
        sign = -1 if text.startswith("-") else 1
        text = text.lstrip("+-").strip()
        iso = _ISO.fullmatch(text.upper())
        if iso and text.upper() not in ("P", "PT"):
            weeks, days, hours, minutes, seconds = (g or "0" for g in iso.groups())
            time = timedelta(hours=float(hours), minutes=float(minutes), seconds=float(seconds))
            return cls(sign * (int(weeks) * 7 + int(days)), sign * time)
        parts = _HUMAN.findall(text)
        if not parts or _HUMAN.sub("", text).strip():
            raise ValueError(f"not a delay: {value!r} (write e.g. '2h', '5d' or 'PT2H')")
        days, seconds = 0, 0.0
        for amount, unit in parts:
            if unit[0] in "dj":
                if float(amount) != int(float(amount)):
                    raise ValueError(f"days must be whole in {value!r}: write '1d12h'")
                days += int(float(amount))
            else:
                seconds += float(amount) * _UNIT_SECONDS[unit[0]]
        return cls(sign * days, sign * timedelta(seconds=seconds))

    def __str__(self) -> str:
        """ISO 8601 form, so a dumped policy reads back to the same delay."""
        negative = self.days < 0 or (self.days == 0 and self.time < timedelta(0))
        days, seconds = abs(self.days), abs(self.time.total_seconds())
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        text = "P" + (f"{days}D" if days else "")
        clock = "".join(f"{n:g}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
        text += f"T{clock}" if clock else ("" if days else "T0S")
        return ("-" if negative else "") + text

    def apply(self, start: datetime, calendar: BusinessCalendar) -> datetime:
        """The instant this delay after `start` ends on `calendar` (UTC)."""
        return calendar.add(calendar.add_days(start, self.days), self.time)

    def scaled(self, factor: float, day: timedelta) -> Delay:
        """This delay divided by `factor` as pure time, a day being `day` long."""
        return Delay(0, (self.days * day + self.time) / factor)


DelayField = Annotated[
    Delay,
    PlainValidator(Delay.parse, json_schema_input_type=str | int | float),
    PlainSerializer(str, return_type=str),
]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Reminder(BaseModel):
    """One reminder: `after` from the request (`anchor="start"`) or from the due date."""

    model_config = _FROZEN
    after: DelayField = Delay()
    anchor: Literal["start", "due"] = "due"
    notify: tuple[Role, ...] = ("performer",)


class SlaPolicy(BaseModel):
    """Delays for requests opened by `applies_to` with one of `priorities` (empty = any)."""

    model_config = _FROZEN
    name: str
    applies_to: EventType
    priorities: tuple[Priority, ...] = ()
    business_hours: bool = True
    due: DelayField
    reminder_at: tuple[Reminder, ...] = ()
    escalate_after: DelayField | None = None
    escalate_to: tuple[Role, ...] = ("coordinator", "requester")
    breach_after: DelayField | None = None
    breach_notify: tuple[Role, ...] = ("coordinator",)

    @model_validator(mode="after")
    def _opening_event(self) -> SlaPolicy:
        if self.applies_to not in OPENING_EVENTS:
            opening = ", ".join(sorted(OPENING_EVENTS))
            raise ValueError(f"applies_to must be an opening event ({opening})")
        return self

    def matches(self, event_type: EventType | str, priority: str | None) -> bool:
        """True when this policy governs a request of that type and priority."""
        return self.applies_to == event_type and (
            not self.priorities or (priority or "routine") in self.priorities
        )


class DischargePolicy(BaseModel):
    """Discharge rules: 48 h notice, recipients' acknowledgement, J+7 follow-up."""

    model_config = _FROZEN
    name: str = "discharge"
    business_hours: bool = False
    notice: DelayField = Delay(0, timedelta(hours=48))
    late_notice_to: tuple[Role, ...] = ("coordinator",)
    ack_within: DelayField | None = Delay(0, timedelta(hours=24))
    #: events that acknowledge a recipient (MDN read receipts, platform acks and accepts
    #: are mapped to delivery.read by the outbound adapters)
    ack_events: tuple[EventType, ...] = (EventType.DELIVERY_READ,)
    followup_after: DelayField | None = Delay(7)
    followup_to: tuple[Role, ...] = ("coordinator",)


def _h(hours: float) -> Delay:
    return Delay(0, timedelta(hours=hours))


def default_policies() -> tuple[SlaPolicy, ...]:
    """The field defaults described in the module docstring."""
    at_due = (Reminder(after=Delay(), anchor="due", notify=("performer",)),)
    return (
        SlaPolicy(
            name="referral-urgent",
            applies_to=EventType.REFERRAL_REQUESTED,
            priorities=("urgent", "asap", "stat"),
            due=_h(2),
            reminder_at=at_due,
            escalate_after=_h(2),
        ),
        SlaPolicy(
            name="referral-routine",
            applies_to=EventType.REFERRAL_REQUESTED,
            priorities=("routine",),
            due=Delay(5),
            reminder_at=at_due,
            escalate_after=Delay(2),
        ),
        SlaPolicy(
            name="expertise",
            applies_to=EventType.EXPERTISE_REQUESTED,
            business_hours=False,
            due=Delay(7),
            reminder_at=(Reminder(after=Delay(3), anchor="start", notify=("performer",)),),
            escalate_after=Delay(),
        ),
    )


@lru_cache(maxsize=64)
def _always_open(calendar: BusinessCalendar) -> BusinessCalendar:
    return replace(calendar, always_open=True)


class SlaPolicies(BaseModel):
    """Every SLA rule of a territory; a supplied `policies` list replaces the defaults."""

    model_config = _FROZEN
    calendar: BusinessCalendar = Field(default_factory=BusinessCalendar)
    policies: tuple[SlaPolicy, ...] = Field(default_factory=default_policies)
    discharge: DischargePolicy = Field(default_factory=DischargePolicy)
    #: how long a case is remembered after its last inbound event once nothing is pending
    #: (calendar time; processors/sla/retention.py). 30 days, as long as the event topics
    #: keep the events themselves. Not scaled by `compressed`: it bounds the workers'
    #: memory (about 1 KB per case remembered), it is not a promise made to anyone.
    retention: DelayField = Delay(30)

    @model_validator(mode="after")
    def _unique_names(self) -> SlaPolicies:
        names = [p.name for p in self.policies] + [self.discharge.name]
        if len(set(names)) != len(names):
            raise ValueError(f"policy names must be unique: {names}")
        if self.retention.days * 86400 + self.retention.time.total_seconds() <= 0:
            raise ValueError(f"retention must be positive, not {self.retention}")
        return self

    def policy_for(self, event_type: EventType | str, priority: str | None) -> SlaPolicy | None:
        """First policy for that opening event and priority (None → routine); None if none."""
        return next((p for p in self.policies if p.matches(event_type, priority)), None)

    def clock(self, business_hours: bool) -> BusinessCalendar:
        """The territory calendar, or its 24/7 twin for calendar-time policies."""
        return self.calendar if business_hours else _always_open(self.calendar)

    def compressed(self, factor: float | Mapping[str, float]) -> SlaPolicies:
        """Demo/test policies where every delay is divided by `factor` (3600: hours → s).

        A mapping gives a factor per policy name (the discharge policy is "discharge");
        policies it does not name are kept as they are. Compressed policies run on the 24/7
        clock (a business day first becomes `calendar.day_length` of time), otherwise a
        "2 s" delay started on Friday evening would still wait for Monday.
        """

        def one(name: str) -> float | None:
            if isinstance(factor, Mapping):
                return factor.get(name)
            return factor

        def scale(d: Delay | None, f: float, business: bool) -> Delay | None:
            if d is None:
                return None
            return d.scaled(f, self.calendar.day_length if business else timedelta(days=1))

        policies = []
        for p in self.policies:
            f = one(p.name)
            if f is None:
                policies.append(p)
                continue
            b = p.business_hours
            reminders = tuple(
                r.model_copy(update={"after": scale(r.after, f, b)}) for r in p.reminder_at
            )
            policies.append(
                p.model_copy(
                    update={
                        "business_hours": False,
                        "due": scale(p.due, f, b),
                        "reminder_at": reminders,
                        "escalate_after": scale(p.escalate_after, f, b),
                        "breach_after": scale(p.breach_after, f, b),
                    }
                )
            )
        discharge = self.discharge
        f = one(discharge.name)
        if f is not None:
            b = discharge.business_hours
            discharge = discharge.model_copy(
                update={
                    "business_hours": False,
                    "notice": scale(discharge.notice, f, b),
                    "ack_within": scale(discharge.ack_within, f, b),
                    "followup_after": scale(discharge.followup_after, f, b),
                }
            )
        return self.model_copy(update={"policies": tuple(policies), "discharge": discharge})

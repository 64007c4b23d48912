"""SLA policies: settings shape, field defaults, delay syntax, compressed demo policies."""

from __future__ import annotations

import tomllib
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from processors.sla.policy import Delay, SlaPolicies, SlaPolicy
from schemas.codes import EventType

PARIS = ZoneInfo("Europe/Paris")
DEFAULTS = SlaPolicies()


@pytest.mark.parametrize(
    ("text", "days", "hours"),
    [
        ("2h", 0, 2),
        ("2 h", 0, 2),
        ("5d", 5, 0),
        ("5 days", 5, 0),
        ("3j", 3, 0),
        ("1d4h30min", 1, 4.5),
        ("90min", 0, 1.5),
        ("-1h", 0, -1),
        ("PT2H", 0, 2),
        ("P5D", 5, 0),
        ("P1DT2H30M", 1, 2.5),
        ("P1W", 7, 0),
        ("-PT30M", 0, -0.5),
    ],
)
def test_delay_syntax(text: str, days: int, hours: float) -> None:
    delay = Delay.parse(text)
    assert (delay.days, delay.time) == (days, timedelta(hours=hours))
    assert Delay.parse(str(delay)) == delay  # dumps read back


def test_numbers_and_timedeltas_are_time_not_days() -> None:
    assert Delay.parse(90) == Delay(0, timedelta(seconds=90))
    # Python folds 120 h into days=5: a timedelta cannot mean "5 business days"
    assert Delay.parse(timedelta(days=5)) == Delay(0, timedelta(hours=120))


@pytest.mark.parametrize("bad", ["", "soon", "2 fortnights", "1.5d", "PT", "90", None, True])
def test_bad_delays_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        Delay.parse(bad)


def test_default_lookup_by_event_and_priority() -> None:
    for priority in ("urgent", "asap", "stat"):
        policy = DEFAULTS.policy_for(EventType.REFERRAL_REQUESTED, priority)
        assert policy is not None and policy.name == "referral-urgent"
    assert DEFAULTS.policy_for("referral.requested", "routine").name == "referral-routine"
    assert DEFAULTS.policy_for("referral.requested", None).name == "referral-routine"
    assert DEFAULTS.policy_for("expertise.requested", "stat").name == "expertise"
    assert DEFAULTS.policy_for("discharge.planned", None) is None


def test_defaults_encode_the_field_rules() -> None:
    urgent = DEFAULTS.policy_for("referral.requested", "urgent")
    assert urgent.business_hours and urgent.due == Delay(0, timedelta(hours=2))
    assert [(r.after, r.anchor) for r in urgent.reminder_at] == [(Delay(), "due")]
    assert urgent.escalate_after == Delay(0, timedelta(hours=2))
    assert set(urgent.escalate_to) == {"coordinator", "requester"}
    routine = DEFAULTS.policy_for("referral.requested", "routine")
    assert (routine.due, routine.escalate_after) == (Delay(5), Delay(2))
    expertise = DEFAULTS.policy_for("expertise.requested", None)
    assert not expertise.business_hours and expertise.due == Delay(7)
    assert [(r.after, r.anchor) for r in expertise.reminder_at] == [(Delay(3), "start")]
    assert expertise.escalate_after == Delay()
    d = DEFAULTS.discharge
    assert (d.notice, d.ack_within, d.followup_after) == (
        Delay(0, timedelta(hours=48)),
        Delay(0, timedelta(hours=24)),
        Delay(7),
    )


TERRITORY = """
[calendar]
open_time = "08:30"
close_time = "17:30"
closed_dates = [2026-05-15]

[[policies]]
name = "urgent"
applies_to = "referral.requested"
priorities = ["urgent", "stat"]
due = "1h"
reminder_at = [{after = "-30min", anchor = "due"}, {after = "0h"}]
escalate_after = "PT1H"
escalate_to = ["coordinator"]
breach_after = "1d"

[discharge]
notice = "72h"
ack_within = "4h"
"""


def test_a_territory_configures_policies_in_toml() -> None:
    policies = SlaPolicies.model_validate(tomllib.loads(TERRITORY))
    assert policies.calendar.open_time.hour == 8 and policies.calendar.open_time.minute == 30
    assert date(2026, 5, 15) in policies.calendar.closed_dates
    urgent = policies.policy_for("referral.requested", "stat")
    assert urgent is not None and urgent.reminder_at[0].after == Delay(0, timedelta(minutes=-30))
    assert urgent.breach_after == Delay(1)
    assert policies.policy_for("referral.requested", "routine") is None  # list replaced
    assert policies.discharge.notice == Delay(0, timedelta(hours=72))
    assert policies.discharge.followup_after == Delay(7)  # untouched default


def test_policies_dump_and_reload_identically() -> None:
    dumped = DEFAULTS.model_dump(mode="json")
    assert dumped["policies"][0]["due"] == "PT2H"
    assert SlaPolicies.model_validate(dumped) == DEFAULTS


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValidationError, match="opening event"):
        SlaPolicy(name="x", applies_to=EventType.REFERRAL_ACCEPTED, due="2h")
    with pytest.raises(ValidationError, match="unique"):
        SlaPolicies(policies=(DEFAULTS.policies[0], DEFAULTS.policies[0]))
    with pytest.raises(ValidationError):
        SlaPolicies.model_validate({"discharge": {"notise": "48h"}})  # typo caught
    with pytest.raises(ValidationError):
        SlaPolicy(name="x", applies_to=EventType.REFERRAL_REQUESTED, due="tomorrow")


def test_compressed_turns_hours_into_seconds_on_a_24_7_clock() -> None:
    fast = DEFAULTS.compressed(3600)
    urgent = fast.policy_for("referral.requested", "urgent")
    assert not urgent.business_hours
    assert urgent.due == Delay(0, timedelta(seconds=2))
    routine = fast.policy_for("referral.requested", "routine")
    assert routine.due == Delay(0, timedelta(seconds=50))  # 5 business days of 10 h
    assert fast.policy_for("expertise.requested", None).due == Delay(0, timedelta(seconds=168))
    assert fast.discharge.notice == Delay(0, timedelta(seconds=48))
    assert fast.discharge.followup_after == Delay(0, timedelta(seconds=168))
    friday_evening = datetime(2026, 1, 9, 17, 30, tzinfo=PARIS)
    due = urgent.due.apply(friday_evening, fast.clock(urgent.business_hours))
    assert due - friday_evening == timedelta(seconds=2)


def test_compressed_with_a_mapping_only_touches_named_policies() -> None:
    fast = DEFAULTS.compressed({"referral-urgent": 60, "discharge": 3600})
    assert fast.policy_for("referral.requested", "urgent").due == Delay(0, timedelta(minutes=2))
    assert fast.policy_for("referral.requested", "routine") == DEFAULTS.policies[1]
    assert fast.discharge.ack_within == Delay(0, timedelta(seconds=24))


def test_clock_picks_business_or_24_7_calendar() -> None:
    assert DEFAULTS.clock(True) is DEFAULTS.calendar
    always = DEFAULTS.clock(False)
    assert always.always_open and always.tz == DEFAULTS.calendar.tz

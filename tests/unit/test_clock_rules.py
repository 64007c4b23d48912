"""The ingress clock rule, pure: a message's own time against the bus clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from adapters.ingress import Ingress
from bus.settings import IngressSettings
from schemas.clock_rules import message_time_issue
from schemas.samples import sample_bundle
from schemas.validate import validate_message

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SKEW = timedelta(minutes=15)
AGE = timedelta(days=30)


def judge(stamp: str, max_age: timedelta | None = AGE) -> str | None:
    issue = message_time_issue(stamp, NOW, max_skew=SKEW, max_age=max_age)
    return issue.diagnostics if issue else None


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-11-23T12:00:00Z",
        "2026-11-23T13:14:59+01:00",  # 14 min 59 s ahead, written in Paris time
        "2026-10-24T12:00:01Z",  # 30 days old less one second
        "2026-11-23T12:15:00+00:00",  # exactly the tolerance
    ],
)
def test_plausible_times_pass(stamp: str) -> None:
    assert judge(stamp) is None


def test_ahead_beyond_the_tolerance_names_the_gap_and_the_remedy() -> None:
    said = judge("2026-11-23T13:16:00+01:00")  # 16 min ahead
    assert said is not None and "16 min ahead" in said and "time zone" in said


def test_a_day_ahead_is_said_in_hours() -> None:
    said = judge("2026-11-24T12:00:00Z")
    assert said is not None and "24.0 h ahead" in said


def test_older_than_the_limit_is_refused_with_the_way_to_replay() -> None:
    said = judge("2026-10-24T11:59:59Z")
    assert said is not None and "30 days old (limit 30 days)" in said and "replay" in said


def test_no_age_limit_takes_any_past_but_never_the_future() -> None:
    assert judge("2019-01-01T00:00:00Z", max_age=None) is None
    assert judge("2027-01-01T00:00:00Z", max_age=None) is not None


@pytest.mark.parametrize("stamp", ["", "not a date", "2026-11-23T12:00:00"])
def test_unreadable_or_naive_times_are_left_to_validation(stamp: str) -> None:
    assert judge(stamp) is None


def test_the_location_is_the_callers() -> None:
    issue = message_time_issue(
        "2030-01-01T00:00:00Z", NOW, max_skew=SKEW, max_age=AGE, where="MSH-7"
    )
    assert issue is not None and issue.expression == "MSH-7"


def _message(stamp: datetime):
    raw = orjson.dumps(sample_bundle("referral.requested", timestamp=stamp))
    return validate_message(raw, structural=False)


def test_ingress_applies_its_rules_and_none_means_none() -> None:
    ahead = _message(datetime.now(UTC) + timedelta(days=2))
    assert Ingress(None, rules=IngressSettings()).check_clock(ahead) is not None  # type: ignore[arg-type]
    assert Ingress(None).check_clock(ahead) is None  # type: ignore[arg-type]  # replay, send
    off = IngressSettings(max_message_age_days=0)
    old = _message(datetime(2020, 1, 1, tzinfo=UTC))
    assert Ingress(None, rules=off).check_clock(old) is None  # type: ignore[arg-type]
    assert Ingress(None, rules=IngressSettings()).check_clock(old) is not None  # type: ignore[arg-type]


def test_a_retransmission_of_an_accepted_message_is_not_judged_again() -> None:
    """Acknowledged once (AA/202): a resend a month later must hear the same, not AR."""
    ingress = Ingress(None, rules=IngressSettings())  # type: ignore[arg-type]
    old = _message(datetime(2020, 1, 1, tzinfo=UTC))
    ingress._acked.mark(old.event_id)
    assert ingress.check_clock(old) is None

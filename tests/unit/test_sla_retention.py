"""The retention rule (processors/sla/retention.py): when a case may be forgotten, pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.routing.parties import CaseParties, Party
from processors.sla.policy import Delay, SlaPolicies
from processors.sla.retention import length, slack, stale, verdict
from processors.sla.state import CaseState, Deadline

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NINETY = Delay(90)


def parties(touched: datetime | int) -> CaseParties:
    at = touched if isinstance(touched, int) else int(touched.timestamp())
    return CaseParties(parties=(Party("gp", "10003456125"),), touched=at)


def state(pending: bool) -> CaseState:
    s = CaseState("referral/x", "referral", status="open" if pending else "answered")
    if pending:
        s.pending.append(Deadline(T0 + timedelta(days=400), "reminder", token=1))
    return s


def test_default_retention_is_thirty_calendar_days_and_must_be_positive() -> None:
    assert length(SlaPolicies().retention) == timedelta(days=30)
    assert SlaPolicies(retention="2s").retention == Delay(0, timedelta(seconds=2))
    with pytest.raises(ValueError, match="retention must be positive"):
        SlaPolicies(retention="0s")


def test_a_finished_case_is_kept_until_retention_plus_slack_then_forgotten() -> None:
    p = parties(T0)
    deadline = T0 + length(NINETY) + slack(NINETY)
    assert verdict(p, state(False), deadline - timedelta(seconds=1), NINETY) == "keep"
    assert verdict(p, state(False), deadline, NINETY) == "purge"
    assert verdict(p, None, deadline, NINETY) == "purge"  # an A01 alone: parties only


def test_a_pending_deadline_keeps_the_case_however_old() -> None:
    assert verdict(parties(T0), state(True), T0 + timedelta(days=3650), NINETY) == "keep"


def test_undated_entries_are_dated_not_purged() -> None:
    years_later = T0 + timedelta(days=3650)
    assert verdict(parties(0), None, years_later, NINETY) == "touch"  # written before dates
    assert verdict(None, state(False), years_later, NINETY) == "touch"  # state, no parties
    assert verdict(None, None, years_later, NINETY) == "keep"  # already gone


def test_touch_rewrites_only_when_the_date_is_stale() -> None:
    touched = int(T0.timestamp())
    assert stale(0, T0, NINETY)
    assert not stale(touched, T0 + slack(NINETY) - timedelta(seconds=1), NINETY)
    assert stale(touched, T0 + slack(NINETY), NINETY)


def test_the_date_survives_merging_and_serialisation() -> None:
    p = parties(T0)
    newer = CaseParties(parties=(Party("care-team", "10098765430"),))
    merged = p.merged(newer)
    assert merged.touched == p.touched
    assert CaseParties.from_bytes(merged.to_bytes()) == merged
    # an entry written before the field existed reads back undated
    legacy = b'{"parties":[],"hospital_finess":"","patient_postcode":"","patient_ins":false,'
    legacy += b'"opposition":false,"extra":{}}'
    assert CaseParties.from_bytes(legacy).touched == 0


@given(
    gaps=st.lists(st.integers(min_value=0, max_value=40 * 86400), min_size=1, max_size=30),
    sweep_after=st.integers(min_value=0, max_value=200 * 86400),
)
def test_never_forgotten_before_retention_and_always_by_retention_plus_slack(
    gaps: list[int], sweep_after: int
) -> None:
    """Inbound events at arbitrary times, each dating the case the way the agent does
    (only when stale); a sweep at any later time purges only if the last event is at
    least `retention` old, and surely once it is `retention + slack` old."""
    now = T0
    touched = 0
    for gap in gaps:
        now += timedelta(seconds=gap)
        if stale(touched, now, NINETY):
            touched = int(now.timestamp())
    last_event = now
    at = last_event + timedelta(seconds=sweep_after)
    judged = verdict(parties(touched), state(False), at, NINETY)
    if judged == "purge":
        assert at - last_event >= length(NINETY)
    if at - last_event >= length(NINETY) + slack(NINETY):
        assert judged == "purge"

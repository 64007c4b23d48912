"""SLA state machine: every escalation rule, driven by an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import count
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from processors.sla.machine import (
    CaseState,
    Effects,
    EventFacts,
    Notice,
    notice_type,
    on_due,
    on_event,
)
from processors.sla.policy import Delay, Reminder, SlaPolicies, SlaPolicy
from processors.sla.state import DIGEST_SIZE, HISTORY_MAX, SEEN_MAX, Fired
from schemas.codes import EventType as E

PARIS = ZoneInfo("Europe/Paris")
POLICIES = SlaPolicies()
REF = "referral/https://carebus.fr/fhir/sid/referral|ADR-2026-000123"
STAY = "stay/urn:oid:1.2.250.1.71.4.2.2|VN-2026-000042"
EXP = "expertise/https://carebus.fr/fhir/sid/expertise|TE-2026-000007"
_ids = count(1)


def paris(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS)


def apply(
    state: CaseState | None,
    event_type: E,
    at: datetime,
    case: str = REF,
    policies: SlaPolicies = POLICIES,
    event_id: str | None = None,
    now: datetime | None = None,
    **kw: Any,
) -> tuple[CaseState | None, Effects]:
    facts = EventFacts(case_id=case, event_id=event_id or f"ev-{next(_ids)}", time=at, **kw)
    return on_event(state, event_type, facts, now or at, policies)


def fire_all(state: CaseState, now: datetime) -> tuple[CaseState, list[Notice]]:
    """Fire every due deadline in time order, as the agent would; return notices."""
    notices = []
    for d in sorted(state.pending, key=lambda d: d.fire_at):
        state, fired, _ = on_due(state, d, now)
        notices.extend(fired)
    return state, notices


def urgent_friday_evening() -> tuple[CaseState, Effects]:
    return apply(None, E.REFERRAL_REQUESTED, paris(2026, 1, 9, 17, 30), priority="urgent")


def test_urgent_referral_schedules_reminder_at_due_then_escalation() -> None:
    state, effects = urgent_friday_evening()
    assert state.status == "open" and state.kind == "referral" and state.priority == "urgent"
    assert state.due_at == paris(2026, 1, 12, 9, 30)  # 2 business hours after Fri 17:30
    kinds = [(d.kind, d.fire_at, d.notify) for d in effects.schedule]
    assert kinds == [
        ("reminder", paris(2026, 1, 12, 9, 30), ("performer",)),
        ("escalation", paris(2026, 1, 12, 11, 30), ("requester", "coordinator")),
    ]
    assert effects.schedule == tuple(state.pending) and not effects.notices


def test_reminder_then_escalation_fire_once_each() -> None:
    state, effects = urgent_friday_evening()
    reminder, escalation = effects.schedule
    state, notices, nxt = on_due(state, reminder, paris(2026, 1, 12, 9, 30))
    assert [n.event_type for n in notices] == [E.SLA_REMINDER] and nxt == ()
    assert notices[0].notify == ("performer",) and notices[0].deadline == state.due_at
    again, repeat, _ = on_due(state, reminder, paris(2026, 1, 12, 9, 31))
    assert repeat == () and again is state  # exactly once
    state, notices, _ = on_due(state, escalation.token, paris(2026, 1, 12, 11, 30))
    assert notices[0].event_type == E.SLA_ESCALATED
    assert set(notices[0].notify) == {"coordinator", "requester"}
    assert state.pending == [] and [f.kind for f in state.history] == ["reminder", "escalation"]


def test_a_deadline_does_not_fire_early() -> None:
    state, effects = urgent_friday_evening()
    same, notices, requeue = on_due(state, effects.schedule[0], paris(2026, 1, 12, 9, 29))
    assert notices == () and requeue == (effects.schedule[0],) and same is state


def test_notice_ids_are_deterministic_per_case_and_token() -> None:
    state, effects = urgent_friday_evening()
    _, first, _ = on_due(state, effects.schedule[0], paris(2026, 1, 12, 10))
    _, second, _ = on_due(state, effects.schedule[0], paris(2026, 1, 13, 10))
    assert first[0].event_id == second[0].event_id  # re-fire after a crash dedups downstream
    _, other, _ = on_due(state, effects.schedule[1], paris(2026, 1, 13, 10))
    assert other[0].event_id != first[0].event_id


def test_answer_in_time_cancels_everything() -> None:
    state, effects = urgent_friday_evening()
    state, answer = apply(state, E.REFERRAL_ACCEPTED, paris(2026, 1, 12, 9, 0))
    assert answer.cancel == effects.schedule and not answer.answered_late
    assert state.status == "answered" and state.pending == [] and not state.answered_late
    for d in effects.schedule:  # stale queue entries fire nothing
        assert on_due(state, d, paris(2026, 1, 20))[1] == ()


def test_late_answer_is_recorded_and_cancels_the_escalation() -> None:
    state, effects = urgent_friday_evening()
    state, _, _ = on_due(state, effects.schedule[0], paris(2026, 1, 12, 9, 30))
    state, answer = apply(state, E.REFERRAL_REJECTED, paris(2026, 1, 12, 10, 0))
    assert answer.answered_late and state.answered_late and state.status == "answered"
    assert [d.kind for d in answer.cancel] == ["escalation"]


def test_routine_referral_five_business_days_then_escalation_two_later() -> None:
    state, effects = apply(None, E.REFERRAL_REQUESTED, paris(2026, 1, 7, 10, 0))
    assert state.priority is None and state.due_at == paris(2026, 1, 14, 10, 0)
    assert [(d.kind, d.fire_at) for d in effects.schedule] == [
        ("reminder", paris(2026, 1, 14, 10, 0)),
        ("escalation", paris(2026, 1, 16, 10, 0)),
    ]


def test_expertise_reminder_after_three_days_escalation_at_seven() -> None:
    state, effects = apply(None, E.EXPERTISE_REQUESTED, paris(2026, 1, 9, 15, 0), case=EXP)
    assert state.kind == "expertise" and state.due_at == paris(2026, 1, 16, 15, 0)
    assert [(d.kind, d.fire_at) for d in effects.schedule] == [
        ("reminder", paris(2026, 1, 12, 15, 0)),  # calendar days: the weekend counts
        ("escalation", paris(2026, 1, 16, 15, 0)),
    ]
    state, notices = fire_all(state, paris(2026, 1, 17))
    assert [n.event_type for n in notices] == [E.SLA_REMINDER, E.SLA_ESCALATED]


@pytest.mark.parametrize("answer", [E.EXPERTISE_ANSWERED, E.EXPERTISE_DECLINED])
def test_expertise_answers_close_the_loop(answer: E) -> None:
    state, _ = apply(None, E.EXPERTISE_REQUESTED, paris(2026, 1, 9, 15, 0), case=EXP)
    state, effects = apply(state, answer, paris(2026, 1, 17, 9, 0), case=EXP)
    assert state.status == "answered" and effects.answered_late and len(effects.cancel) == 2


def test_cancelled_referral_never_fires_and_ignores_later_answers() -> None:
    state, effects = urgent_friday_evening()
    state, cancel = apply(state, E.REFERRAL_CANCELLED, paris(2026, 1, 12, 8, 0))
    assert state.status == "cancelled" and cancel.cancel == effects.schedule
    state2, late = apply(state, E.REFERRAL_ACCEPTED, paris(2026, 1, 12, 10, 0))
    assert state2 is state and late.ignored
    assert fire_all(state, paris(2026, 2, 1))[1] == []


def test_completed_referral_is_closed() -> None:
    state, _ = urgent_friday_evening()
    state, _ = apply(state, E.REFERRAL_ACCEPTED, paris(2026, 1, 12, 9, 0))
    state, effects = apply(state, E.REFERRAL_COMPLETED, paris(2026, 1, 20, 9, 0))
    assert state.status == "closed" and effects.ignored is None and not state.answered_late


def test_breach_step_when_a_territory_configures_one() -> None:
    strict = SlaPolicies(
        policies=(
            SlaPolicy(
                name="strict",
                applies_to=E.REFERRAL_REQUESTED,
                due="2h",
                reminder_at=(Reminder(after="-1h"),),
                breach_after="1d",
            ),
        )
    )
    state, effects = apply(None, E.REFERRAL_REQUESTED, paris(2026, 1, 9, 17, 30), policies=strict)
    assert [(d.kind, d.fire_at) for d in effects.schedule] == [
        ("reminder", paris(2026, 1, 12, 8, 30)),  # 1 business hour before due
        ("breach", paris(2026, 1, 13, 9, 30)),
    ]
    state, notices = fire_all(state, paris(2026, 1, 14))
    assert notices[-1].event_type == E.SLA_BREACHED and notices[-1].notify == ("coordinator",)
    assert state.status == "open"  # still unanswered: a late answer is still recorded
    assert apply(state, E.REFERRAL_ACCEPTED, paris(2026, 1, 14))[1].answered_late


def test_same_event_twice_changes_nothing() -> None:
    state, first = urgent_friday_evening()
    at = paris(2026, 1, 12, 9, 0)
    answered, _ = apply(state, E.REFERRAL_ACCEPTED, at, event_id="accept-1")
    again, effects = apply(answered, E.REFERRAL_ACCEPTED, at, event_id="accept-1")
    assert effects.duplicate and again is answered and not effects.cancel
    stored = CaseState.from_bytes(answered.to_bytes())  # dedup survives the table
    assert apply(stored, E.REFERRAL_ACCEPTED, at, event_id="accept-1")[1].duplicate
    assert first.schedule and len(answered.seen) == 2


def test_on_event_and_on_due_never_mutate_their_input() -> None:
    state, effects = urgent_friday_evening()
    snapshot = state.to_bytes()
    apply(state, E.REFERRAL_CANCELLED, paris(2026, 1, 12, 8, 0))
    on_due(state, effects.schedule[0], paris(2026, 1, 12, 12, 0))
    assert state.to_bytes() == snapshot


def test_events_the_sla_does_not_track() -> None:
    assert apply(None, E.REFERRAL_ACCEPTED, paris(2026, 1, 9))[0] is None
    assert apply(None, E.ADMISSION_NOTIFIED, paris(2026, 1, 9), case=STAY)[0] is None
    state, _ = urgent_friday_evening()
    for et in (E.SLA_REMINDER, E.DELIVERY_READ, E.DISCHARGE_PLANNED):
        same, effects = apply(state, et, paris(2026, 1, 9, 18), recipients=("x",))
        assert same is state and effects.ignored
    same, effects = apply(state, E.REFERRAL_REQUESTED, paris(2026, 1, 9, 18))
    assert same is state and "already" in effects.ignored


def planned(
    at: datetime, when: datetime, state: CaseState | None = None, **kw: Any
) -> tuple[CaseState, Effects]:
    return apply(state, E.DISCHARGE_PLANNED, at, case=STAY, planned_at=when, **kw)


def test_discharge_announced_less_than_48h_before_warns_the_coordinator_now() -> None:
    state, effects = planned(paris(2026, 3, 10, 9), paris(2026, 3, 11, 14), event_id="a16-1")
    (notice,) = effects.notices
    assert notice.event_type == E.DISCHARGE_LATE_NOTICE and notice.notify == ("coordinator",)
    assert notice.deadline == paris(2026, 3, 11, 14) and notice.caused_by == "a16-1"
    # an update with the same planned date does not warn again; a new date does
    state, update = planned(paris(2026, 3, 10, 10), paris(2026, 3, 11, 14), state)
    assert update.notices == ()
    state, moved = planned(paris(2026, 3, 10, 11), paris(2026, 3, 11, 9), state)
    assert len(moved.notices) == 1 and moved.notices[0].event_id != notice.event_id


def test_discharge_announced_in_time_is_quiet() -> None:
    state, effects = planned(paris(2026, 3, 10, 9), paris(2026, 3, 12, 10))
    assert effects.notices == () and state.kind == "stay" and state.status == "open"


def test_recipients_who_do_not_acknowledge_within_24h_get_a_reminder() -> None:
    gp, nurse = "8" + "10101010101", "8" + "60606060606"
    state, effects = planned(
        paris(2026, 3, 10, 9), paris(2026, 3, 13, 9), recipients=(gp, nurse, gp)
    )
    assert [(d.kind, d.recipient, d.fire_at) for d in effects.schedule] == [
        ("ack-reminder", gp, paris(2026, 3, 11, 9)),
        ("ack-reminder", nurse, paris(2026, 3, 11, 9)),
    ]
    read_at = paris(2026, 3, 10, 15)
    state, ack = apply(state, E.DELIVERY_READ, read_at, case=STAY, recipients=(nurse,))
    assert [d.recipient for d in ack.cancel] == [nurse]
    state, notices = fire_all(state, paris(2026, 3, 11, 9))
    assert [(n.event_type, n.recipient, n.notify) for n in notices] == [
        (E.SLA_REMINDER, gp, ("recipient",))
    ]
    assert apply(state, E.DELIVERY_READ, read_at, case=STAY, recipients=(gp,))[1].ignored


def test_discharge_followup_seven_days_later_closes_the_stay() -> None:
    state, _ = planned(paris(2026, 3, 20, 9), paris(2026, 3, 23, 11))
    state, effects = apply(state, E.DISCHARGE_COMPLETED, paris(2026, 3, 23, 11), case=STAY)
    (followup,) = effects.schedule
    assert followup.kind == "followup" and followup.notify == ("coordinator",)
    assert followup.fire_at == paris(2026, 3, 30, 11)  # wall clock kept across DST (29 March)
    state, notices, _ = on_due(state, followup, paris(2026, 3, 30, 11))
    assert notices[0].event_type == E.DISCHARGE_FOLLOWUP_DUE
    assert notices[0].deadline == followup.fire_at and state.status == "closed"


def test_completed_without_a_planned_notice_opens_the_stay() -> None:
    state, effects = apply(None, E.DISCHARGE_COMPLETED, paris(2026, 5, 4, 10), case=STAY)
    assert state is not None and [d.kind for d in effects.schedule] == ["followup"]


def test_reverted_discharge_cancels_the_followup_only() -> None:
    gp = "810101010101"
    state, first = planned(paris(2026, 3, 10, 9), paris(2026, 3, 13, 9), recipients=(gp,))
    state, done = apply(
        state, E.DISCHARGE_COMPLETED, paris(2026, 3, 10, 12), case=STAY, recipients=(gp,)
    )
    assert sorted(d.kind for d in done.schedule) == ["ack-reminder", "followup"]
    state, revert = apply(state, E.DISCHARGE_REVERTED, paris(2026, 3, 10, 13), case=STAY)
    assert sorted(d.kind for d in revert.cancel) == ["ack-reminder", "followup"]
    assert state.pending == list(first.schedule) and state.status == "open"
    state, again = apply(state, E.DISCHARGE_COMPLETED, paris(2026, 3, 12, 12), case=STAY)
    assert [d.fire_at for d in again.schedule] == [paris(2026, 3, 19, 12)]


@pytest.mark.parametrize("cancel", [E.DISCHARGE_CANCELLED, E.ADMISSION_CANCELLED])
def test_stay_cancellations_stop_every_timer(cancel: E) -> None:
    state, first = planned(paris(2026, 3, 10, 9), paris(2026, 3, 13, 9), recipients=("a", "b"))
    state, effects = apply(state, cancel, paris(2026, 3, 10, 10), case=STAY)
    assert effects.cancel == first.schedule and state.status == "cancelled"
    assert fire_all(state, paris(2026, 4, 1))[1] == []
    state, reopened = planned(paris(2026, 3, 11, 9), paris(2026, 3, 16, 9), state)
    assert state.status == "open" and reopened.ignored is None


def test_state_is_compact_and_round_trips() -> None:
    state, effects = urgent_friday_evening()
    state, _, _ = on_due(state, effects.schedule[0], paris(2026, 1, 12, 10))
    data = state.to_bytes()
    assert len(data) < 160
    assert CaseState.from_bytes(data) == state
    assert CaseState.from_dict(state.to_dict()) == state
    with pytest.raises(ValueError, match="version"):
        CaseState.from_bytes(b"\x09" + data[1:])


def test_worst_case_state_stays_small() -> None:
    state, _ = urgent_friday_evening()
    for i in range(40):  # many duplicate-free events and fired deadlines stay bounded
        state.seen.append(bytes(DIGEST_SIZE))
        state.remember(Fired(paris(2026, 1, 12), "reminder", i % 3, i))
    del state.seen[:-SEEN_MAX]
    assert len(state.history) == HISTORY_MAX
    assert len(state.to_bytes()) < 300


def test_naive_clock_and_wrong_state_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        apply(None, E.REFERRAL_REQUESTED, paris(2026, 1, 9), now=datetime(2026, 1, 9))
    state, _ = urgent_friday_evening()
    with pytest.raises(ValueError, match="given for an event of"):
        apply(state, E.REFERRAL_ACCEPTED, paris(2026, 1, 12), case=EXP)


def test_every_deadline_kind_maps_to_a_bus_event() -> None:
    kinds = ("reminder", "escalation", "breach", "followup", "ack-reminder", "late-notice")
    assert all(not notice_type(k).inbound for k in kinds)
    assert notice_type("followup") == E.DISCHARGE_FOLLOWUP_DUE


def test_compressed_policies_fire_in_seconds() -> None:
    fast = POLICIES.compressed(3600)
    start = paris(2026, 1, 9, 17, 30)
    _, effects = apply(None, E.REFERRAL_REQUESTED, start, policies=fast, priority="stat")
    assert [d.fire_at - start for d in effects.schedule] == [
        timedelta(seconds=2),
        timedelta(seconds=4),
    ]
    assert Delay(0, timedelta(seconds=2)) == fast.policies[0].due

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codes import EventType
from schemas.task_states import (
    TERMINAL,
    TRANSITIONS,
    ReferralStates,
    TaskStatus,
    check_transition,
)

LEGAL = [
    (None, TaskStatus.REQUESTED),
    (TaskStatus.REQUESTED, TaskStatus.ACCEPTED),
    (TaskStatus.REQUESTED, TaskStatus.REJECTED),
    (TaskStatus.REQUESTED, TaskStatus.CANCELLED),
    (TaskStatus.ACCEPTED, TaskStatus.IN_PROGRESS),
    (TaskStatus.ACCEPTED, TaskStatus.COMPLETED),
    (TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED),
    (TaskStatus.IN_PROGRESS, TaskStatus.CANCELLED),
]


@pytest.mark.parametrize(("current", "wanted"), LEGAL)
def test_legal_transitions(current: TaskStatus | None, wanted: TaskStatus) -> None:
    assert check_transition(current, wanted) is None


@pytest.mark.parametrize(
    ("current", "wanted", "phrase"),
    [
        (None, TaskStatus.ACCEPTED, "unknown referral"),
        (TaskStatus.REQUESTED, TaskStatus.COMPLETED, "illegal transition requested → completed"),
        (TaskStatus.REJECTED, TaskStatus.ACCEPTED, "final state"),
        (TaskStatus.COMPLETED, TaskStatus.CANCELLED, "final state"),
        (TaskStatus.ACCEPTED, TaskStatus.ACCEPTED, "already accepted"),
    ],
)
def test_illegal_transitions_have_reasons(
    current: TaskStatus | None, wanted: TaskStatus, phrase: str
) -> None:
    refused = check_transition(current, wanted)
    assert refused is not None and phrase in refused.reason


def test_terminal_states_have_no_exit() -> None:
    assert all(not TRANSITIONS[s] for s in TERMINAL)


def test_referral_states_apply_only_legal_moves() -> None:
    states = ReferralStates()
    assert states.apply("r1", EventType.REFERRAL_ACCEPTED) is not None  # not requested yet
    assert states.get("r1") is None
    assert states.apply("r1", EventType.REFERRAL_REQUESTED) is None
    assert states.apply("r1", EventType.REFERRAL_ACCEPTED) is None
    refused = states.apply("r1", EventType.REFERRAL_REJECTED)
    assert refused is not None and states.get("r1") is TaskStatus.ACCEPTED
    assert states.apply("r1", EventType.REFERRAL_COMPLETED) is None
    assert states.get("r1") is TaskStatus.COMPLETED


REFERRAL_EVENTS = [e for e in EventType if e.family == "referral"]


@given(st.lists(st.sampled_from(REFERRAL_EVENTS), max_size=30))
def test_any_sequence_stays_within_the_graph(events: list[EventType]) -> None:
    states = ReferralStates()
    prev = None
    for ev in events:
        refused = states.apply("c", ev)
        cur = states.get("c")
        if refused is None:
            assert prev is None or cur in TRANSITIONS[prev]
        else:
            assert cur == prev
        prev = cur


def test_closed_referrals_are_bounded_open_ones_kept() -> None:
    from schemas.task_states import ReferralStates

    states = ReferralStates(max_closed=2)
    E = EventType
    states.apply("open", E.REFERRAL_REQUESTED)
    for n in range(3):
        states.apply(f"done-{n}", E.REFERRAL_REQUESTED)
        states.apply(f"done-{n}", E.REFERRAL_ACCEPTED)
        states.apply(f"done-{n}", E.REFERRAL_COMPLETED)
    assert len(states) == 3  # the open one and the two latest closed ones
    assert states.get("open") == TaskStatus.REQUESTED
    assert states.get("done-0") is None and states.get("done-2") == TaskStatus.COMPLETED
    refused = states.check("done-2", E.REFERRAL_ACCEPTED)
    assert refused is not None and "final state" in refused.reason
    forgotten = states.check("done-0", E.REFERRAL_ACCEPTED)
    assert forgotten is not None and "unknown referral" in forgotten.reason

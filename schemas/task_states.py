"""The referral Task state machine (FHIR Task.status), legal transitions only.

A referral is a FHIR Task: requested → accepted | rejected → in-progress → completed,
and cancelled from any open state. Practice software posts the new status; the bus
refuses an illegal move with a reason the sender can act on (HTTP 409).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from schemas.codes import EventType


class TaskStatus(StrEnum):
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.REJECTED, TaskStatus.COMPLETED, TaskStatus.CANCELLED})

#: status → statuses reachable from it
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.REQUESTED: frozenset(
        {TaskStatus.ACCEPTED, TaskStatus.REJECTED, TaskStatus.CANCELLED}
    ),
    TaskStatus.ACCEPTED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.CANCELLED}
    ),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.COMPLETED, TaskStatus.CANCELLED}),
    TaskStatus.REJECTED: frozenset(),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}

#: the Task.status each referral event must carry
EVENT_TARGET_STATUS: dict[EventType, TaskStatus] = {
    EventType.REFERRAL_REQUESTED: TaskStatus.REQUESTED,
    EventType.REFERRAL_ACCEPTED: TaskStatus.ACCEPTED,
    EventType.REFERRAL_REJECTED: TaskStatus.REJECTED,
    EventType.REFERRAL_CANCELLED: TaskStatus.CANCELLED,
    EventType.REFERRAL_COMPLETED: TaskStatus.COMPLETED,
}


@dataclass(frozen=True, slots=True)
class TransitionRefused:
    """Why a move is illegal, phrased for the sender."""

    current: TaskStatus | None
    wanted: TaskStatus
    reason: str


def check_transition(current: TaskStatus | None, wanted: TaskStatus) -> TransitionRefused | None:
    """Return None when `current → wanted` is legal, else the refusal with its reason.

    `current is None` means the bus has never seen the referral: only `requested` may
    open a case.
    """
    if current is None:
        if wanted is TaskStatus.REQUESTED:
            return None
        return TransitionRefused(
            None, wanted, f"unknown referral: a referral must be requested before it is {wanted}"
        )
    if wanted == current:
        return TransitionRefused(current, wanted, f"referral is already {current}")
    if current in TERMINAL:
        return TransitionRefused(
            current, wanted, f"referral is {current} (final state); it cannot become {wanted}"
        )
    if wanted not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current]))
        return TransitionRefused(
            current,
            wanted,
            f"illegal transition {current} → {wanted}; allowed from {current}: {allowed}",
        )
    return None


class ReferralStates:
    """In-memory view of each referral's current status, applying legal moves only.

    Pure: the HTTP ingress keeps one fed from the referral topic so that a 409 can be
    answered before the write; processors keep the authoritative one in a table.
    Memory is bounded: open referrals are all kept (they are the work in progress), closed
    ones (rejected, completed, cancelled) only the latest `max_closed`. A move on a
    forgotten closed referral is refused as on an unknown one; only a new `requested`
    under the same id would be taken, as a new referral.
    """

    def __init__(self, max_closed: int = 100_000) -> None:
        self._status: dict[str, TaskStatus] = {}  # open referrals
        self._closed: OrderedDict[str, TaskStatus] = OrderedDict()
        self._max_closed = max_closed

    def get(self, case_id: str) -> TaskStatus | None:
        return self._status.get(case_id) or self._closed.get(case_id)

    def check(self, case_id: str, event: EventType) -> TransitionRefused | None:
        return check_transition(self.get(case_id), EVENT_TARGET_STATUS[event])

    def apply(self, case_id: str, event: EventType) -> TransitionRefused | None:
        refused = self.check(case_id, event)
        if refused is None:
            status = EVENT_TARGET_STATUS[event]
            if status in TERMINAL:
                self._status.pop(case_id, None)
                self._closed[case_id] = status
                while len(self._closed) > self._max_closed:
                    self._closed.popitem(last=False)
            else:
                self._closed.pop(case_id, None)
                self._status[case_id] = status
        return refused

    def __len__(self) -> int:
        return len(self._status) + len(self._closed)

"""The SLA state machine: what an event or a due timer does to one case.

Pure functions over `CaseState`, so the rules are tested with an injected clock and the
faust agent only binds them to topics and a table:

- `on_event(state, event_type, facts, now, policies)` → `(state, Effects)`: open a case and
  schedule its deadlines, cancel them on an answer or a cancellation, record a late answer,
  emit `discharge.late-notice` at once, track recipients' acknowledgements.
- `on_due(state, deadline_or_token, now)` → `(state, notices, next_deadlines)`: fire a
  deadline if, and only if, it is still pending in the state.

Exactly-once contract with the timer queue (`scheduler.DeadlineQueue`): the *state* is
the truth, the queue is a cache of it. A deadline fires only when its token is still in
`state.pending` and its time has come; firing removes it. So a stale queue entry (a
cancelled deadline, a queue rebuilt from the table after a restart, a timer popped twice)
is a no-op, and each token fires at most once per persisted state. Notice ids are derived
from (case, token) — not from the clock — so if the worker dies after sending a notice but
before the table write, the re-fired notice carries the same id and consumers dedup it.

Times: `facts.time` is when the event happened (ce_time); deadlines and lateness are
computed from it, so a backlog replayed after an outage keeps the original deadlines (the
overdue ones fire at the next tick). `now` is only used to decide what is due.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from processors.sla.calendar import as_utc
from processors.sla.policy import ROLES, Role, SlaPolicies
from processors.sla.state import (
    DIGEST_SIZE,
    SEEN_MAX,
    CaseState,
    Deadline,
    DeadlineKind,
    Fired,
    Kind,
)
from schemas.codes import EventType

__all__ = [
    "CaseState",
    "Deadline",
    "Effects",
    "EventFacts",
    "Fired",
    "Notice",
    "notice_type",
    "on_due",
    "on_event",
]

E = EventType
#: cap on pending deadlines per case (the binary form counts them in one byte)
MAX_PENDING = 64
_NOTICE_TYPE: dict[DeadlineKind, EventType] = {
    "reminder": E.SLA_REMINDER,
    "escalation": E.SLA_ESCALATED,
    "breach": E.SLA_BREACHED,
    "followup": E.DISCHARGE_FOLLOWUP_DUE,
    "ack-reminder": E.SLA_REMINDER,
    "late-notice": E.DISCHARGE_LATE_NOTICE,
}
_NOTICE_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://carebus.fr/fhir/sid/event/sla")
_ANSWERS = {E.REFERRAL_ACCEPTED, E.REFERRAL_REJECTED, E.EXPERTISE_ANSWERED, E.EXPERTISE_DECLINED}
_CANCELS = {E.REFERRAL_CANCELLED, E.DISCHARGE_CANCELLED, E.ADMISSION_CANCELLED}
_CREATES = {E.REFERRAL_REQUESTED, E.EXPERTISE_REQUESTED, E.DISCHARGE_PLANNED, E.DISCHARGE_COMPLETED}
_STEP_PLANNED, _STEP_COMPLETED = 0, 1


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFacts:
    """The few facts of an inbound event the SLA rules read (extracted by the agent)."""

    case_id: str
    event_id: str
    time: datetime
    priority: str | None = None
    #: planned discharge date (A16 PV2-9 / the planned-discharge extension)
    planned_at: datetime | None = None
    #: discharge.*: who must acknowledge; ack events (delivery.read): who acknowledged
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """A bus event to emit now (sla.*, discharge.late-notice, discharge.followup-due)."""

    event_type: EventType
    case_id: str
    #: deterministic, so a re-fired notice is deduplicated downstream
    event_id: str
    notify: tuple[Role, ...]
    #: the deadline the notice is about: the request's due date, the planned discharge
    #: date for a late notice, the acknowledgement or follow-up date otherwise
    deadline: datetime | None
    kind: DeadlineKind
    step: int = 0
    recipient: str | None = None
    caused_by: str | None = None


@dataclass(frozen=True, slots=True)
class Effects:
    """What the agent must do after `on_event`: queue changes and notices to emit now."""

    schedule: tuple[Deadline, ...] = ()
    cancel: tuple[Deadline, ...] = ()
    notices: tuple[Notice, ...] = ()
    #: an answer arrived after the due date (also recorded in the state)
    answered_late: bool = False
    #: the event id was already applied: nothing changed
    duplicate: bool = False
    #: why the event changed nothing, for logs (None when it was applied)
    ignored: str | None = None


def notice_type(kind: DeadlineKind) -> EventType:
    """Event type a deadline kind emits."""
    return _NOTICE_TYPE[kind]


def _digest(event_id: str) -> bytes:
    return hashlib.blake2b(event_id.encode(), digest_size=DIGEST_SIZE).digest()


def _notice_id(case_id: str, discriminator: str) -> str:
    return str(uuid.uuid5(_NOTICE_NS, f"{case_id}|{discriminator}"))


def _cancel(
    state: CaseState, keep: Callable[[Deadline], bool] = lambda d: False
) -> tuple[Deadline, ...]:
    """Drop the pending deadlines `keep` rejects (all by default); return the dropped."""
    dropped = tuple(d for d in state.pending if not keep(d))
    state.pending = [d for d in state.pending if keep(d)]
    return dropped


def _add(
    state: CaseState,
    fire_at: datetime,
    kind: DeadlineKind,
    *,
    step: int = 0,
    notify: tuple[Role, ...] = (),
    recipient: str | None = None,
) -> Deadline:
    """Allocate a token and add a pending deadline (roles in canonical order, as stored)."""
    if len(state.pending) >= MAX_PENDING:
        raise ValueError(f"case {state.case_id} has too many pending deadlines")
    roles = tuple(r for r in ROLES if r in notify)
    d = Deadline(fire_at, kind, state.new_token(), step, roles, recipient)
    state.pending.append(d)
    return d


def on_event(
    state: CaseState | None,
    event_type: EventType | str,
    facts: EventFacts,
    now: datetime,
    policies: SlaPolicies,
) -> tuple[CaseState | None, Effects]:
    """Apply one event to a case; never mutates `state` (returns a new one).

    Returns `(None, Effects(ignored=…))` for events about a case the SLA does not track
    (nothing to store). The same event id applied twice returns the state unchanged with
    `Effects(duplicate=True)`. Decisions use `facts.time`, so a replay is deterministic;
    `now` is checked (aware) but only `on_due` needs it.
    """
    as_utc(now)
    if state is not None and state.case_id != facts.case_id:
        raise ValueError(f"state of {state.case_id} given for an event of {facts.case_id}")
    et = E(event_type)
    digest = _digest(facts.event_id)
    if state is not None and digest in state.seen:
        return state, Effects(duplicate=True)
    acks = et in policies.discharge.ack_events
    family = et.family
    if not acks and family not in ("referral", "stay", "expertise"):
        return state, Effects(ignored=f"{et} does not drive SLA deadlines")
    if state is None:
        if et not in _CREATES:
            return None, Effects(ignored=f"{et} on a case the SLA does not track")
        kind: Kind = family  # type: ignore[assignment]
        new = CaseState(facts.case_id, kind, opened_at=as_utc(facts.time))
    elif not acks and state.kind != family:
        return state, Effects(ignored=f"{et} does not apply to a {state.kind} case")
    else:
        new = state.copy()
    if acks:
        effects = _acknowledge(new, facts)
    elif et in _ANSWERS or et == E.REFERRAL_COMPLETED:
        effects = _answer(new, et, facts)
    elif et in _CANCELS:
        effects = _close(new, "cancelled")
    elif et in (E.REFERRAL_REQUESTED, E.EXPERTISE_REQUESTED):
        effects = _open_request(new, et, facts, policies)
    elif et == E.DISCHARGE_PLANNED:
        effects = _discharge_planned(new, facts, policies)
    elif et == E.DISCHARGE_COMPLETED:
        effects = _discharge_completed(new, facts, policies)
    elif et == E.DISCHARGE_REVERTED:
        effects = _discharge_reverted(new)
    else:  # admission.notified: a stay we track again if it had been cancelled
        effects = Effects(ignored=None if new.status == "cancelled" else "nothing to watch")
        new.status = "open"
    if effects.ignored is not None and not effects.cancel:
        return state, effects
    new.seen.append(digest)
    del new.seen[:-SEEN_MAX]
    return new, effects


def _open_request(
    state: CaseState, et: EventType, facts: EventFacts, policies: SlaPolicies
) -> Effects:
    """Schedule due-date reminders, escalation and breach of a new request, all at once."""
    if state.pending or state.history or state.status != "open" or state.due_at is not None:
        return Effects(ignored=f"case already {state.status}: a request does not restart it")
    start = as_utc(facts.time)
    state.opened_at, state.priority = start, facts.priority
    policy = policies.policy_for(et, facts.priority)
    if policy is None:
        return Effects(ignored=f"no SLA policy for {et} priority {facts.priority}")
    clock = policies.clock(policy.business_hours)
    due = state.due_at = policy.due.apply(start, clock)
    new = [
        _add(
            state,
            r.after.apply(start if r.anchor == "start" else due, clock),
            "reminder",
            step=i,
            notify=r.notify,
        )
        for i, r in enumerate(policy.reminder_at)
    ]
    if policy.escalate_after is not None:
        at = policy.escalate_after.apply(due, clock)
        new.append(_add(state, at, "escalation", notify=policy.escalate_to))
    if policy.breach_after is not None:
        at = policy.breach_after.apply(due, clock)
        new.append(_add(state, at, "breach", notify=policy.breach_notify))
    return Effects(schedule=tuple(new))


def _answer(state: CaseState, et: EventType, facts: EventFacts) -> Effects:
    """An answer closes the loop: cancel what is pending, record whether it was late."""
    if et == E.REFERRAL_COMPLETED:
        if state.status in ("cancelled", "closed"):
            return Effects(ignored=f"case already {state.status}")
        cancelled = _cancel(state)
        late = state.status == "open" and _late(state, facts)
        state.answered_late = state.answered_late or late
        state.status = "closed"
        return Effects(cancel=cancelled, answered_late=late)
    if state.status != "open":
        return Effects(ignored=f"case already {state.status}")
    late = _late(state, facts)
    state.answered_late, state.status = late, "answered"
    return Effects(cancel=_cancel(state), answered_late=late)


def _late(state: CaseState, facts: EventFacts) -> bool:
    return state.due_at is not None and as_utc(facts.time) > state.due_at


def _close(state: CaseState, status: str) -> Effects:
    """A cancellation stops every timer of the case (a stay may reopen later)."""
    if state.status == status and not state.pending:
        return Effects(ignored=f"case already {status}")
    state.status = status  # type: ignore[assignment]
    return Effects(cancel=_cancel(state))


def _track_acks(
    state: CaseState, facts: EventFacts, policies: SlaPolicies, step: int
) -> list[Deadline]:
    """One ack-reminder per recipient not already awaited for this announcement."""
    dp = policies.discharge
    if dp.ack_within is None:
        return []
    awaited = {d.recipient for d in state.pending if d.kind == "ack-reminder" and d.step == step}
    at = dp.ack_within.apply(as_utc(facts.time), policies.clock(dp.business_hours))
    return [
        _add(state, at, "ack-reminder", step=step, notify=("recipient",), recipient=who)
        for who in dict.fromkeys(facts.recipients)
        if who not in awaited
    ]


def _discharge_planned(state: CaseState, facts: EventFacts, policies: SlaPolicies) -> Effects:
    """48 h notice check (late notice at once, once per planned date) and ack tracking."""
    if state.status == "closed":
        return Effects(ignored="stay already discharged and followed up")
    state.status = "open"
    dp, notices = policies.discharge, []
    if facts.planned_at is not None:
        planned = as_utc(facts.planned_at)
        announced = as_utc(facts.time)
        deadline = dp.notice.apply(announced, policies.clock(dp.business_hours))
        done = any(f.kind == "late-notice" and f.fire_at == planned for f in state.history)
        if deadline > planned and not done:
            state.remember(Fired(planned, "late-notice"))
            notices.append(
                Notice(
                    E.DISCHARGE_LATE_NOTICE,
                    state.case_id,
                    _notice_id(state.case_id, f"late-notice|{planned.isoformat()}"),
                    dp.late_notice_to,
                    planned,
                    "late-notice",
                    caused_by=facts.event_id,
                )
            )
    scheduled = _track_acks(state, facts, policies, _STEP_PLANNED)
    return Effects(schedule=tuple(scheduled), notices=tuple(notices))


def _discharge_completed(state: CaseState, facts: EventFacts, policies: SlaPolicies) -> Effects:
    """Schedule the J+7 follow-up (replacing an earlier one) and ack tracking."""
    if state.status == "closed":
        return Effects(ignored="stay already discharged and followed up")
    state.status = "open"
    dp = policies.discharge
    cancelled = _cancel(state, keep=lambda d: d.kind != "followup")
    scheduled = _track_acks(state, facts, policies, _STEP_COMPLETED)
    if dp.followup_after is not None:
        at = dp.followup_after.apply(as_utc(facts.time), policies.clock(dp.business_hours))
        scheduled.append(_add(state, at, "followup", notify=dp.followup_to))
    return Effects(schedule=tuple(scheduled), cancel=cancelled)


def _discharge_reverted(state: CaseState) -> Effects:
    """The patient did not leave (A13): no follow-up, no wait for the discharge letter."""
    if state.status != "open":
        return Effects(ignored=f"stay already {state.status}")
    cancelled = _cancel(state, keep=lambda d: d.kind != "followup" and d.step != _STEP_COMPLETED)
    if not cancelled:
        return Effects(ignored="no discharge follow-up pending")
    return Effects(cancel=cancelled)


def _acknowledge(state: CaseState, facts: EventFacts) -> Effects:
    """A read receipt or platform ack stops the ack-reminders of those recipients."""
    who = set(facts.recipients)
    cancelled = _cancel(state, keep=lambda d: d.kind != "ack-reminder" or d.recipient not in who)
    if not cancelled:
        return Effects(ignored="no acknowledgement awaited from these recipients")
    return Effects(cancel=cancelled)


def on_due(
    state: CaseState, deadline: Deadline | int, now: datetime
) -> tuple[CaseState, tuple[Notice, ...], tuple[Deadline, ...]]:
    """Fire a deadline (by token) if it is still pending and due; never mutates `state`.

    Returns `(state, (), ())` unchanged when the token is no longer pending (cancelled or
    already fired), and `(state, (), (deadline,))` when it is not due yet so the caller
    requeues it. A fired follow-up closes the stay. All later steps are scheduled when the
    case opens, so the third item is otherwise empty; it exists for policies that chain
    steps.
    """
    now = as_utc(now)
    token = deadline if isinstance(deadline, int) else deadline.token
    found = next((d for d in state.pending if d.token == token), None)
    if found is None:
        return state, (), ()
    if found.fire_at > now:
        return state, (), (found,)
    new = state.copy()
    new.pending = [d for d in new.pending if d.token != token]
    new.remember(Fired(found.fire_at, found.kind, found.step, token))
    about = found.fire_at if found.kind in ("followup", "ack-reminder") else new.due_at
    notice = Notice(
        _NOTICE_TYPE[found.kind],
        new.case_id,
        _notice_id(new.case_id, str(token)),
        found.notify,
        about,
        found.kind,
        found.step,
        found.recipient,
    )
    if found.kind == "followup":
        new.status = "closed"
        new.pending = []
    return new, (notice,), ()

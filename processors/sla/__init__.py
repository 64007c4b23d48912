"""SLA escalation: business calendar, policies, per-case state machine and timer queue.

Pure code (no I/O, the clock is an argument): the faust SLA agent binds it to the event
topics and to a table of `CaseState` (see `scheduler` for the exactly-once contract).
"""

from processors.sla.calendar import ALWAYS_OPEN, BusinessCalendar, as_utc, public_holidays
from processors.sla.machine import Effects, EventFacts, Notice, notice_type, on_due, on_event
from processors.sla.policy import (
    Delay,
    DischargePolicy,
    Reminder,
    SlaPolicies,
    SlaPolicy,
    default_policies,
)
from processors.sla.scheduler import DeadlineQueue, Due, requeue
from processors.sla.state import CaseState, Deadline, Fired

__all__ = [
    "ALWAYS_OPEN",
    "BusinessCalendar",
    "CaseState",
    "Deadline",
    "DeadlineQueue",
    "Delay",
    "DischargePolicy",
    "Due",
    "Effects",
    "EventFacts",
    "Fired",
    "Notice",
    "Reminder",
    "SlaPolicies",
    "SlaPolicy",
    "as_utc",
    "default_policies",
    "notice_type",
    "on_due",
    "on_event",
    "public_holidays",
    "requeue",
]

"""The event registry: for every EventType, its focus, required resources, builder and rule.

One place answers "what is a valid `discharge.planned` and how do I make one": the
validator reads `focus_type`, `required_resource_types`, `focus_status` and `rule`
from here; producers find the builder and its input type; the metadata endpoint can
publish a MessageDefinition per entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from schemas import builders as b
from schemas.builders.expertise import EXPERTISE_STATUS
from schemas.builders.stay import STAY_STATUS
from schemas.codes import EventType
from schemas.consent_rules import consent_rule
from schemas.message_rules import expertise_rule, notice_rule, referral_rule, stay_rule
from schemas.model import BusNoticeInfo, ConsentInfo, ExpertiseInfo, ReferralInfo, StayInfo
from schemas.rules import RuleContext
from schemas.task_states import EVENT_TARGET_STATUS


@dataclass(frozen=True, slots=True)
class EventSpec:
    """What an event type is made of.

    `focus_status` is the status the focus resource must have (Task/Encounter/
    Communication[Request].status), None when any is fine.
    """

    event: EventType
    focus_type: str
    required_resource_types: frozenset[str]
    builder: Callable[..., dict]
    rule: Callable[[RuleContext], None]
    info_type: type
    focus_status: str | None = None


_REFERRAL = frozenset({"Task", "ServiceRequest", "Patient", "Practitioner", "PractitionerRole"})
_STAY = frozenset({"Encounter", "Patient", "Organization"})
_EXPERTISE = frozenset({"Patient", "Practitioner", "PractitionerRole"})
_NOTICE = frozenset({"Communication"})

_REFERRAL_BUILDERS: dict[EventType, Callable[..., dict]] = {
    EventType.REFERRAL_REQUESTED: b.build_referral_requested,
    EventType.REFERRAL_ACCEPTED: b.build_referral_accepted,
    EventType.REFERRAL_REJECTED: b.build_referral_rejected,
    EventType.REFERRAL_CANCELLED: b.build_referral_cancelled,
    EventType.REFERRAL_COMPLETED: b.build_referral_completed,
}
_STAY_BUILDERS: dict[EventType, Callable[..., dict]] = {
    EventType.ADMISSION_NOTIFIED: b.build_admission_notified,
    EventType.ADMISSION_CANCELLED: b.build_admission_cancelled,
    EventType.DISCHARGE_PLANNED: b.build_discharge_planned,
    EventType.DISCHARGE_CANCELLED: b.build_discharge_cancelled,
    EventType.DISCHARGE_COMPLETED: b.build_discharge_completed,
    EventType.DISCHARGE_REVERTED: b.build_discharge_reverted,
}
_NOTICE_BUILDERS: dict[EventType, Callable[..., dict]] = {
    EventType.SLA_REMINDER: b.build_sla_reminder,
    EventType.SLA_ESCALATED: b.build_sla_escalated,
    EventType.SLA_BREACHED: b.build_sla_breached,
    EventType.DISCHARGE_LATE_NOTICE: b.build_discharge_late_notice,
    EventType.DISCHARGE_FOLLOWUP_DUE: b.build_discharge_followup_due,
    EventType.DELIVERY_SENT: b.build_delivery_sent,
    EventType.DELIVERY_FAILED: b.build_delivery_failed,
    EventType.DELIVERY_READ: b.build_delivery_read,
}


def _specs() -> dict[EventType, EventSpec]:
    specs: dict[EventType, EventSpec] = {}
    for event, builder in _REFERRAL_BUILDERS.items():
        required = _REFERRAL | (
            {"DocumentReference"} if event is EventType.REFERRAL_COMPLETED else set()
        )
        specs[event] = EventSpec(
            event,
            "Task",
            frozenset(required),
            builder,
            referral_rule,
            ReferralInfo,
            EVENT_TARGET_STATUS[event].value,
        )
    for event, builder in _STAY_BUILDERS.items():
        specs[event] = EventSpec(
            event, "Encounter", _STAY, builder, stay_rule, StayInfo, STAY_STATUS[event]
        )
    specs[EventType.EXPERTISE_REQUESTED] = EventSpec(
        EventType.EXPERTISE_REQUESTED,
        "CommunicationRequest",
        _EXPERTISE | {"CommunicationRequest"},
        b.build_expertise_requested,
        expertise_rule,
        ExpertiseInfo,
        EXPERTISE_STATUS[EventType.EXPERTISE_REQUESTED],
    )
    for event, builder in (
        (EventType.EXPERTISE_ANSWERED, b.build_expertise_answered),
        (EventType.EXPERTISE_DECLINED, b.build_expertise_declined),
    ):
        specs[event] = EventSpec(
            event,
            "Communication",
            _EXPERTISE | {"Communication"},
            builder,
            expertise_rule,
            ExpertiseInfo,
            EXPERTISE_STATUS[event],
        )
    specs[EventType.CONSENT_UPDATED] = EventSpec(
        EventType.CONSENT_UPDATED,
        "Consent",
        frozenset({"Consent", "Patient"}),
        b.build_consent_updated,
        consent_rule,
        ConsentInfo,
    )
    for event, builder in _NOTICE_BUILDERS.items():
        specs[event] = EventSpec(
            event, "Communication", _NOTICE, builder, notice_rule, BusNoticeInfo, "completed"
        )
    return specs


#: every EventType → its spec (the test suite checks the mapping is total)
EVENT_SPECS: dict[EventType, EventSpec] = _specs()


def build_event(event: EventType | str, info: object, **options: object) -> dict:
    """Build the message Bundle of any event type from its typed input (dispatcher for
    generic callers such as `carebus send`)."""
    spec = EVENT_SPECS[EventType(event)]
    if not isinstance(info, spec.info_type):
        raise TypeError(
            f"{spec.event} is built from {spec.info_type.__name__}, got {type(info).__name__}"
        )
    return spec.builder(info, **options)

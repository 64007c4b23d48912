"""Referral (adressage) messages: a FHIR Task that fulfils a ServiceRequest.

The Task is the case: its identifier is the referral id (the Kafka key), its status
follows `schemas.task_states`. Every referral.* event carries the whole picture (Task,
ServiceRequest, Patient, both practitioners with their MSSanté mailboxes) so a receiver
that missed the previous events can still act on this one.
"""

from __future__ import annotations

from schemas.builders.common import (
    DEFAULT_SOURCE,
    TASK_CODE,
    MessageBuilder,
    Stamp,
    doc_type_concept,
    fhir_datetime,
    now_stamp,
    ref,
    text_concept,
)
from schemas.codes import DocType, EventType
from schemas.model import ReferralInfo
from schemas.task_states import EVENT_TARGET_STATUS, TaskStatus

#: ServiceRequest.status that goes with each Task status of the referral
SERVICE_REQUEST_STATUS: dict[TaskStatus, str] = {
    TaskStatus.REQUESTED: "active",
    TaskStatus.ACCEPTED: "active",
    TaskStatus.IN_PROGRESS: "active",
    TaskStatus.REJECTED: "revoked",
    TaskStatus.CANCELLED: "revoked",
    TaskStatus.COMPLETED: "completed",
}

#: events sent by the performer (specialist); the others come from the requester (GP)
_PERFORMER_SENDS = frozenset(
    {EventType.REFERRAL_ACCEPTED, EventType.REFERRAL_REJECTED, EventType.REFERRAL_COMPLETED}
)


def _build(
    event: EventType,
    info: ReferralInfo,
    *,
    event_id: str | None,
    source: str,
    timestamp: Stamp,
) -> dict:
    status = EVENT_TARGET_STATUS[event]
    if event is EventType.REFERRAL_REJECTED and not info.status_reason:
        raise ValueError("referral.rejected needs status_reason: the GP must know why")
    if event is EventType.REFERRAL_COMPLETED and info.report is None:
        raise ValueError("referral.completed needs the consultation report (report)")
    if event in _PERFORMER_SENDS and info.performer is None:
        raise ValueError(f"{event} is sent by the performer: performer is required")

    stamp = now_stamp(timestamp)
    b = MessageBuilder(event_id)
    requester = b.practitioner_role(info.requester)
    performer = b.practitioner_role(info.performer) if info.performer else None
    patient = b.patient(info.patient)
    letter = b.document(info.letter, subject=patient, author=requester) if info.letter else None
    report = (
        b.document(info.report, subject=patient, author=performer)
        if info.report is not None and event is EventType.REFERRAL_COMPLETED
        else None
    )
    identifier = [{"use": "official", "system": info.referral_system, "value": info.referral_id}]

    sr: dict = {
        "resourceType": "ServiceRequest",
        "identifier": identifier,
        "status": SERVICE_REQUEST_STATUS[status],
        "intent": "order",
        "priority": info.priority,
        "subject": ref(patient),
        "requester": ref(requester),
        "reasonCode": [text_concept(info.reason)],
    }
    if info.service:
        sr["code"] = text_concept(info.service)
    if info.authored_on is not None:
        sr["authoredOn"] = fhir_datetime(info.authored_on)
    if performer:
        sr["performer"] = [ref(performer)]
    if letter:
        sr["supportingInfo"] = [ref(letter)]
    service_request = b.add("ServiceRequest", sr)

    task: dict = {
        "resourceType": "Task",
        "identifier": identifier,
        "basedOn": [ref(service_request)],
        "status": status.value,
    }
    if info.status_reason and event in (EventType.REFERRAL_REJECTED, EventType.REFERRAL_CANCELLED):
        task["statusReason"] = text_concept(info.status_reason)
    task |= {
        "intent": "order",
        "priority": info.priority,
        "code": {"coding": [{"system": TASK_CODE, "code": "fulfill"}]},
        "description": info.reason,
        "focus": ref(service_request),
        "for": ref(patient),
        "lastModified": stamp,
        "requester": ref(requester),
    }
    if info.authored_on is not None:
        task["authoredOn"] = fhir_datetime(info.authored_on)
    if performer:
        task["owner"] = ref(performer)
    if letter:
        task["input"] = [
            {"type": doc_type_concept(DocType.REFERRAL_LETTER), "valueReference": ref(letter)}
        ]
    if report:
        task["output"] = [
            {"type": doc_type_concept(DocType.CONSULTATION_REPORT), "valueReference": ref(report)}
        ]
    focus = b.add("Task", task, front=True)
    sender = performer if event in _PERFORMER_SENDS else requester
    return b.message(event, focus=focus, sender=sender, source=source, timestamp=stamp)


def build_referral_requested(
    info: ReferralInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """GP → specialist: a new referral, usually with the lettre d'adressage."""
    return _build(
        EventType.REFERRAL_REQUESTED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_referral_accepted(
    info: ReferralInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Specialist → GP: the referral is taken on (stops the answer-deadline SLA)."""
    return _build(
        EventType.REFERRAL_ACCEPTED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_referral_rejected(
    info: ReferralInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Specialist → GP: declined, with the reason (Task.statusReason) so the GP can
    redirect the patient instead of waiting."""
    return _build(
        EventType.REFERRAL_REJECTED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_referral_cancelled(
    info: ReferralInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """GP → specialist: the referral is withdrawn (patient seen elsewhere, improved…)."""
    return _build(
        EventType.REFERRAL_CANCELLED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_referral_completed(
    info: ReferralInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Specialist → GP: the loop closes with the consultation report (Task.output)."""
    return _build(
        EventType.REFERRAL_COMPLETED, info, event_id=event_id, source=source, timestamp=timestamp
    )

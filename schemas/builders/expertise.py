"""Tele-expertise messages: a CommunicationRequest to the expert, a Communication back.

The request is the case (its identifier is the case id). The answer or the decline is a
Communication whose `basedOn` names the request *by identifier*: the expert's software
does not need to echo the whole request, and the bus keys the answer on the same case.
"""

from __future__ import annotations

from schemas.builders.common import (
    DEFAULT_SOURCE,
    MessageBuilder,
    Stamp,
    fhir_datetime,
    logical_ref,
    now_stamp,
    ref,
    text_concept,
)
from schemas.codes import EventType
from schemas.model import ExpertiseInfo

#: Communication(Request).status each expertise event must carry
EXPERTISE_STATUS: dict[EventType, str] = {
    EventType.EXPERTISE_REQUESTED: "active",
    EventType.EXPERTISE_ANSWERED: "completed",
    EventType.EXPERTISE_DECLINED: "not-done",
}

_CATEGORY = text_concept("Téléexpertise")


def build_expertise_requested(
    info: ExpertiseInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Requester → expert: the question, with the documents the expert needs inline."""
    stamp = now_stamp(timestamp)
    b = MessageBuilder(event_id)
    requester = b.practitioner_role(info.requester)
    expert = b.practitioner_role(info.expert)
    patient = b.patient(info.patient)
    docs = [b.document(d, subject=patient, author=requester) for d in info.documents]
    req: dict = {
        "resourceType": "CommunicationRequest",
        "identifier": [
            {"use": "official", "system": info.expertise_system, "value": info.expertise_id}
        ],
        "status": EXPERTISE_STATUS[EventType.EXPERTISE_REQUESTED],
        "category": [_CATEGORY],
        "priority": info.priority,
        "subject": ref(patient),
        "payload": [
            {"contentString": info.question},
            *({"contentReference": ref(d)} for d in docs),
        ],
        "authoredOn": fhir_datetime(info.authored_on) if info.authored_on else stamp,
        "requester": ref(requester),
        "recipient": [ref(expert)],
    }
    focus = b.add("CommunicationRequest", req, front=True)
    return b.message(
        EventType.EXPERTISE_REQUESTED, focus=focus, sender=requester, source=source, timestamp=stamp
    )


def _reply(
    event: EventType,
    info: ExpertiseInfo,
    *,
    event_id: str | None,
    source: str,
    timestamp: Stamp,
) -> dict:
    stamp = now_stamp(timestamp)
    b = MessageBuilder(event_id)
    requester = b.practitioner_role(info.requester)
    expert = b.practitioner_role(info.expert)
    patient = b.patient(info.patient)
    comm: dict = {
        "resourceType": "Communication",
        "basedOn": [logical_ref("CommunicationRequest", info.expertise_system, info.expertise_id)],
        "status": EXPERTISE_STATUS[event],
    }
    if event is EventType.EXPERTISE_DECLINED:
        comm["statusReason"] = text_concept(info.decline_reason or "")
    comm |= {
        "category": [_CATEGORY],
        "subject": ref(patient),
        "sent": stamp,
        "recipient": [ref(requester)],
        "sender": ref(expert),
    }
    if event is EventType.EXPERTISE_ANSWERED:
        payload: list[dict] = []
        if info.answer:
            payload.append({"contentString": info.answer})
        if info.report is not None:
            report = b.document(info.report, subject=patient, author=expert)
            payload.append({"contentReference": ref(report)})
        comm["payload"] = payload
    focus = b.add("Communication", comm, front=True)
    return b.message(event, focus=focus, sender=expert, source=source, timestamp=stamp)


def build_expertise_answered(
    info: ExpertiseInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Expert → requester: the opinion (text and/or a tele-medicine report)."""
    if not info.answer and info.report is None:
        raise ValueError("expertise.answered needs an answer text or a report")
    return _reply(
        EventType.EXPERTISE_ANSWERED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_expertise_declined(
    info: ExpertiseInfo,
    *,
    event_id: str | None = None,
    source: str = DEFAULT_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Expert → requester: declined with a reason, so the requester can ask someone else."""
    if not info.decline_reason:
        raise ValueError("expertise.declined needs decline_reason")
    return _reply(
        EventType.EXPERTISE_DECLINED, info, event_id=event_id, source=source, timestamp=timestamp
    )

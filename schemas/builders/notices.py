"""Events the bus emits itself: SLA reminders/escalations, discharge follow-ups, delivery
receipts. Each is a Communication *about* the case, referenced by business identifier.

They deliberately carry no Patient: a notice goes to coordinators and dashboards, and
the case resources are already in the events it follows up on (data minimisation).
"""

from __future__ import annotations

from schemas.builders.common import (
    BUS_SOURCE,
    EXT_ADDRESS,
    EXT_ATTEMPT,
    EXT_CHANNEL,
    EXT_RECIPIENT_ID,
    EXT_RELATED_EVENT,
    MessageBuilder,
    Stamp,
    fhir_datetime,
    logical_ref,
    now_stamp,
    ref,
)
from schemas.codes import EVENT_CODESYSTEM, EVENT_ID_SYSTEM, EXT_DEADLINE, EventType
from schemas.model import BusNoticeInfo, OrganizationInfo

_DELIVERY = frozenset({EventType.DELIVERY_SENT, EventType.DELIVERY_FAILED, EventType.DELIVERY_READ})


def build_notice(
    event: EventType,
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Any bus notice; the named builders below fix `event`."""
    if event.inbound:
        raise ValueError(f"{event} is not a bus-emitted event")
    if event in _DELIVERY and not info.channel:
        raise ValueError(f"{event} needs the delivery channel")
    stamp = now_stamp(timestamp)
    b = MessageBuilder(event_id)
    recipients = [
        b.organization(r) if isinstance(r, OrganizationInfo) else b.practitioner_role(r)
        for r in info.recipients
    ]
    ext: list[dict] = []
    if info.deadline is not None:
        ext.append({"url": EXT_DEADLINE, "valueDateTime": fhir_datetime(info.deadline)})
    if info.channel:
        ext.append({"url": EXT_CHANNEL, "valueCode": info.channel})
    if info.address:
        ext.append({"url": EXT_ADDRESS, "valueString": info.address})
    if info.recipient_id:
        ext.append({"url": EXT_RECIPIENT_ID, "valueString": info.recipient_id})
    if info.attempt is not None:
        ext.append({"url": EXT_ATTEMPT, "valuePositiveInt": info.attempt})
    if info.about_event:
        ext.append(
            {
                "url": EXT_RELATED_EVENT,
                "valueIdentifier": {"system": EVENT_ID_SYSTEM, "value": info.about_event},
            }
        )
    comm: dict = {"resourceType": "Communication"}
    if ext:
        comm["extension"] = ext
    comm |= {
        "status": "completed",
        "category": [{"coding": [{"system": EVENT_CODESYSTEM, "code": event.value}]}],
        "about": [logical_ref(info.about.resource_type, info.about.system, info.about.value)],
        "sent": stamp,
        "payload": [{"contentString": info.text}],
    }
    if recipients:
        comm["recipient"] = [ref(r) for r in recipients]
    focus = b.add("Communication", comm, front=True)
    return b.message(event, focus=focus, sender=None, source=source, timestamp=stamp)


def build_sla_reminder(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """First deadline missed: remind the professional who owes an answer."""
    return build_notice(
        EventType.SLA_REMINDER, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_sla_escalated(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Reminder ignored: widen to the next level of the escalation chain."""
    return build_notice(
        EventType.SLA_ESCALATED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_sla_breached(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Final deadline passed: the coordinator must act (call back, redirect)."""
    return build_notice(
        EventType.SLA_BREACHED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_late_notice(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Discharge announced less than 48 h ahead: the CPTS device was bypassed."""
    return build_notice(
        EventType.DISCHARGE_LATE_NOTICE, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_discharge_followup_due(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """J+7 after discharge: check the planned care actually happened."""
    return build_notice(
        EventType.DISCHARGE_FOLLOWUP_DUE,
        info,
        event_id=event_id,
        source=source,
        timestamp=timestamp,
    )


def build_delivery_sent(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """An outbound channel accepted the message (SMTP 250, HTTP 2xx)."""
    return build_notice(
        EventType.DELIVERY_SENT, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_delivery_failed(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """Delivery failed after retries: someone must use another channel."""
    return build_notice(
        EventType.DELIVERY_FAILED, info, event_id=event_id, source=source, timestamp=timestamp
    )


def build_delivery_read(
    info: BusNoticeInfo,
    *,
    event_id: str | None = None,
    source: str = BUS_SOURCE,
    timestamp: Stamp = None,
) -> dict:
    """The recipient read it (MSSanté MDN, platform acknowledgement)."""
    return build_notice(
        EventType.DELIVERY_READ, info, event_id=event_id, source=source, timestamp=timestamp
    )

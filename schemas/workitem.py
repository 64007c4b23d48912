"""Delivery work items: one per (event, recipient, channel), produced by routing.

A work item is the routed event itself (the same FHIR Bundle bytes, untouched) with its
own envelope id and `carebus_*` headers naming the recipient and channel. Its id is
derived from (event id, channel, recipient): routing the same event twice yields the
same ids, so adapters dedup on it and the MSSanté Message-ID / MHD masterIdentifier /
subscription event number derived from it make every outbound effect idempotent.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from schemas.envelope import H_INGRESS_TIME, Envelope, Headers, child_traceparent, header

_NS = uuid.UUID("6f0b8a4e-3c55-4c1e-9a59-6f2f1c0a7c11")


class Channel(StrEnum):
    MSSANTE = "mssante"
    DMP = "dmp"
    EPARCOURS = "eparcours"


class RecipientKind(StrEnum):
    PRACTITIONER = "practitioner"  # id = RPPS
    ORGANIZATION = "organization"  # id = FINESS
    COORDINATOR = "coordinator"  # a CPTS coordinator (id = territory)
    RECORD = "record"  # the patient's shared record (id = patient INS)
    SUBSCRIPTION = "subscription"  # an e-parcours subscription (id = subscription id)


@dataclass(frozen=True, slots=True)
class Recipient:
    kind: RecipientKind
    id: str
    address: str = ""  # MSSanté mailbox, endpoint URL; "" for the record
    role: str = ""  # why: declared-gp, performer, requester, care-team, coordinator…
    display: str = ""  # professional's display name (not patient data)


H_ITEM_CHANNEL = "carebus_channel"
H_ITEM_KIND = "carebus_recipient_kind"
H_ITEM_ID = "carebus_recipient_id"
H_ITEM_ADDRESS = "carebus_recipient_address"
H_ITEM_ROLE = "carebus_recipient_role"
H_ITEM_DISPLAY = "carebus_recipient_display"
H_ITEM_EVENT = "carebus_event_id"
H_ITEM_DUE = "carebus_due"  # ISO time the recipient is expected to act by, if any


def item_id(event_id: str, channel: Channel | str, recipient_id: str) -> str:
    return str(uuid.uuid5(_NS, f"{event_id}|{channel}|{recipient_id}"))


@dataclass(frozen=True, slots=True)
class WorkItem:
    event: Envelope  # the routed event (ce_id = the event id)
    channel: Channel
    recipient: Recipient
    due: str = ""

    @property
    def id(self) -> str:
        return item_id(self.event.id, self.channel, self.recipient.id)

    def envelope(self) -> Envelope:
        """The envelope to publish on the channel's delivery topic."""
        extra: Headers = [
            (H_ITEM_CHANNEL, self.channel.value.encode()),
            (H_ITEM_KIND, self.recipient.kind.value.encode()),
            (H_ITEM_ID, self.recipient.id.encode()),
            (H_ITEM_ADDRESS, self.recipient.address.encode()),
            (H_ITEM_ROLE, self.recipient.role.encode()),
            (H_ITEM_DISPLAY, self.recipient.display.encode()),
            (H_ITEM_EVENT, self.event.id.encode()),
        ]
        if self.due:
            extra.append((H_ITEM_DUE, self.due.encode()))
        accepted = header(self.event.extra_headers, H_INGRESS_TIME)
        if accepted:
            extra.append((H_INGRESS_TIME, accepted))
        return Envelope(
            id=self.id,
            type=self.event.type,
            source=self.event.source,
            subject=self.event.subject,
            data=self.event.data,
            time=self.event.time,
            correlation_id=self.event.correlation_id,
            causation_id=self.event.id,
            traceparent=child_traceparent(self.event.traceparent),  # same trace, own span
            content_type=self.event.content_type,
            extra_headers=tuple(extra),
        )

    @classmethod
    def from_envelope(cls, env: Envelope) -> WorkItem:
        """Rebuild a work item from a consumed delivery record."""
        h = env.extra_headers

        def text(name: str) -> str:
            raw = header(h, name)
            return raw.decode() if raw else ""

        event_id = text(H_ITEM_EVENT)
        if not event_id or not text(H_ITEM_CHANNEL):
            raise ValueError("not a work item: carebus_event_id/carebus_channel missing")
        rest = tuple((n, v) for n, v in h if not n.startswith("carebus_"))
        event = Envelope(
            id=event_id, type=env.type, source=env.source, subject=env.subject, data=env.data,
            time=env.time, correlation_id=env.correlation_id, causation_id=event_id,
            traceparent=env.traceparent, content_type=env.content_type, extra_headers=rest,
        )
        recipient = Recipient(
            kind=RecipientKind(text(H_ITEM_KIND)),
            id=text(H_ITEM_ID),
            address=text(H_ITEM_ADDRESS),
            role=text(H_ITEM_ROLE),
            display=text(H_ITEM_DISPLAY),
        )
        return cls(event=event, channel=Channel(text(H_ITEM_CHANNEL)), recipient=recipient,
                   due=text(H_ITEM_DUE))

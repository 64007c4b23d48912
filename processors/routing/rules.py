"""Who must receive what, through which channel: the routing rules, pure and typed.

One event → zero or more work items, one per (recipient, channel):
- MSSanté to each professional the event concerns, with the mailbox from the directory
  (authoritative) or else the one the producer gave;
- the shared record (DMP) for the documents an event brings, unless the patient opposes
  sharing or has no qualified INS;
- e-parcours platforms whose subscription matches, unless the patient opposes sharing;
- the territory's CPTS coordinator for stays, alerts and escalations.
A recipient that cannot be resolved is never dropped: it is listed in `unresolved`, so
the agent alerts the coordinator and dead-letters the work item with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from processors.routing.parties import (
    ROLE_CARE_TEAM,
    ROLE_COORDINATOR,
    ROLE_GP,
    ROLE_PERFORMER,
    ROLE_REQUESTER,
    CaseParties,
    Party,
)
from schemas.codes import DocType, EventType
from schemas.envelope import Envelope
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

E = EventType

#: event → roles that must hear about it by secure mail
MAIL_ROLES: dict[EventType, tuple[str, ...]] = {
    E.REFERRAL_REQUESTED: (ROLE_PERFORMER,),
    E.REFERRAL_CANCELLED: (ROLE_PERFORMER,),
    E.REFERRAL_ACCEPTED: (ROLE_REQUESTER,),
    E.REFERRAL_REJECTED: (ROLE_REQUESTER,),
    E.REFERRAL_COMPLETED: (ROLE_REQUESTER,),
    E.EXPERTISE_REQUESTED: (ROLE_PERFORMER,),
    E.EXPERTISE_ANSWERED: (ROLE_REQUESTER,),
    E.EXPERTISE_DECLINED: (ROLE_REQUESTER,),
    **{
        e: (ROLE_GP, ROLE_CARE_TEAM, ROLE_COORDINATOR)
        for e in (
            E.ADMISSION_NOTIFIED,
            E.ADMISSION_CANCELLED,
            E.DISCHARGE_PLANNED,
            E.DISCHARGE_CANCELLED,
            E.DISCHARGE_COMPLETED,
            E.DISCHARGE_REVERTED,
        )
    },
}

#: events whose document goes to the shared record, and which document type
RECORD_DOCS: dict[EventType, frozenset[str]] = {
    E.REFERRAL_COMPLETED: frozenset({DocType.CONSULTATION_REPORT}),
    E.DISCHARGE_COMPLETED: frozenset({DocType.DISCHARGE_LETTER}),
    E.EXPERTISE_ANSWERED: frozenset({DocType.TELEMEDICINE_REPORT}),
}

#: bus-emitted notices: roles, as decided by the SLA policy, are given by the caller
NOTICES = frozenset(
    {
        E.SLA_REMINDER,
        E.SLA_ESCALATED,
        E.SLA_BREACHED,
        E.DISCHARGE_LATE_NOTICE,
        E.DISCHARGE_FOLLOWUP_DUE,
    }
)


class Professional(Protocol):
    mailbox: str | None


class Territory(Protocol):
    id: str
    name: str
    coordinator_name: str
    coordinator_mailbox: str


class Lookup(Protocol):
    """What routing reads: the directory, territories, and matching subscriptions."""

    def practitioner(self, rpps: str) -> Professional | None: ...

    def territory_for(self, finess: str | None, postcode: str | None) -> Territory | None: ...


class Subscriptions(Protocol):
    def matching(
        self, event_type: EventType, parties: CaseParties, patient_ids: Sequence[str]
    ) -> Sequence[tuple[str, str]]:
        """(subscription id, endpoint) of every active subscription the event matches."""
        ...


@dataclass(frozen=True, slots=True)
class Unresolved:
    role: str
    who: str  # RPPS / territory id, never a patient datum
    reason: str


#: `CaseParties.extra` key naming what an opposition rests on (default: the event itself)
OPPOSITION_BASIS = "opposition_basis"
REASON_OPPOSITION = "patient-opposes-sharing"
REASON_NO_INS = "no-qualified-ins"


@dataclass(frozen=True, slots=True)
class Withheld:
    """A delivery routing chose not to make, for the audit trail (no patient data):
    `basis` is what the decision rests on — "event" (the opposition the event carries,
    e.g. from HL7 ZFA) or "consent.updated <event id>" (the patient's recorded decision)."""

    event_id: str
    channel: Channel
    reason: str
    basis: str
    count: int = 1

    def record(self, case_id: str, event_type: str, at: str) -> tuple[bytes, bytes]:
        """(key, value) of the audit record on care.routing.audit: JSON, keyed by case."""
        body = {
            "at": at,
            "event_id": self.event_id,
            "event_type": event_type,
            "case_id": case_id,
            "channel": str(self.channel),
            "withheld": self.count,
            "reason": self.reason,
            "basis": self.basis,
        }
        return case_id.encode(), orjson.dumps(body)

    def __str__(self) -> str:
        return (
            f"{self.event_id}: {self.count} {self.channel} delivery withheld: "
            f"{self.reason} ({self.basis})"
        )


@dataclass
class Decision:
    items: list[WorkItem] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    #: consent and channel decisions, for the audit trail (no patient data)
    audit: list[Withheld] = field(default_factory=list)


def route(
    env: Envelope,
    parties: CaseParties,
    lookup: Lookup,
    *,
    documents: Iterable[str] = (),
    notify: Sequence[str] = (),
    subscriptions: Subscriptions | None = None,
    patient_ids: Sequence[str] = (),
    due: str = "",
) -> Decision:
    """Work items for one event. `documents` are the LOINC types the event carries;
    `notify` the roles of a bus notice (from the SLA policy)."""
    et = EventType(env.type)
    decision = Decision()
    roles = tuple(notify) if et in NOTICES else MAIL_ROLES.get(et, ())
    if et is E.DELIVERY_FAILED:
        roles = (ROLE_COORDINATOR,)  # a failed delivery is the coordinator's to handle
    seen: set[str] = set()
    for role in roles:
        if role == ROLE_COORDINATOR:
            _coordinator(env, parties, lookup, decision, seen, due)
            continue
        wanted = parties.with_role(role)
        if not wanted and role in (ROLE_PERFORMER, ROLE_REQUESTER, ROLE_GP):
            decision.unresolved.append(Unresolved(role, "", f"the event names no {role}"))
        for party in wanted:
            _mail(env, party, lookup, decision, seen, due)
    _record(env, et, parties, documents, decision)
    _platforms(env, et, parties, subscriptions, patient_ids, decision)
    return decision


def _mail(
    env: Envelope, party: Party, lookup: Lookup, decision: Decision, seen: set[str], due: str
) -> None:
    if party.rpps in seen:
        return
    seen.add(party.rpps)
    known = lookup.practitioner(party.rpps)
    mailbox = (known.mailbox if known is not None else None) or party.mailbox
    if not mailbox:
        decision.unresolved.append(
            Unresolved(party.role, party.rpps, "no MSSanté mailbox in the directory or the message")
        )
        return
    recipient = Recipient(
        RecipientKind.PRACTITIONER, party.rpps, mailbox, party.role, party.display
    )
    decision.items.append(WorkItem(env, Channel.MSSANTE, recipient, due))


def _coordinator(
    env: Envelope,
    parties: CaseParties,
    lookup: Lookup,
    decision: Decision,
    seen: set[str],
    due: str,
) -> None:
    territory = lookup.territory_for(
        parties.hospital_finess or None, parties.patient_postcode or None
    )
    if territory is None or not territory.coordinator_mailbox:
        decision.unresolved.append(
            Unresolved(
                ROLE_COORDINATOR,
                parties.hospital_finess or parties.patient_postcode[:2],
                "no territory (CPTS coordinator) covers this hospital or postcode",
            )
        )
        return
    key = f"territory:{territory.id}"
    if key in seen:
        return
    seen.add(key)
    recipient = Recipient(
        RecipientKind.COORDINATOR,
        territory.id,
        territory.coordinator_mailbox,
        ROLE_COORDINATOR,
        territory.coordinator_name,
    )
    decision.items.append(WorkItem(env, Channel.MSSANTE, recipient, due))


def _basis(parties: CaseParties) -> str:
    return parties.extra.get(OPPOSITION_BASIS, "event")


def coordinator_id(territory_id: str) -> str:
    """Recipient id of a territory's coordinator (distinct from any RPPS)."""
    return f"territory/{territory_id}"


def _record(
    env: Envelope, et: EventType, parties: CaseParties, documents: Iterable[str], decision: Decision
) -> None:
    wanted = RECORD_DOCS.get(et)
    if not wanted or not wanted & set(documents):
        return
    if parties.opposition:
        decision.audit.append(Withheld(env.id, Channel.DMP, REASON_OPPOSITION, _basis(parties)))
        return
    if not parties.patient_ins:
        decision.audit.append(Withheld(env.id, Channel.DMP, REASON_NO_INS, "event"))
        return
    recipient = Recipient(RecipientKind.RECORD, "dmp", "", "shared-record", "DMP")
    decision.items.append(WorkItem(env, Channel.DMP, recipient))


def _platforms(
    env: Envelope,
    et: EventType,
    parties: CaseParties,
    subscriptions: Subscriptions | None,
    patient_ids: Sequence[str],
    decision: Decision,
) -> None:
    if subscriptions is None or not et.inbound:
        return
    matches = subscriptions.matching(et, parties, patient_ids)
    if matches and parties.opposition:
        decision.audit.append(
            Withheld(env.id, Channel.EPARCOURS, REASON_OPPOSITION, _basis(parties), len(matches))
        )
        return
    for sub_id, endpoint in matches:
        recipient = Recipient(RecipientKind.SUBSCRIPTION, sub_id, endpoint, "platform")
        decision.items.append(WorkItem(env, Channel.EPARCOURS, recipient))

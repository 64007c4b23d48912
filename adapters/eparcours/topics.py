"""The SubscriptionTopics CareBus offers to e-parcours platforms, one per case family.

Why topics per family (referral, stay, expertise) rather than per event type: a regional
platform follows patient pathways, and a pathway needs every step of a case in order
(a discharge.planned then its cancellation). The event type is still a filter
(`event-type`) for platforms that only want some steps.

In R4B `SubscriptionTopic` is a real resource: they are served as such at
`GET /fhir/SubscriptionTopic` (searchset) and `GET /fhir/SubscriptionTopic/{id}`. R4
clients of the backport IG discover topics by canonical URL instead, so the same list is
also answered by the IG's `Subscription/$topic-list` operation (Parameters
`subscription-topic-canonical`) and the canonicals can be advertised in the
CapabilityStatement (`capability_extensions`).

Filters (`canFilterBy.filterParameter`, used as `backport-filter-criteria` values
`name=value`, several filters are ANDed, comma-separated values are ORed):
- `event-type`: CareBus event codes (`discharge.planned,discharge.completed`);
- `patient`: the patient's identifier `system|value` (or the bare INS);
- `territory`: French postcode prefixes of the patient's address (`03,63` = Allier and
  Puy-de-Dôme; `03100` = one town);
- `finess`: the FINESS (idNatStruct "1"+FINESS, or the 9 characters) of an organisation
  of the event (the hospital of a stay, the requester's practice…).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.codes import CAREBUS_BASE, EVENT_CODESYSTEM, EVENT_DISPLAY, EventType

TOPIC_BASE = f"{CAREBUS_BASE}/SubscriptionTopic"
FHIR_SD = "http://hl7.org/fhir/StructureDefinition"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
EXT_TOPIC_CANONICAL = (
    f"{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
FILTERS = ("event-type", "patient", "territory", "finess")
_E = EventType


@dataclass(frozen=True, slots=True)
class Topic:
    id: str
    title: str
    description: str
    focus: tuple[str, ...]  # resource types an event of this topic is about
    events: tuple[EventType, ...]

    @property
    def url(self) -> str:
        return f"{TOPIC_BASE}/{self.id}"


TOPICS: tuple[Topic, ...] = (
    Topic(
        "referral",
        "Adressages (référence GP → spécialiste)",
        "Every step of a referral: request, acceptance or refusal, cancellation, outcome.",
        ("Task",),
        tuple(e for e in EventType if e.value.startswith("referral.")),
    ),
    Topic(
        "stay",
        "Séjours hospitaliers (admissions et sorties)",
        "Admissions, the 48 h discharge notice, the discharge with its lettre de liaison, "
        "cancellations and reverts, and the bus's late-notice and J+7 follow-up reminders.",
        ("Encounter", "Communication"),
        (
            _E.ADMISSION_NOTIFIED,
            _E.ADMISSION_CANCELLED,
            _E.DISCHARGE_PLANNED,
            _E.DISCHARGE_CANCELLED,
            _E.DISCHARGE_COMPLETED,
            _E.DISCHARGE_REVERTED,
            _E.DISCHARGE_LATE_NOTICE,
            _E.DISCHARGE_FOLLOWUP_DUE,
        ),
    ),
    Topic(
        "expertise",
        "Téléexpertise",
        "Tele-expertise requests and the expert's answer or refusal.",
        ("CommunicationRequest", "Communication"),
        tuple(e for e in EventType if e.value.startswith("expertise.")),
    ),
)

BY_URL: dict[str, Topic] = {t.url: t for t in TOPICS}
BY_ID: dict[str, Topic] = {t.id: t for t in TOPICS}


def topic_of(event: EventType | str) -> Topic | None:
    """The topic an event type belongs to (None: not offered to subscribers)."""
    try:
        event = EventType(event)
    except ValueError:
        return None
    return next((t for t in TOPICS if event in t.events), None)


_FILTER_TEXT = {
    "event-type": "CareBus event code(s), comma-separated (OR)",
    "patient": "Patient identifier system|value (INS), or the bare value",
    "territory": "Postcode prefix(es) of the patient's address, comma-separated (OR)",
    "finess": "FINESS of an organisation of the event, comma-separated (OR)",
}


def subscription_topic(topic: Topic) -> dict:
    """The R4B SubscriptionTopic resource of a topic."""
    return {
        "resourceType": "SubscriptionTopic",
        "id": topic.id,
        "url": topic.url,
        "version": "1.0.0",
        "title": topic.title,
        "status": "active",
        "publisher": "CareBus",
        "description": topic.description,
        "resourceTrigger": [
            {
                "description": f"A CareBus {topic.id} event about a {rtype}",
                "resource": f"{FHIR_SD}/{rtype}",
                "supportedInteraction": ["create", "update"],
            }
            for rtype in topic.focus
        ],
        "eventTrigger": [
            {
                "description": EVENT_DISPLAY[e],
                "event": {"coding": [{"system": EVENT_CODESYSTEM, "code": e.value}]},
                "resource": f"{FHIR_SD}/{topic.focus[0]}",
            }
            for e in topic.events
        ],
        "canFilterBy": [
            {"description": _FILTER_TEXT[name], "filterParameter": name} for name in FILTERS
        ],
        "notificationShape": [
            {
                "resource": f"{FHIR_SD}/{rtype}",
                "include": [f"{rtype}:patient"] if rtype != "Communication" else [],
            }
            for rtype in topic.focus
        ],
    }


def topics_bundle(base_url: str) -> dict:
    """`GET /fhir/SubscriptionTopic`: a searchset of every topic."""
    base = base_url.rstrip("/")
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(TOPICS),
        "entry": [
            {
                "fullUrl": f"{base}/SubscriptionTopic/{t.id}",
                "resource": subscription_topic(t),
                "search": {"mode": "match"},
            }
            for t in TOPICS
        ],
    }


def topic_list() -> dict:
    """`Subscription/$topic-list` (backport IG, R4): the canonical URLs as Parameters."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription-topic-canonical", "valueCanonical": t.url} for t in TOPICS
        ],
    }


def capability_extensions() -> list[dict]:
    """The R4 way to advertise topics: extensions on CapabilityStatement.rest.resource
    (Subscription), for the owner of `/fhir/metadata` to add."""
    return [{"url": EXT_TOPIC_CANONICAL, "valueCanonical": t.url} for t in TOPICS]

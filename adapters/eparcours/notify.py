"""Notification Bundles of the subscriptions backport IG, and their HMAC signature. Pure.

A notification is a `history` Bundle whose first entry is the subscription status:
for R4 subscribers the IG's Parameters profile `backport-subscription-status-r4`
(parameters `subscription`, `topic`, `status`, `type`, `events-since-subscription-start`,
`notification-event` with parts `event-number`, `timestamp`, `focus`,
`additional-context`, and `error`); for subscribers whose payload type says
`fhirVersion=4.3`, the R4B `SubscriptionStatus` resource with the same content. `type`
is handshake | heartbeat | event-notification | query-status | query-event.

Content levels: `empty` carries the numbers only (no topic, no focus: nothing about the
patient leaves the bus); `id-only` adds the focus reference (type, id, business
identifier) and the ids of the context resources; `full-resource` adds the resources of
the event (focus, patient, professionals, documents, and its MessageHeader).

Why an event notification is byte-stable: its Bundle id derives from (subscription,
event number) and its timestamps are the event's, so every retry of one event sends
the same bytes with the same signature, and a receiver can dedup on either.

Signature: `X-CareBus-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>` with
the subscription's secret; a receiver recomputes it before trusting the body.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.bundle_view import BundleView
from adapters.eparcours.registry import Content, SubscriptionRecord
from schemas.codes import CAREBUS_BASE, EVENT_CODESYSTEM

SIGNATURE_HEADER = "X-CareBus-Signature"
STATUS_PROFILE_R4 = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
EXT_EVENT_TYPE = f"{CAREBUS_BASE}/StructureDefinition/event-type"
ERROR_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscription-error"
_NS = uuid.UUID("3b8f1f0e-2d4b-4c55-9d1e-7f6a1e2c9b40")
_CREATES = ("requested", "notified", "planned")


@dataclass(frozen=True, slots=True)
class EventNote:
    """One numbered event of a subscription (what `$events` can send again)."""

    number: int
    timestamp: str  # FHIR instant: when the bus numbered it
    event: dict  # the CareBus message Bundle


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(sign(body, secret), str(header))


def _ref(res: dict, full: bool) -> dict:
    """Reference to an event resource: its `urn:uuid` fullUrl when the resource travels in
    the notification (full-resource: resolvable in the Bundle, like the event's own
    references), else `Type/id` with the business identifier (never the patient's)."""
    rtype, rid = res["resourceType"], res.get("id", "")
    ref: dict = {"reference": f"urn:uuid:{rid}" if full else f"{rtype}/{rid}", "type": rtype}
    idents = [i for i in res.get("identifier") or [] if isinstance(i, dict) and i.get("value")]
    if idents and rtype != "Patient":
        ref["identifier"] = {k: idents[0][k] for k in ("system", "value") if k in idents[0]}
    return ref


def _event_parts(note: EventNote, content: Content) -> tuple[dict, list[dict], list[dict]]:
    """(focus-or-empty, additional-context refs, full entries) of one event."""
    if content is Content.EMPTY:
        return {}, [], []
    view = BundleView(note.event)
    focus = view.focus
    context = [
        r
        for r in view.resources
        if r is not focus
        and r.get("resourceType")
        in ("Patient", "MessageHeader", "ServiceRequest", "DocumentReference")
    ]
    entries: list[dict] = []
    if content is Content.FULL_RESOURCE:
        create = view.event is not None and view.event.value.endswith(_CREATES)
        for res in [focus, *[r for r in view.resources if r is not focus]]:
            if not res:
                continue
            rtype, rid = res["resourceType"], res.get("id", "")
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{rid}",
                    "resource": res,
                    "request": {"method": "POST", "url": rtype}
                    if create and res is focus
                    else {"method": "PUT", "url": f"{rtype}/{rid}"},
                    "response": {"status": "201" if create and res is focus else "200"},
                }
            )
    full = content is Content.FULL_RESOURCE
    return (_ref(focus, full) if focus else {}), [_ref(r, full) for r in context], entries


def _event_type(note: EventNote) -> dict:
    code = BundleView(note.event).event
    return {
        "url": EXT_EVENT_TYPE,
        "valueCoding": {"system": EVENT_CODESYSTEM, "code": code.value if code else ""},
    }


def status_resource(
    record: SubscriptionRecord,
    *,
    kind: str,
    base_url: str,
    events: Sequence[EventNote] = (),
    content: Content | None = None,
    events_since: int | None = None,
) -> tuple[dict, list[dict]]:
    """(status resource in the record's format, the resource entries that follow it)."""
    content = content or record.content
    base = base_url.rstrip("/")
    since = record.events if events_since is None else events_since
    notes, entries = [], []
    for note in events:
        focus, context, full = _event_parts(note, content)
        notes.append((note, focus, context))
        entries.extend(full)
    error = [{"coding": [{"system": ERROR_SYSTEM, "code": "no-response"}], "text": record.error}]
    sub_ref = {"reference": f"{base}/Subscription/{record.id}"}
    if record.status_format == "r4b":
        res: dict = {
            "resourceType": "SubscriptionStatus",
            "status": record.status.value,
            "type": kind,
            "eventsSinceSubscriptionStart": str(since),
        }
        if notes:
            res["notificationEvent"] = []
        for note, focus, context in notes:
            ev: dict = {"eventNumber": str(note.number), "timestamp": note.timestamp}
            if content is not Content.EMPTY:
                ev["extension"] = [_event_type(note)]
            if focus:
                ev["focus"] = focus
            if context:
                ev["additionalContext"] = context
            res["notificationEvent"].append(ev)
        res["subscription"] = sub_ref
        if content is not Content.EMPTY:
            res["topic"] = record.topic
        if record.error and record.status.value == "error":
            res["error"] = error
        return res, entries
    params: list[dict] = [{"name": "subscription", "valueReference": sub_ref}]
    if content is not Content.EMPTY:
        params.append({"name": "topic", "valueCanonical": record.topic})
    params += [
        {"name": "status", "valueCode": record.status.value},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for note, focus, context in notes:
        parts: list[dict] = [
            {"name": "event-number", "valueString": str(note.number)},
            {"name": "timestamp", "valueInstant": note.timestamp},
        ]
        if focus:
            parts.append({"name": "focus", "valueReference": focus})
        parts += [{"name": "additional-context", "valueReference": c} for c in context]
        param: dict = {"name": "notification-event", "part": parts}
        if content is not Content.EMPTY:
            param["extension"] = [_event_type(note)]
        params.append(param)
    if record.error and record.status.value == "error":
        params.append({"name": "error", "valueCodeableConcept": error[0]})
    return {
        "resourceType": "Parameters",
        "meta": {"profile": [STATUS_PROFILE_R4]},
        "parameter": params,
    }, entries


def notification(
    record: SubscriptionRecord,
    *,
    kind: str,
    base_url: str,
    timestamp: str,
    events: Sequence[EventNote] = (),
    content: Content | None = None,
    events_since: int | None = None,
) -> dict:
    """A `history` notification Bundle: status first, then the event resources."""
    status, entries = status_resource(
        record,
        kind=kind,
        base_url=base_url,
        events=events,
        content=content,
        events_since=events_since,
    )
    if kind == "event-notification" and len(events) == 1:
        seed = f"{record.id}/{events[0].number}"
    else:
        seed = f"{record.id}/{kind}/{timestamp}/{','.join(str(e.number) for e in events)}"
    bundle_id = str(uuid.uuid5(_NS, seed))
    status["id"] = str(uuid.uuid5(_NS, seed + "/status"))
    unique: dict[str, dict] = {}
    for entry in entries:  # $events over several events: one entry per resource
        unique.setdefault(entry["fullUrl"], entry)
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "history",
        "timestamp": timestamp,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{status['id']}",
                "resource": status,
                "request": {
                    "method": "GET",
                    "url": f"{base_url.rstrip('/')}/Subscription/{record.id}/$status",
                },
                "response": {"status": "200"},
            },
            *unique.values(),
        ],
    }


def status_search(record: SubscriptionRecord, *, base_url: str) -> dict:
    """`$status`: a searchset with the subscription's current status (query-status)."""
    status, _ = status_resource(record, kind="query-status", base_url=base_url)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": status, "search": {"mode": "match"}}],
    }

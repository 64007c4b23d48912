"""Read the few facts the processors need from an event, once, from its Bundle. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from adapters.bundle_view import BundleView, extension, parse_fhir_datetime
from processors.routing.parties import CaseParties, parties_of
from processors.sla.machine import EventFacts
from schemas.builders.common import EXT_RECIPIENT_ID
from schemas.codes import EXT_PLANNED_DISCHARGE, EventType
from schemas.envelope import Envelope


@dataclass(frozen=True, slots=True)
class Read:
    event_type: EventType
    view: BundleView
    parties: CaseParties
    facts: EventFacts
    documents: tuple[str, ...]


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_fhir_datetime(text).astimezone(UTC)
    except (ValueError, TypeError):
        return None


def read_event(env: Envelope) -> Read:
    """Parse once; ValueError/BundleError for what is not a CareBus event (dead-letter)."""
    et = EventType(env.type)
    view = BundleView(orjson.loads(env.data))
    focus = view.focus
    parties = parties_of(view) if et.inbound else CaseParties()
    planned = None
    for ext in focus.get("extension", []) or []:
        if ext.get("url") == EXT_PLANNED_DISCHARGE:
            planned = _when(ext.get("valueDateTime"))
    recipients: tuple[str, ...] = ()
    if et.family == "stay":
        recipients = tuple(p.rpps for p in parties.parties)
    elif et in (EventType.DELIVERY_READ,):
        recipients = tuple(_read_by(view))
    priority = focus.get("priority") if isinstance(focus.get("priority"), str) else None
    facts = EventFacts(
        case_id=env.subject,
        event_id=env.id,
        time=_when(env.time) or datetime.now(UTC),
        priority=priority,
        planned_at=planned,
        recipients=recipients,
    )
    docs = doc_types(view) if et.inbound else ()
    return Read(et, view, parties, facts, docs)


def doc_types(view: BundleView) -> tuple[str, ...]:
    """LOINC types of the documents an event carries, without decoding their content
    (routing only needs the types; the adapters decode and check the bytes they send)."""
    out = []
    for res in view.resources:
        if res.get("resourceType") != "DocumentReference":
            continue
        for coding in (res.get("type") or {}).get("coding", []) or []:
            if coding.get("system") == "http://loinc.org" and coding.get("code"):
                out.append(str(coding["code"]))
                break
    return tuple(out)


def _read_by(view: BundleView) -> list[str]:
    """Who acknowledged (delivery.read): the RPPS the work item was addressed to."""
    ext = extension(view.focus, EXT_RECIPIENT_ID)
    value = (ext or {}).get("valueString") or ""
    return [value] if value else []

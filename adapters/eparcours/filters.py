"""Subscription filters (`backport-filter-criteria`) and the facts of an event they test.

Why a fixed, small filter vocabulary instead of arbitrary FHIR search: the bus matches
every event against every subscription, so a filter must be cheap and total (no
search engine, no resource fetch), and a platform's territory is what matters in
France (a CPTS or a département is a list of postcodes, a hospital is a FINESS).
Pure: the facts are read once per event from the message Bundle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.bundle_view import BundleView
from adapters.eparcours.topics import FILTERS, Topic
from schemas.codes import FINESS, INS_SYSTEMS

_POSTCODE = re.compile(r"^(?:\d{2,5}|2[AB]\d{0,3})$")
_FINESS = re.compile(r"^1?([0-9][0-9AB][0-9]{7})$")
_ALIASES = {"patient.identifier": "patient", "subject.identifier": "patient", "type": "event-type"}


class FilterError(ValueError):
    """A filter criteria string the topic cannot honour (the text says why)."""


@dataclass(frozen=True, slots=True)
class Filter:
    name: str  # one of topics.FILTERS
    values: tuple[str, ...]  # ORed

    def text(self) -> str:
        return f"{self.name}={','.join(self.values)}"


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What filters look at, read once from an event Bundle."""

    event_type: str
    patient_ids: frozenset[tuple[str, str]]
    postcodes: frozenset[str]
    finess: frozenset[str]  # 9-character FINESS numbers

    @classmethod
    def from_bundle(cls, bundle: dict) -> EventFacts:
        view = BundleView(bundle)
        ids: set[tuple[str, str]] = set()
        postcodes: set[str] = set()
        finess: set[str] = set()
        for res in view.resources:
            rtype = res.get("resourceType")
            if rtype == "Patient":
                for ident in res.get("identifier") or []:
                    if isinstance(ident, dict) and ident.get("value"):
                        ids.add((str(ident.get("system", "")), str(ident["value"])))
                for addr in res.get("address") or []:
                    if isinstance(addr, dict) and addr.get("postalCode"):
                        postcodes.add(str(addr["postalCode"]).replace(" ", "").upper())
            elif rtype == "Organization":
                for ident in res.get("identifier") or []:
                    if isinstance(ident, dict) and ident.get("system") == FINESS:
                        match = _FINESS.match(str(ident.get("value", "")))
                        if match:
                            finess.add(match.group(1))
        return cls(
            event_type=view.event.value if view.event else "",
            patient_ids=frozenset(ids),
            postcodes=frozenset(postcodes),
            finess=frozenset(finess),
        )


def parse_filter(text: str, topic: Topic) -> Filter:
    """`[Resource?]name=v1,v2` → Filter, checked against the topic's vocabulary."""
    body = text.strip()
    if "?" in body:
        body = body.split("?", 1)[1]
    name, sep, raw = body.partition("=")
    name = _ALIASES.get(name.strip(), name.strip())
    if not sep or not raw.strip():
        raise FilterError(f"filter {text!r} must read name=value")
    if name not in FILTERS:
        raise FilterError(f"unknown filter {name!r}: this topic filters by {', '.join(FILTERS)}")
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    if name == "event-type":
        allowed = {e.value for e in topic.events}
        wrong = [v for v in values if v not in allowed]
        if wrong:
            raise FilterError(f"event type(s) {', '.join(wrong)} are not in topic {topic.id}")
    elif name == "territory":
        values = tuple(v.replace(" ", "").upper() for v in values)
        if not all(_POSTCODE.match(v) for v in values):
            raise FilterError("territory values are postcode prefixes (2 to 5 characters)")
    elif name == "finess":
        found = [_FINESS.match(v) for v in values]
        if not all(found):
            raise FilterError("finess values are FINESS numbers (9 characters, or 1+FINESS)")
        values = tuple(m.group(1) for m in found if m)
    return Filter(name, values)


def _patient_match(value: str, ids: frozenset[tuple[str, str]]) -> bool:
    """`system|value` matches that identifier (or the bare value, as routing knows it);
    `|value` any system; a bare value an INS (or an identifier without system)."""
    system, sep, code = value.rpartition("|")
    if not sep:
        return any(v == value and (s in INS_SYSTEMS or not s) for s, v in ids)
    if not system:
        return any(v == code for _, v in ids)
    return (system, code) in ids or ("", code) in ids


def matches(filters: tuple[Filter, ...], facts: EventFacts) -> bool:
    """True when every filter holds (AND), each filter holding for any of its values."""
    for f in filters:
        if f.name == "event-type":
            ok = facts.event_type in f.values
        elif f.name == "patient":
            ok = any(_patient_match(v, facts.patient_ids) for v in f.values)
        elif f.name == "territory":
            ok = any(pc.startswith(v) for v in f.values for pc in facts.postcodes)
        else:
            ok = bool(facts.finess.intersection(f.values))
        if not ok:
            return False
    return True

"""Patients' sharing decisions, folded from `care.consent.events`: pure registry + feed.

A `consent.updated` event records (or lifts) a patient's opposition to sharing. Routing
must honour it for every later event about that patient, on whatever partition that
event lands, so every routing worker folds the whole (compacted) consent topic into a
`ConsentRegistry`, keyed by the patient pseudonym (`schemas.cases.patient_key`).

The latest decision by `Consent.dateTime` wins, not the latest record: a decision
recorded on paper yesterday and keyed in today must not undo one made this morning.
An opposition carried by the event itself (the sharing-opposition extension, HL7 ZFA)
blocks too: any opposition blocks, so a lifted opposition in the registry never
overrides what the producer says about this very event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from adapters.bundle_view import BundleView, parse_fhir_datetime
from bus.feed import TopicFeed
from bus.settings import KafkaSettings
from schemas.cases import PATIENT_KEY_SYSTEM, parse_case_id
from schemas.codes import EventType
from schemas.consent_rules import opposes
from schemas.envelope import Envelope
from schemas.topics import CONSENT_EVENTS


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """One patient's current decision; `event_id` is the consent.updated that made it
    (what the audit record cites)."""

    opposed: bool
    event_id: str
    decided_at: datetime


def decision_of(env: Envelope) -> tuple[str, ConsentDecision]:
    """(patient key, decision) of a consent.updated event; ValueError if it is not one."""
    if env.type != EventType.CONSENT_UPDATED:
        raise ValueError(f"not a consent event: {env.type}")
    family, system, key = parse_case_id(env.subject)
    if family != "consent" or system != PATIENT_KEY_SYSTEM:
        raise ValueError("consent event without a patient key")
    view = BundleView(orjson.loads(env.data))
    consent = view.focus
    if consent.get("resourceType") != "Consent":
        raise ValueError("consent event whose focus is not a Consent")
    when = consent.get("dateTime")
    try:
        decided = parse_fhir_datetime(when).astimezone(UTC) if isinstance(when, str) else None
    except (TypeError, ValueError):
        decided = None
    if decided is None:
        raise ValueError("consent event without a valid Consent.dateTime")
    return key, ConsentDecision(opposes(consent), env.id, decided)


class ConsentRegistry:
    """Latest decision per patient key; lookups are O(keys of the event)."""

    def __init__(self) -> None:
        self._by_patient: dict[str, ConsentDecision] = {}

    def __len__(self) -> int:
        return len(self._by_patient)

    def apply(self, key: str, decision: ConsentDecision) -> bool:
        """Keep the decision unless a later-decided one is already known; True if kept."""
        known = self._by_patient.get(key)
        if known is not None and known.decided_at > decision.decided_at:
            return False
        self._by_patient[key] = decision
        return True

    def forget(self, key: str) -> None:
        """A tombstone (e.g. the patient's records erased): no decision on file."""
        self._by_patient.pop(key, None)

    def opposition(self, keys: list[str] | tuple[str, ...]) -> ConsentDecision | None:
        """The standing opposition among these patient keys, if any."""
        for key in keys:
            found = self._by_patient.get(key)
            if found is not None and found.opposed:
                return found
        return None

    def oppositions(self) -> int:
        return sum(1 for d in self._by_patient.values() if d.opposed)


class ConsentFeed(TopicFeed):
    """Keeps a `ConsentRegistry` in step with `care.consent.events` (see `TopicFeed`)."""

    name = "consent"

    def __init__(
        self,
        bootstrap: str,
        kafka: KafkaSettings,
        registry: ConsentRegistry | None = None,
        *,
        topic: str = CONSENT_EVENTS.name,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(bootstrap, kafka, topic, start_timeout_s=start_timeout_s)
        self.registry = registry if registry is not None else ConsentRegistry()

    def describe(self) -> str:
        return f"{len(self.registry)} patients, {self.registry.oppositions()} oppositions"

    def fold(
        self, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]], offset: int
    ) -> None:
        if value is None:
            _, _, patient = key.decode().rpartition("|")
            self.registry.forget(patient)
            return
        env = Envelope.decode(key, value, headers)  # EnvelopeError is a ValueError: counted
        patient, decision = decision_of(env)
        self.registry.apply(patient, decision)

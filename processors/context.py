"""What the routing agent needs from the outside, and how it writes a batch's decisions.

Kept apart from the faust binding (`processors.app`) so the write path (work items,
dead letters of unresolved recipients, consent audit records) reads on its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import orjson
from prometheus_client import Counter

from bus.deadletter import dead_letter
from bus.dedup import Deduplicator
from bus.metrics import REGISTRY, ROUTING_LATENCY
from bus.producer import EventProducer
from processors.consent import ConsentRegistry
from processors.facts import Read
from processors.routing.parties import ROLE_COORDINATOR, CaseParties
from processors.routing.rules import OPPOSITION_BASIS, Decision, Lookup, Subscriptions
from processors.sla.policy import SlaPolicies
from processors.sla.scheduler import DeadlineQueue
from schemas.cases import case_ref, patient_keys
from schemas.codes import EventType
from schemas.envelope import Envelope, ingress_time
from schemas.events import build_event
from schemas.model import BusNoticeInfo
from schemas.topics import DELIVERY_STATUS, ROUTING_AUDIT, topic_for
from schemas.workitem import Channel

ROUTED = Counter(
    "carebus_routed_work_items_total", "Work items routed", ["channel"], registry=REGISTRY
)
UNRESOLVED = Counter(
    "carebus_routing_unresolved_total",
    "Recipients routing could not resolve",
    ["role"],
    registry=REGISTRY,
)
WITHHELD = Counter(
    "carebus_routing_withheld_total",
    "Deliveries routing withheld (consent, no INS), each also on care.routing.audit",
    ["channel", "reason"],
    registry=REGISTRY,
)
_JSON = [("content-type", b"application/json")]

DELIVERY_TOPIC = {
    Channel.MSSANTE: "care.delivery.mssante",
    Channel.DMP: "care.delivery.dmp",
    Channel.EPARCOURS: "care.delivery.eparcours",
}
UNRESOLVED_TOPIC_REASON = "recipient unresolved"


@dataclass
class Processors:
    """What the agents need from the outside (injected: tests and `carebus up` differ)."""

    producer: EventProducer
    lookup: Lookup
    policies: SlaPolicies
    subscriptions: Subscriptions | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    queue: DeadlineQueue = field(default_factory=DeadlineQueue)
    dedup: Deduplicator = field(default_factory=lambda: Deduplicator(200_000))
    tick_interval_s: float = 0.2
    #: how often finished cases are looked for in the tables (processors/sweep.py)
    sweep_interval_s: float = 3600.0
    #: patients' recorded sharing decisions (None: only what each event carries)
    consents: ConsentRegistry | None = None

    async def publish_decision(self, decision: Decision, cause: Envelope) -> None:
        await self.publish_decisions([(decision, cause)])

    async def publish_decisions(self, decisions: Sequence[tuple[Decision, Envelope]]) -> None:
        """Work items to their channel topics, in one pipelined write. An unresolved
        recipient is never dropped: the event is dead-lettered with the reason (replayable
        once the directory is fixed) and a delivery.failed alert goes to the coordinator."""
        batch: list[tuple[str, Envelope]] = []
        for decision, cause in decisions:
            batch += [(DELIVERY_TOPIC[i.channel], i.envelope()) for i in decision.items]
            for miss in decision.unresolved:
                UNRESOLVED.labels(miss.role).inc()
                reason = f"{UNRESOLVED_TOPIC_REASON}: {miss.role} {miss.who}: {miss.reason}"
                key, value, headers = cause.encode()
                out = dead_letter(
                    topic=topic_for(cause.type),
                    partition=-1,
                    offset=-1,
                    key=key,
                    value=value,
                    headers=headers,
                    group="carebus-routing",
                    attempts=1,
                    reason=reason,
                )
                await self.producer.send_raw(out.topic, out.key, out.value, out.headers)
                if miss.role != ROLE_COORDINATOR and cause.type != EventType.DELIVERY_FAILED:
                    alert = unresolved_alert(cause, miss.role, miss.who, reason)
                    batch.append((DELIVERY_STATUS.name, alert))
        audit = [(w, cause) for decision, cause in decisions for w in decision.audit]
        if batch:
            await self.producer.publish_many(batch)
        if audit:
            # the audit trail of consent: records, not log lines (replayable, queryable)
            at = self.clock().isoformat()
            await asyncio.gather(
                *(
                    self.producer.send_raw(
                        ROUTING_AUDIT.name, *w.record(cause.subject, cause.type, at), _JSON
                    )
                    for w, cause in audit
                )
            )
            for w, _ in audit:
                WITHHELD.labels(w.channel.value, w.reason).inc()
        now = datetime.now(UTC)  # wall clock, not self.clock: it is compared with ingress's
        for decision, cause in decisions:
            accepted = ingress_time(cause.extra_headers) if decision.items else None
            for item in decision.items:
                ROUTED.labels(item.channel.value).inc()
                if accepted is not None:
                    seconds = max(0.0, (now - accepted).total_seconds())
                    ROUTING_LATENCY.labels(item.channel.value).observe(seconds)


def with_consent(read: Read, consents: ConsentRegistry | None) -> CaseParties:
    """The event's parties, opposed if the patient's recorded decision is an opposition
    (the event's own opposition flag is kept: any opposition blocks)."""
    parties = read.parties
    if consents is None or parties.opposition:
        return parties
    standing = consents.opposition(patient_keys(read.view.bundle))
    if standing is None:
        return parties
    basis = f"{EventType.CONSENT_UPDATED} {standing.event_id}"
    return replace(parties, opposition=True, extra={**parties.extra, OPPOSITION_BASIS: basis})


def unresolved_alert(cause: Envelope, role: str, who: str, reason: str) -> Envelope:
    """delivery.failed about a recipient routing could not resolve (id derived: idempotent)."""
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{cause.id}|unresolved|{role}|{who}"))
    info = BusNoticeInfo(
        about=case_ref(cause.subject),
        text=f"Destinataire introuvable ({reason})"[:500],
        about_event=cause.id,
        recipient_id=who or role,
        channel="mssante",  # the channel the recipient could not be reached on
    )
    bundle = build_event(
        EventType.DELIVERY_FAILED, info, event_id=event_id, timestamp=datetime.now(UTC)
    )
    return cause.caused(
        id=event_id,
        type=EventType.DELIVERY_FAILED.value,
        source="urn:carebus:bus",
        data=orjson.dumps(bundle),
    )

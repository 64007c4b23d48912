"""The topic catalog: the one source of truth for names, keys, partitions and retention.

Provisioning (`carebus topics apply`), routing, the AsyncAPI export and the deployment
manifests all read this table, so a topic is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.codes import EventType

DAY_MS = 24 * 3600 * 1000


#: the broker's record limit on every topic, = the producer's max_request_size. Kafka's
#: default (~1 MB) is below what the ingresses accept (HTTP bodies up to 2 MB): a valid
#: 1.5 MB message was refused by the broker and answered 503 "retry later", forever.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    description: str
    key: str  # what the Kafka key is
    partitions: int = 6
    cleanup_policy: str = "delete"  # or "compact"
    retention_ms: int = 30 * DAY_MS  # -1 = forever
    event_types: tuple[EventType, ...] = ()
    extra_config: tuple[tuple[str, str], ...] = field(default=())

    def config(self) -> dict[str, str]:
        cfg = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "max.message.bytes": str(MAX_MESSAGE_BYTES),
            # the broker dates records, not the producer: a worker whose clock was stepped
            # over an hour ahead would otherwise have every write refused (Kafka 4's
            # message.timestamp.after.max.ms), and a wrong clock would skew retention and
            # compaction lags. Event time travels in ce_time, never in the record timestamp.
            "message.timestamp.type": "LogAppendTime",
        }
        cfg.update(self.extra_config)
        return cfg


_E = EventType

REFERRAL_EVENTS = TopicSpec(
    "care.referral.events",
    "Referral (adressage) lifecycle: GP → specialist requests, answers and outcomes.",
    key="case id (referral)",
    event_types=(
        _E.REFERRAL_REQUESTED,
        _E.REFERRAL_ACCEPTED,
        _E.REFERRAL_REJECTED,
        _E.REFERRAL_CANCELLED,
        _E.REFERRAL_COMPLETED,
    ),
)
STAY_EVENTS = TopicSpec(
    "care.stay.events",
    "Hospital stays: admissions and discharges (48 h notice, actual discharge, reverts).",
    key="case id (stay)",
    event_types=(
        _E.ADMISSION_NOTIFIED,
        _E.ADMISSION_CANCELLED,
        _E.DISCHARGE_PLANNED,
        _E.DISCHARGE_CANCELLED,
        _E.DISCHARGE_COMPLETED,
        _E.DISCHARGE_REVERTED,
    ),
)
EXPERTISE_EVENTS = TopicSpec(
    "care.expertise.events",
    "Tele-expertise requests and the expert's answer or refusal.",
    key="case id (expertise)",
    event_types=(_E.EXPERTISE_REQUESTED, _E.EXPERTISE_ANSWERED, _E.EXPERTISE_DECLINED),
)
CONSENT_EVENTS = TopicSpec(
    "care.consent.events",
    "Patients' sharing decisions (opposition recorded or lifted), latest per patient.",
    key="patient pseudonym (case id consent/…)",
    partitions=3,
    cleanup_policy="compact",
    retention_ms=-1,
    event_types=(_E.CONSENT_UPDATED,),
    # superseded decisions stay readable for a year before compaction removes them
    extra_config=(("min.compaction.lag.ms", str(365 * DAY_MS)),),
)
ROUTING_AUDIT = TopicSpec(
    "care.routing.audit",
    "Why routing withheld a delivery (consent, no INS): one record per decision, no patient "
    "data.",
    key="case id",
    partitions=3,
    retention_ms=365 * DAY_MS,
)
SLA_EVENTS = TopicSpec(
    "care.sla.events",
    "Deadlines that fired: reminders, escalations, breaches, late discharge notices, J+7.",
    key="case id",
    event_types=(
        _E.SLA_REMINDER,
        _E.SLA_ESCALATED,
        _E.SLA_BREACHED,
        _E.DISCHARGE_LATE_NOTICE,
        _E.DISCHARGE_FOLLOWUP_DUE,
    ),
)
SLA_TICKS = TopicSpec(
    "care.sla.ticks",
    "Internal: due deadlines, sent by each worker's timer to the case's partition owner.",
    key="case id",
    retention_ms=1 * DAY_MS,
)
DELIVERY_STATUS = TopicSpec(
    "care.delivery.status",
    "What happened to each delivery: sent, failed, read (MDN, platform ack).",
    key="case id",
    event_types=(_E.DELIVERY_SENT, _E.DELIVERY_FAILED, _E.DELIVERY_READ),
)
DELIVERY_MSSANTE = TopicSpec(
    "care.delivery.mssante",
    "Work items for the MSSanté secure mail adapter: one per recipient mailbox.",
    key="case id",
)
DELIVERY_DMP = TopicSpec(
    "care.delivery.dmp",
    "Work items for the shared record adapter (IHE MHD ITI-65).",
    key="case id",
)
DELIVERY_EPARCOURS = TopicSpec(
    "care.delivery.eparcours",
    "Work items for e-parcours platforms (FHIR Subscription rest-hook notifications).",
    key="case id",
)
REJECTED_INPUT = TopicSpec(
    "care.rejected-input",
    "Every refused inbound message: original bytes, sender, reason; kept for audit/replay.",
    key="sender id",
    partitions=3,
    retention_ms=90 * DAY_MS,
)
DEAD_LETTER = TopicSpec(
    "care.deadletter",
    "Events a consumer could not process after its retries, with the reason and origin.",
    key="original key",
    partitions=3,
    retention_ms=90 * DAY_MS,
)
DIRECTORY = TopicSpec(
    "care.directory",
    "Practitioner/organisation directory (Annuaire Santé import), latest entry per id.",
    key="RPPS / FINESS identifier",
    partitions=3,
    cleanup_policy="compact",
    retention_ms=-1,
)
SUBSCRIPTIONS = TopicSpec(
    "care.subscriptions",
    "e-parcours FHIR Subscriptions, latest state per subscription id.",
    key="subscription id",
    partitions=1,
    cleanup_policy="compact",
    retention_ms=-1,
)

CATALOG: tuple[TopicSpec, ...] = (
    REFERRAL_EVENTS,
    STAY_EVENTS,
    EXPERTISE_EVENTS,
    CONSENT_EVENTS,
    SLA_EVENTS,
    SLA_TICKS,
    DELIVERY_STATUS,
    DELIVERY_MSSANTE,
    DELIVERY_DMP,
    DELIVERY_EPARCOURS,
    REJECTED_INPUT,
    DEAD_LETTER,
    DIRECTORY,
    SUBSCRIPTIONS,
    ROUTING_AUDIT,
)

BY_NAME: dict[str, TopicSpec] = {t.name: t for t in CATALOG}
TOPIC_FOR_EVENT: dict[EventType, TopicSpec] = {e: t for t in CATALOG for e in t.event_types}


def topic_for(event_type: EventType | str) -> str:
    """The topic an event of this type is published to."""
    return TOPIC_FOR_EVENT[EventType(event_type)].name


def _check_catalog() -> None:
    missing = set(EventType) - set(TOPIC_FOR_EVENT)
    if missing:  # pragma: no cover - guarded at import so a new event type cannot be unrouted
        raise RuntimeError(f"event types without a topic: {sorted(missing)}")


_check_catalog()

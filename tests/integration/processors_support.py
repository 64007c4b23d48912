"""Shared by the processor tests: events as the ingress publishes them, the directory as
routing sees it, and the faust processors run in-process with given SLA policies."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bus.producer import EventProducer
from bus.settings import Settings
from processors.app import SOURCE_TOPICS, Processors
from processors.consent import ConsentRegistry
from processors.runner import run_processors
from processors.sla.policy import SlaPolicies
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.topics import CATALOG
from schemas.validate import validate_message


@dataclasses.dataclass
class Pro:
    mailbox: str | None


@dataclasses.dataclass
class Territory:
    id: str = "cpts-bords-allier"
    name: str = "CPTS des Bords d'Allier"
    coordinator_name: str = "Coordination CPTS"
    coordinator_mailbox: str = "coordination@cpts-ba.mssante.fr"


class Lookup:
    """The directory as routing sees it (the real one is a compacted-topic table)."""

    def practitioner(self, rpps: str) -> Pro | None:
        return None  # mailboxes come from the messages in these tests

    def territory_for(self, finess: str | None, postcode: str | None) -> Territory | None:
        return Territory() if (finess or postcode) else None


def envelope(et: EventType, info: object) -> Envelope:
    """An event as the ingress would publish it (validated Bundle, case id as key)."""
    bundle = build_event(et, info, timestamp=datetime.now(UTC))
    msg = validate_message(orjson.dumps(bundle))
    return Envelope(
        id=msg.event_id,
        type=et.value,
        source="urn:test",
        subject=msg.case_id,
        data=msg.raw,
        time=msg.timestamp,
    )


@contextlib.asynccontextmanager
async def processors_running(
    bootstrap: str,
    settings: Settings,
    policies: SlaPolicies,
    prefix: str,
    consents: ConsentRegistry | None = None,
    sweep_interval_s: float = 3600.0,
    app_id: str | None = None,
) -> AsyncIterator[Processors]:
    """The faust processors in this process, own app id (consumer group) per test."""
    producer = EventProducer(bootstrap, settings.kafka)
    await producer.start()
    try:
        ctx = Processors(
            producer=producer,
            lookup=Lookup(),
            policies=policies,
            tick_interval_s=0.1,
            consents=consents,
            sweep_interval_s=sweep_interval_s,
        )
        app_id = app_id or f"{prefix}-{uuid.uuid4().hex[:6]}"
        async with run_processors(settings, bootstrap, ctx, app_id=app_id):
            yield ctx
    finally:
        await producer.stop()


async def start_at_the_end(bootstrap: str, app_id: str) -> None:
    """Commit the end of every topic the processors consume for `app_id`: a group of a
    test's own then starts with no backlog. On the session broker, reading the earlier
    suites' events from `earliest` takes longer than the deadlines a test times."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=app_id)
    await consumer.start()
    try:
        parts = [
            TopicPartition(spec.name, p)
            for spec in CATALOG
            if spec.name in SOURCE_TOPICS
            for p in range(spec.partitions)
        ]
        assert {tp.topic for tp in parts} == set(SOURCE_TOPICS)
        consumer.assign(parts)
        await consumer.commit(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()

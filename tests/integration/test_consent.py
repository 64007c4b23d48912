"""A patient's recorded opposition (consent.updated) steers routing on the real broker.

The consent event travels like any inbound event (validated, keyed by the patient
pseudonym, on the compacted consent topic); every routing worker folds that topic; an
event about the patient that carries no opposition itself is then withheld from the
shared record, and the decision is kept as a record on care.routing.audit that cites the
consent event and carries no patient data. Lifting the opposition restores filing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from bus.settings import Settings
from processors.app import Processors
from processors.consent import ConsentFeed
from processors.sla.policy import SlaPolicies
from schemas.codes import EventType
from schemas.rules import nir_key
from schemas.samples import consent_info, stay_info
from schemas.topics import DELIVERY_DMP, DELIVERY_MSSANTE, ROUTING_AUDIT, topic_for
from tests.integration.processors_support import envelope, processors_running

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def fresh_ins() -> str:
    """A valid INS-NIR nobody else in the session uses (consent state is per patient)."""
    nir13 = f"1{random.randint(40, 99)}{random.randint(1, 12):02d}75{random.randint(1, 999):03d}"
    nir13 += f"{random.randint(1, 999):03d}"
    return f"{nir13}{nir_key(nir13):02d}"


@pytest.fixture
async def feed(catalog_applied: str, settings: Settings) -> AsyncIterator[ConsentFeed]:
    consent_feed = ConsentFeed(catalog_applied, settings.kafka)
    await consent_feed.start()
    await consent_feed.ready(30)
    try:
        yield consent_feed
    finally:
        await consent_feed.stop()


@pytest.fixture
async def processors(
    catalog_applied: str, settings: Settings, feed: ConsentFeed
) -> AsyncIterator[Processors]:
    async with processors_running(
        catalog_applied, settings, SlaPolicies(), "test-consent", consents=feed.registry
    ) as ctx:
        yield ctx


async def records_for(bootstrap: str, topic: str, key: str) -> list:
    """Every record of `topic` with this key, read up to the current end offsets."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = consumer.assignment() or set()
        while not parts:
            await asyncio.sleep(0.05)
            parts = consumer.assignment()
        ends = await consumer.end_offsets(list(parts))
        got = []
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=500)
            for rs in batch.values():
                got += [r for r in rs if r.key == key.encode()]
        return got
    finally:
        await consumer.stop()


async def until(check, timeout: float = 30.0):
    end = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < end:
        if found := await check():
            return found
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_recorded_opposition_withholds_the_record_then_lifting_restores_it(
    processors: Processors, feed: ConsentFeed, catalog_applied: str
) -> None:
    ins = fresh_ins()
    base = stay_info()
    patient = dataclasses.replace(base.patient, ins=ins, sharing_opposition=False)
    now = datetime.now(UTC)
    oppose = envelope(
        EventType.CONSENT_UPDATED,
        dataclasses.replace(consent_info(), patient=patient, recorded_at=now - timedelta(hours=1)),
    )
    await processors.producer.publish(topic_for(oppose.type), oppose)
    key = oppose.subject.rpartition("|")[2]
    assert ins not in oppose.subject  # the key is a pseudonym
    await until(lambda: asyncio.sleep(0, feed.registry.opposition([key])))

    # the hospital's discharge carries no opposition itself: the recorded one applies
    stay1 = dataclasses.replace(
        base, patient=patient, visit_number=f"V{uuid.uuid4().hex[:10]}", discharged_at=now
    )
    done = envelope(EventType.DISCHARGE_COMPLETED, stay1)
    await processors.producer.publish(topic_for(done.type), done)
    audit = await until(lambda: records_for(catalog_applied, ROUTING_AUDIT.name, done.subject))
    record = orjson.loads(audit[0].value)
    assert record["event_id"] == done.id and record["channel"] == "dmp"
    assert record["reason"] == "patient-opposes-sharing"
    assert record["basis"] == f"consent.updated {oppose.id}"
    assert ins not in audit[0].value.decode() and patient.family not in audit[0].value.decode()
    # the audit record is written after the batch's work items: they are all there now
    mails = await records_for(catalog_applied, DELIVERY_MSSANTE.name, done.subject)
    assert mails, "the GP and the team are still told: consent is about sharing, not care"
    assert await records_for(catalog_applied, DELIVERY_DMP.name, done.subject) == []

    # the patient lifts the opposition: the next discharge letter is filed again
    lift = envelope(
        EventType.CONSENT_UPDATED,
        dataclasses.replace(consent_info(opposes_sharing=False), patient=patient, recorded_at=now),
    )
    await processors.producer.publish(topic_for(lift.type), lift)
    await until(lambda: asyncio.sleep(0, feed.registry.opposition([key]) is None))
    stay2 = dataclasses.replace(stay1, visit_number=f"V{uuid.uuid4().hex[:10]}")
    again = envelope(EventType.DISCHARGE_COMPLETED, stay2)
    await processors.producer.publish(topic_for(again.type), again)
    filed = await until(lambda: records_for(catalog_applied, DELIVERY_DMP.name, again.subject))
    assert len(filed) == 1

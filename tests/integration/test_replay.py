"""`carebus replay`: dead letters go back once, rejected inputs are re-validated."""

from __future__ import annotations

import orjson
import pytest

from bus.consumer import ConsumerConfig, EventConsumer
from bus.deadletter import is_replayed, rejected_input
from bus.producer import EventProducer
from bus.replay import replay
from bus.settings import Settings
from schemas.envelope import Envelope
from schemas.outcome import Issue, IssueCode
from tests.integration.test_broker_contract import make_topic, read_all, run_until, sample_env

pytestmark = pytest.mark.kafka


async def test_dead_letter_replayed_once_to_its_topic(
    catalog_applied: str, settings: Settings, unique: str
) -> None:
    bootstrap = catalog_applied
    topic = await make_topic(bootstrap, f"t.replay.{unique}", partitions=1)
    env = sample_env("case-r")

    async def failing(_env: Envelope, _rec: object) -> None:
        raise RuntimeError("downstream was down")

    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish(topic, env)
        cfg = ConsumerConfig(group_id=f"g.{unique}", topics=(topic,), retries=0)
        consumer = EventConsumer(bootstrap, settings.kafka, cfg, failing, producer)
        await consumer.start()
        await run_until(consumer, lambda: consumer.dead_lettered == 1)
        await consumer.stop()

    first = await replay(bootstrap, settings.kafka, topic_filter=topic)
    assert first.replayed == 1
    again = await replay(bootstrap, settings.kafka, topic_filter=topic)
    assert again.replayed == 0  # the replay group remembers
    records = await read_all(bootstrap, topic, 2)
    assert len(records) == 2  # the original and its replay
    back = Envelope.decode(records[1].key, records[1].value, records[1].headers)
    assert back.id == env.id and back.data == env.data and back.type == env.type
    assert is_replayed(records[1].headers)  # dedup lets an operator's replay through
    assert not any(n.startswith("dlq_") for n, _ in records[1].headers)


async def test_rejected_input_replayed_only_if_now_valid(
    catalog_applied: str, settings: Settings
) -> None:
    from schemas.samples import sample_bundle

    bootstrap = catalog_applied
    good = orjson.dumps(sample_bundle("expertise.declined"))
    bad = b'{"resourceType": "Bundle"'
    issue = Issue(IssueCode.TRANSIENT, "validator bug, since fixed")
    async with EventProducer(bootstrap, settings.kafka) as producer:
        for raw in (good, bad):
            out = rejected_input(
                raw=raw,
                channel="http",
                sender="client:test",
                issues=[issue],
                content_type="application/fhir+json",
            )
            await producer.send_raw(out.topic, out.key, out.value, out.headers)
    report = await replay(bootstrap, settings.kafka, source="rejected")
    assert report.replayed >= 1
    assert report.still_invalid >= 1
    assert any("JSON" in r or "json" in r for r in report.reasons)


async def test_refusals_about_rights_or_state_are_not_replayed(
    catalog_applied: str, settings: Settings
) -> None:
    from schemas.samples import sample_bundle

    raw = orjson.dumps(sample_bundle("referral.completed"))
    issue = Issue(IssueCode.BUSINESS_RULE, "illegal transition rejected → completed")
    async with EventProducer(catalog_applied, settings.kafka) as producer:
        out = rejected_input(
            raw=raw,
            channel="http",
            sender="client:x",
            issues=[issue],
            content_type="application/fhir+json",
        )
        await producer.send_raw(out.topic, out.key, out.value, out.headers)
    report = await replay(catalog_applied, settings.kafka, source="rejected")
    assert report.skipped >= 1 and report.replayed == 0


async def test_status_reports_topics_and_lag(
    catalog_applied: str, settings: Settings, unique: str
) -> None:
    from aiokafka import AIOKafkaConsumer

    from bus.status import status

    async with EventProducer(catalog_applied, settings.kafka) as producer:
        for i in range(3):
            await producer.publish("care.expertise.events", sample_env(f"case-{unique}", i))
    group = f"g.status.{unique}"
    consumer = AIOKafkaConsumer(
        "care.expertise.events",
        bootstrap_servers=catalog_applied,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    for _ in range(50):
        await consumer.getmany(timeout_ms=200)
        if consumer.assignment():
            break
    await consumer.commit()  # commits the end: zero lag
    await consumer.stop()
    async with EventProducer(catalog_applied, settings.kafka) as producer:
        await producer.publish("care.expertise.events", sample_env(f"case-{unique}", 9))
    fills, lags = await status(catalog_applied, settings.kafka)
    assert {f.topic for f in fills} >= {"care.expertise.events", "care.deadletter"}
    assert next(f for f in fills if f.topic == "care.expertise.events").records >= 4
    mine = [g for g in lags if g.group == group]
    assert [(g.topic, g.lag) for g in mine] == [("care.expertise.events", 1)]

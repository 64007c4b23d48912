"""Contract of the broker port, run against a real Apache Kafka (embedded or given)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bus.consumer import ConsumerConfig, EventConsumer, PermanentError
from bus.deadletter import header_text, is_replayed, replay_target
from bus.dedup import Deduplicator
from bus.producer import EventProducer
from bus.provisioning import apply_topics, list_state
from bus.settings import Settings
from schemas.envelope import Envelope, new_event_id
from schemas.topics import CATALOG, DEAD_LETTER

pytestmark = pytest.mark.kafka


async def make_topic(bootstrap: str, name: str, partitions: int = 3) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 20.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list = []
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(out) < expect and loop.time() < end:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


def sample_env(case: str, n: int = 0, **kw: object) -> Envelope:
    return Envelope(
        id=new_event_id(),
        type="referral.requested",
        source="urn:test:producer",
        subject=case,
        data=b'{"resourceType":"Bundle","n":%d}' % n,
        **kw,  # type: ignore[arg-type]
    )


async def run_until(consumer: EventConsumer, cond, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond() and loop.time() < end:
        await consumer.poll_once()
    assert cond(), "condition not reached before timeout"


class TestBrokerContract:
    async def test_round_trip_keeps_key_value_and_headers(
        self, bootstrap: str, settings: Settings, unique: str
    ) -> None:
        topic = await make_topic(bootstrap, f"t.roundtrip.{unique}")
        env = sample_env("referral/urn:x|42", extra_headers=(("x-extra", b"\x00\xffbin"),))
        async with EventProducer(bootstrap, settings.kafka) as producer:
            meta = await producer.publish(topic, env)
        assert meta.offset >= 0
        (rec,) = await read_all(bootstrap, topic, 1)
        assert rec.key == b"referral/urn:x|42"
        assert rec.value == env.data
        back = Envelope.decode(rec.key, rec.value, rec.headers)
        assert back == env
        assert ("x-extra", b"\x00\xffbin") in list(rec.headers)

    async def test_one_case_stays_on_one_partition_in_order(
        self, bootstrap: str, settings: Settings, unique: str
    ) -> None:
        topic = await make_topic(bootstrap, f"t.order.{unique}", partitions=6)
        envs = [sample_env(f"case-{i % 3}", i) for i in range(30)]
        async with EventProducer(bootstrap, settings.kafka) as producer:
            metas = await producer.publish_many((topic, e) for e in envs)
        by_case: dict[str, set[int]] = {}
        for env, meta in zip(envs, metas, strict=True):
            by_case.setdefault(env.subject, set()).add(meta.partition)
        assert all(len(p) == 1 for p in by_case.values())
        records = await read_all(bootstrap, topic, 30)
        for case in by_case:
            ns = [r.value for r in records if r.key == case.encode()]
            assert ns == [e.data for e in envs if e.subject == case]

    async def test_topic_provisioning_is_idempotent(
        self, bootstrap: str, settings: Settings
    ) -> None:
        await apply_topics(bootstrap, settings.kafka)
        second = await apply_topics(bootstrap, settings.kafka)
        assert {c.topic for c in second} == {s.name for s in CATALOG}
        assert all(c.action == "unchanged" for c in second), second
        state = await list_state(bootstrap, settings.kafka)
        for spec in CATALOG:
            assert state[spec.name].partitions == spec.partitions
            assert state[spec.name].config["cleanup.policy"] == spec.cleanup_policy
            assert state[spec.name].config["retention.ms"] == str(spec.retention_ms)

    async def test_commit_after_processing_and_dedup_on_replay(
        self, catalog_applied: str, settings: Settings, unique: str
    ) -> None:
        bootstrap = catalog_applied
        topic = await make_topic(bootstrap, f"t.commit.{unique}", partitions=1)
        seen: list[str] = []

        async def handler(env: Envelope, _rec: object) -> None:
            seen.append(env.id)

        envs = [sample_env("c1", i) for i in range(5)]
        dup = envs[2]  # the same event published twice (a producer retry)
        async with EventProducer(bootstrap, settings.kafka) as producer:
            await producer.publish_many([(topic, e) for e in envs] + [(topic, dup)])
            dedup = Deduplicator()
            cfg = ConsumerConfig(group_id=f"g.{unique}", topics=(topic,))
            c1 = EventConsumer(bootstrap, settings.kafka, cfg, handler, producer, dedup)
            await c1.start()
            await run_until(c1, lambda: c1.processed + c1.duplicates >= 6)
            await c1.stop()
            assert seen == [e.id for e in envs]  # the duplicate was dropped
            assert c1.duplicates == 1
            # committed: a new consumer in the same group starts after the processed records
            more = sample_env("c1", 99)
            await producer.publish(topic, more)
            c2 = EventConsumer(bootstrap, settings.kafka, cfg, handler, producer, Deduplicator())
            await c2.start()
            await run_until(c2, lambda: c2.processed >= 1)
            await c2.stop()
        assert seen[-1] == more.id and len(seen) == 6

    async def test_poison_is_dead_lettered_and_never_blocks(
        self, catalog_applied: str, settings: Settings, unique: str
    ) -> None:
        bootstrap = catalog_applied
        topic = await make_topic(bootstrap, f"t.poison.{unique}", partitions=1)
        bad = sample_env("c", 1)
        good = sample_env("c", 2)
        ok: list[str] = []

        async def handler(env: Envelope, _rec: object) -> None:
            if env.id == bad.id:
                raise RuntimeError("effect keeps failing")
            ok.append(env.id)

        async with EventProducer(bootstrap, settings.kafka) as producer:
            # a record that is not a CareBus event at all, then a failing one, then a good one
            await producer.send_raw(topic, b"k", b"\x00not-fhir", [("junk", b"1")])
            await producer.publish(topic, bad)
            await producer.publish(topic, good)
            cfg = ConsumerConfig(group_id=f"g.{unique}", topics=(topic,), retries=2, backoff_s=0.01)
            consumer = EventConsumer(bootstrap, settings.kafka, cfg, handler, producer)
            await consumer.start()
            await run_until(consumer, lambda: consumer.processed >= 1)
            await consumer.stop()
        assert ok == [good.id]
        assert consumer.dead_lettered == 2
        dlq = [
            r
            for r in await read_all(bootstrap, DEAD_LETTER.name, 10_000, timeout=5)
            if header_text(r.headers, "dlq_topic") == topic
        ]
        assert len(dlq) == 2
        raw, failing = sorted(dlq, key=lambda r: int(header_text(r.headers, "dlq_offset")))
        assert raw.value == b"\x00not-fhir" and raw.key == b"k"
        assert "not a CareBus event" in header_text(raw.headers, "dlq_reason")
        assert failing.value == bad.data
        assert "RuntimeError: effect keeps failing" in header_text(failing.headers, "dlq_reason")
        assert header_text(failing.headers, "dlq_attempts") == "3"
        # replay: original topic and headers, dlq_* removed, envelope intact
        target, headers = replay_target(failing.headers)
        assert target == topic
        back = Envelope.decode(failing.key, failing.value, headers)
        assert (back.id, back.type, back.data, back.subject) == (
            bad.id,
            bad.type,
            bad.data,
            bad.subject,
        )
        assert is_replayed(headers)

    async def test_permanent_error_skips_retries(
        self, catalog_applied: str, settings: Settings, unique: str
    ) -> None:
        bootstrap = catalog_applied
        topic = await make_topic(bootstrap, f"t.perm.{unique}", partitions=1)
        calls = 0

        async def handler(env: Envelope, _rec: object) -> None:
            nonlocal calls
            calls += 1
            raise PermanentError("recipient unknown")

        async with EventProducer(bootstrap, settings.kafka) as producer:
            await producer.publish(topic, sample_env("c"))
            cfg = ConsumerConfig(group_id=f"g.{unique}", topics=(topic,), retries=5)
            consumer = EventConsumer(bootstrap, settings.kafka, cfg, handler, producer)
            await consumer.start()
            await run_until(consumer, lambda: consumer.dead_lettered >= 1)
            await consumer.stop()
        assert calls == 1

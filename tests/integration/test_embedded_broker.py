"""The embedded broker is real Kafka: acknowledged data and offsets survive a crash."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from bus.embedded import EmbeddedKafka
from bus.producer import EventProducer
from bus.provisioning import apply_topics
from bus.settings import KafkaSettings, Settings
from schemas.envelope import Envelope, new_event_id
from schemas.topics import REFERRAL_EVENTS

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("CAREBUS_KAFKA__BOOTSTRAP")),
        reason="restarts the embedded broker; an external cluster is not ours to kill",
    ),
]


def envs(n: int) -> list[Envelope]:
    return [
        Envelope(
            id=new_event_id(),
            type="referral.requested",
            source="urn:t",
            subject=f"referral/urn:t|{i % 4}",
            data=b'{"n":%d}' % i,
        )
        for i in range(n)
    ]


async def consume_from_committed(bootstrap: str, group: str, expect: int) -> list:
    consumer = AIOKafkaConsumer(
        REFERRAL_EVENTS.name,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list = []
    try:
        for _ in range(60):
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
            if len(out) >= expect:
                break
        if out:
            await consumer.commit()
    finally:
        await consumer.stop()
    return out


@pytest.mark.parametrize("crash", [True, False], ids=["sigkill", "sigterm"])
async def test_data_and_offsets_survive_restart(tmp_path: Path, crash: bool) -> None:
    settings = Settings(data_dir=tmp_path / "data", kafka=KafkaSettings(embedded_port=0))
    broker = EmbeddedKafka(settings)
    bootstrap = await broker.start()
    await apply_topics(bootstrap, settings.kafka)
    first, second = envs(40), envs(25)
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish_many((REFERRAL_EVENTS.name, e) for e in first)
    got = await consume_from_committed(bootstrap, "g-restart", len(first))
    assert sorted(r.value for r in got) == sorted(e.data for e in first)
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish_many((REFERRAL_EVENTS.name, e) for e in second)
    cluster_id = broker.paths.cluster_id.read_text()

    if crash:
        broker.kill()  # SIGKILL: no flush, no controlled shutdown
    else:
        await broker.stop()
    assert not broker.running

    broker2 = EmbeddedKafka(settings)  # same data dir, possibly another port
    bootstrap2 = await broker2.start()
    try:
        assert broker2.paths.cluster_id.read_text() == cluster_id
        # the group resumes after what it committed: only the second batch comes back
        rest = await consume_from_committed(bootstrap2, "g-restart", len(second))
        assert sorted(r.value for r in rest) == sorted(e.data for e in second)
        # and every acknowledged record is still in the log
        everyone = await consume_from_committed(bootstrap2, "g-fresh", 65)
        assert len(everyone) == 65
        values = {r.value for r in everyone}
        assert values == {e.data for e in first + second}
        assert all(Envelope.decode(r.key, r.value, r.headers).id for r in everyone)
    finally:
        await broker2.stop()


async def test_broker_start_fails_clearly_when_port_taken(tmp_path: Path) -> None:
    import socket

    from bus.embedded import EmbeddedKafkaError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        settings = Settings(data_dir=tmp_path, kafka=KafkaSettings(embedded_port=port))
        with pytest.raises(EmbeddedKafkaError, match="is taken"):
            await EmbeddedKafka(settings).start()

"""Shared plumbing of the outbound fault tests (relay, record, webhook faults).

The work items go through the real path: published on a delivery topic of the real
broker, consumed by the production `DeliveryWorker.consumer(...)` (commit after
processing, dedup, dead letters), delivered by the real adapter to a real server the test
switches between failure modes. Each test uses a topic of its own (same partitioning as
the catalog's delivery topics) so that work items other tests leave on the session
broker's delivery topics cannot reach this test's receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from adapters.bundle_view import BundleView
from adapters.delivery import DeliveryWorker, RetryPolicy
from bus.metrics import REGISTRY
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from schemas.builders.common import EXT_ATTEMPT
from schemas.envelope import Envelope
from schemas.topics import DELIVERY_STATUS
from tests.reliability import invariant as inv

#: fast retries, enough attempts to ride out the faults the tests inject one by one
POLICY = RetryPolicy(max_attempts=12, base_s=0.05, max_s=0.3)


def attempts(channel: str, result: str) -> float:
    """carebus_delivery_attempts_total{channel, result} (result: sent | failed | retry)."""
    value = REGISTRY.get_sample_value(
        "carebus_delivery_attempts_total", {"channel": channel, "result": result}
    )
    return value or 0.0


async def wait_until(cond: Callable[[], bool], within: float, what: str) -> None:
    end = time.monotonic() + within
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.02)


async def new_topic(bootstrap: str, kafka: KafkaSettings, prefix: str, partitions: int = 3) -> str:
    name = f"{prefix}.rel-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, kafka.replication_factor)])
    finally:
        await admin.close()
    # the consumer group must see the partitions when it first joins (aiokafka assigns
    # nothing for a topic without metadata and does not come back to it soon)
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap, **kafka.client_options())
    await probe.start()
    try:
        found = await inv._partitions(probe, name)
    finally:
        await probe.stop()
    assert len(found) == partitions, f"topic {name} has no metadata"
    return name


@contextlib.asynccontextmanager
async def consuming(
    worker: DeliveryWorker, bootstrap: str, kafka: KafkaSettings, topic: str
) -> AsyncIterator[None]:
    """The worker's production consumer on `topic`, running until the block exits."""
    consumer = worker.consumer(bootstrap, kafka, topic)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        task.cancel()
        await consumer.stop()


def _ext(resource: dict, url: str) -> dict:
    return next((e for e in resource.get("extension", []) or [] if e.get("url") == url), {})


async def statuses(
    bootstrap: str, kafka: KafkaSettings, about: Iterable[str], since: dict
) -> dict[str, tuple[str, int, str]]:
    """{event id: (delivery.sent | delivery.failed, attempt count, text)} for the status
    events about these input events published since `since`."""
    wanted = set(about)
    recs = await inv.read_topics(bootstrap, kafka, since=since, topics=[DELIVERY_STATUS.name])
    out: dict[str, tuple[str, int, str]] = {}
    for r in recs[DELIVERY_STATUS.name]:
        env = Envelope.decode(r.key, r.value, r.headers)
        failure = inv.failure_of(env)
        if failure.about_event not in wanted:
            continue
        focus = BundleView(orjson.loads(env.data)).focus
        attempt = int(_ext(focus, EXT_ATTEMPT).get("valuePositiveInt", 0))
        text = str(focus.get("payload", [{}])[0].get("contentString", "")) if focus else ""
        out.setdefault(failure.about_event, (env.type, attempt, text))
    return out


async def publish_items(
    producer: EventProducer, topic: str, items: Iterable[object]
) -> list[object]:
    out = []
    for item in items:
        await producer.publish(topic, item.envelope())  # type: ignore[attr-defined]
        out.append(item)
    return out

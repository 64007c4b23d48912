"""Concurrent delivery on a real broker: the real `DeliveryWorker` and `EventConsumer`
(commit after the whole batch, dedup, status events on care.delivery.status), driven by a
channel whose deliveries the test controls (held, slowed, failed) and observes.

What must hold with `concurrency` > 1: items of one key (one case) are delivered one
after the other in offset order, other keys meanwhile; never more than `concurrency`
deliveries at once; no offset is committed while an earlier item of the batch is still
unfinished, however many later items are done; a key waiting out a retry backoff does
not hold a slot, so the other keys go on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from adapters.delivery import DeliveryWorker, Outcome, RetryPolicy
from bus.consumer import EventConsumer
from bus.producer import EventProducer
from bus.settings import Settings
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

pytestmark = pytest.mark.kafka

CASE = "referral/https://carebus.fr/fhir/sid/referral|ADR-CONC-{}"


def item(case: str, n: int) -> WorkItem:
    event_id = str(uuid.uuid4())
    bundle = sample_bundle("referral.requested", event_id=event_id)
    bundle["_test_seq"] = n  # read back by the channel: the item's rank in its case
    env = Envelope(
        id=event_id,
        type="referral.requested",
        source="urn:test:producer",
        subject=CASE.format(case),
        data=orjson.dumps(bundle),
    )
    who = Recipient(RecipientKind.PRACTITIONER, "10012345673", f"dr-{case}@test.mssante.fr")
    return WorkItem(env, Channel.MSSANTE, who)


@dataclass
class Step:
    case: str
    n: int
    what: str  # start | end
    t: float


class ScriptedChannel:
    """A `ChannelAdapter` whose behaviour per (case, n) is a coroutine the test gives."""

    def __init__(self, behave: Callable[[str, int, int], object]) -> None:
        self.name = f"conc-{uuid.uuid4().hex[:8]}"
        self.behave = behave
        self.log: list[Step] = []
        self.attempts: dict[tuple[str, int], int] = {}
        self.in_flight = 0
        self.max_in_flight = 0

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome:
        case, n = item.event.subject.rpartition("-")[2], int(bundle["_test_seq"])
        attempt = self.attempts[case, n] = self.attempts.get((case, n), 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.log.append(Step(case, n, "start", time.monotonic()))
        try:
            outcome = await self.behave(case, n, attempt)  # type: ignore[misc]
        finally:
            self.in_flight -= 1
        if outcome.status == "sent":
            self.log.append(Step(case, n, "end", time.monotonic()))
        return outcome

    def ends(self, case: str | None = None) -> list[Step]:
        return [s for s in self.log if s.what == "end" and (case is None or s.case == case)]


async def fresh_topic(bootstrap: str, unique: str) -> str:
    name = f"t.deliver.{unique}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()
    return name


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """The group's committed offset on partition 0 of `topic` (-1: nothing committed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return next((o.offset for tp, o in offsets.items() if tp.topic == topic), -1)


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"not reached in {timeout:.0f} s: {what}"
        await asyncio.sleep(0.01)


async def run_consumer(consumer: EventConsumer, stop: asyncio.Event) -> None:
    await consumer.start()
    try:
        await consumer.run(stop)
    finally:
        await consumer.stop()


async def test_keys_run_in_parallel_in_order_and_commit_waits_for_the_whole_batch(
    catalog_applied: str, settings: Settings, unique: str
) -> None:
    bootstrap = catalog_applied
    topic = await fresh_topic(bootstrap, unique)
    gate = asyncio.Event()

    async def behave(case: str, n: int, attempt: int) -> Outcome:
        if (case, n) == ("slow", 0):
            await gate.wait()  # the slow recipient: held until the test says so
        else:
            await asyncio.sleep(0.002 * (n % 3 + 1))
        return Outcome.sent("ok")

    channel = ScriptedChannel(behave)
    fast = [f"k{i}" for i in range(6)]
    # round robin, the slow case first: its item 0 is offset 0, everything else after it
    order = [(c, n) for n in range(4) for c in ("slow", *fast) if not (c == "slow" and n > 2)]
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish_many([(topic, item(c, n).envelope()) for c, n in order])
        worker = DeliveryWorker(channel, producer)
        consumer = worker.consumer(bootstrap, settings.kafka, topic, concurrency=4)
        group = consumer.config.group_id
        stop = asyncio.Event()
        task = asyncio.create_task(run_consumer(consumer, stop))
        try:
            fast_items = len(order) - 3
            await wait_for(lambda: len(channel.ends()) >= fast_items, what="the other cases")
            # every other case delivered, the slow case still on its first item ...
            assert {s.case for s in channel.ends()} == set(fast)
            assert [(s.case, s.n) for s in channel.log if s.case == "slow"] == [("slow", 0)]
            # ... so nothing is committed: offset 0 is not finished
            await asyncio.sleep(0.3)
            assert await committed(bootstrap, group, topic) == -1
            gate.set()
            await wait_for(lambda: len(channel.ends()) == len(order), what="the slow case")
            await wait_for(lambda: consumer.processed == len(order), what="processed count")
            end = time.monotonic() + 10
            while await committed(bootstrap, group, topic) != len(order):
                assert time.monotonic() < end, "the finished batch was not committed"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    for case in ("slow", *fast):
        steps = [(s.n, s.what) for s in channel.log if s.case == case]
        count = 3 if case == "slow" else 4
        # strictly one after the other, in offset order: start 0, end 0, start 1, end 1 ...
        assert steps == [(n, w) for n in range(count) for w in ("start", "end")], (case, steps)
    assert 2 <= channel.max_in_flight <= 4
    assert consumer.dead_lettered == 0


async def test_a_key_in_backoff_gives_its_slot_to_the_others(
    catalog_applied: str, settings: Settings, unique: str
) -> None:
    bootstrap = catalog_applied
    topic = await fresh_topic(bootstrap, unique)

    async def behave(case: str, n: int, attempt: int) -> Outcome:
        if case in ("flaky1", "flaky2") and attempt <= 2:
            return Outcome.transient("451 mailbox busy")
        await asyncio.sleep(0.005)
        return Outcome.sent("ok")

    class FixedBackoff(RetryPolicy):
        def delay(self, attempt: int) -> float:
            return 0.5

    channel = ScriptedChannel(behave)
    order = [("flaky1", 0), ("flaky2", 0)] + [("steady", n) for n in range(8)]
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish_many([(topic, item(c, n).envelope()) for c, n in order])
        worker = DeliveryWorker(channel, producer, retry=FixedBackoff(max_attempts=4))
        # two slots, both taken first by the flaky cases: without giving them back during
        # the backoff, the steady case would wait for one of them to succeed (≥ 1 s)
        consumer = worker.consumer(bootstrap, settings.kafka, topic, concurrency=2)
        stop = asyncio.Event()
        task = asyncio.create_task(run_consumer(consumer, stop))
        try:
            await wait_for(lambda: len(channel.ends()) == len(order), what="every item")
            await wait_for(lambda: consumer.processed == len(order), what="processed count")
            group = consumer.config.group_id
            end = time.monotonic() + 10
            while await committed(bootstrap, group, topic) != len(order):
                assert time.monotonic() < end, "the finished batch was not committed"
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    first_success = min(s.t for s in channel.ends() if s.case.startswith("flaky"))
    steady = channel.ends("steady")
    assert [s.n for s in steady] == list(range(8))
    assert max(s.t for s in steady) < first_success, "the steady case waited for a backoff"
    assert channel.attempts["flaky1", 0] == channel.attempts["flaky2", 0] == 3
    assert channel.max_in_flight <= 2

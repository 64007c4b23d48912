"""Consumer plumbing with one explicit policy: at-least-once, commit after processing.

Ack policy (every CareBus consumer built on this states it by using it):
- auto-commit is off; offsets are committed only after every record of a polled batch
  was either processed or dead-lettered, so a crash replays the uncommitted tail;
- each record's event id goes through a `Deduplicator`, so that replay is harmless;
- a handler failure is retried with exponential backoff, then the record is
  dead-lettered with the reason: a poison record never blocks its partition;
- a record that is not a CareBus event (bad CloudEvents headers) is dead-lettered at once;
- if the dead-letter write itself fails (broker gone), nothing is committed and the
  consumer stops: the records come back on restart instead of being lost.

Concurrency (`ConsumerConfig.concurrency`, 1 = strictly sequential): the records of a
polled batch are grouped by (partition, key) — the key is the case id, so a group is
one case — groups run concurrently, at most `concurrency` records being handled at
once, and the records of a group one after the other in offset order. The batch is
committed only once every group has finished; a record waiting out a retry backoff
gives its slot back (`slot_released`), so a failing key does not hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

from bus import tracing
from bus.deadletter import dead_letter_of, is_replayed
from bus.dedup import Deduplicator
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from schemas.envelope import Envelope, EnvelopeError

log = logging.getLogger("carebus.consumer")


class CommitPolicy(StrEnum):
    AFTER_BATCH = "after-batch"  # commit once every record of the poll is done


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: dead-letter at once."""


Handler = Callable[[Envelope, ConsumerRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    group_id: str
    topics: tuple[str, ...]
    max_batch: int = 500
    poll_timeout_ms: int = 200
    retries: int = 3
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    auto_offset_reset: str = "earliest"
    commit_policy: CommitPolicy = CommitPolicy.AFTER_BATCH
    concurrency: int = 1  # records handled at once (per-key order kept); 1 = sequential


class _Slot:
    """One record's share of the consumer's concurrency, which it can lend back."""

    __slots__ = ("_sem", "held")

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self.held = False

    async def acquire(self) -> None:
        await self._sem.acquire()
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._sem.release()


_SLOT: ContextVar[_Slot | None] = ContextVar("carebus_consumer_slot", default=None)


@contextlib.asynccontextmanager
async def slot_released() -> AsyncIterator[None]:
    """Give the current record's concurrency slot back for the duration (a retry
    backoff): other keys use it meanwhile. A no-op outside a concurrent consumer."""
    slot = _SLOT.get()
    if slot is None or not slot.held:
        yield
        return
    slot.release()
    try:
        yield
    finally:
        await slot.acquire()


def key_groups(records: list[ConsumerRecord]) -> list[list[ConsumerRecord]]:
    """The records of one partition's batch grouped by key, each group in offset order
    (groups in order of first appearance). Keyless records form one group: without a
    key, partition order is the only order there is."""
    groups: dict[bytes | None, list[ConsumerRecord]] = {}
    for record in records:
        groups.setdefault(record.key, []).append(record)
    return list(groups.values())


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # Called inside getmany(), i.e. between batches: everything processed is
        # committed already; commit again defensively what is pending for these.
        await self.owner.commit_pending(set(revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("assigned %d partitions to %s", len(assigned), self.owner.config.group_id)


class EventConsumer:
    """Consume CareBus events from topics and hand each to `handler`, policy above."""

    def __init__(
        self,
        bootstrap: str,
        kafka: KafkaSettings,
        config: ConsumerConfig,
        handler: Handler,
        producer: EventProducer,
        dedup: Deduplicator | None = None,
    ) -> None:
        self.config = config
        self._handler = handler
        self._producer = producer
        self.dedup = dedup if dedup is not None else Deduplicator()
        self._pending: dict[TopicPartition, int] = {}
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset=config.auto_offset_reset,
            isolation_level="read_committed",
            **kafka.client_options(),
        )
        self.processed = 0
        self.duplicates = 0
        self.dead_lettered = 0

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.subscribe(list(self.config.topics), listener=_Rebalance(self))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.commit_pending()
        await self._consumer.stop()

    async def commit_pending(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {
            tp: OffsetAndMetadata(off, "")
            for tp, off in self._pending.items()
            if only is None or tp in only
        }
        if offsets:
            await self._consumer.commit(offsets)
            for tp in offsets:
                self._pending.pop(tp, None)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll, process, commit, until `stop` is set (or forever)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.poll_once()

    async def poll_once(self) -> int:
        batches = await self._consumer.getmany(
            timeout_ms=self.config.poll_timeout_ms, max_records=self.config.max_batch
        )
        if self.config.concurrency <= 1:
            count = 0
            for tp, records in batches.items():
                for record in records:
                    await self._process(record)
                    self._pending[tp] = record.offset + 1
                    count += 1
        else:
            count = await self._process_concurrently(batches)
        await self.commit_pending()
        return count

    async def _process_concurrently(self, batches: dict[TopicPartition, list]) -> int:
        """Every record of the batch, key groups in parallel (see the module docstring);
        returns only when all are finished. Offsets then advance per partition over the
        contiguous finished prefix: if a group failed (dead-letter write refused), the
        others still finish, what precedes the failure stays committable, and the first
        error is raised so that nothing past it is committed."""
        slots = asyncio.Semaphore(self.config.concurrency)
        done: set[tuple[TopicPartition, int]] = set()

        async def run_group(tp: TopicPartition, group: list[ConsumerRecord]) -> None:
            slot = _Slot(slots)
            _SLOT.set(slot)  # this task's own context: seen by the handler it awaits
            for record in group:
                await slot.acquire()
                try:
                    await self._process(record)
                finally:
                    slot.release()
                done.add((tp, record.offset))

        jobs = [
            run_group(tp, group) for tp, records in batches.items() for group in key_groups(records)
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        count = 0
        for tp, records in batches.items():
            for record in records:
                if (tp, record.offset) not in done:
                    break
                self._pending[tp] = record.offset + 1
                count += 1
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return count

    async def _process(self, record: ConsumerRecord) -> None:
        try:
            env = Envelope.decode(record.key, record.value, record.headers)
        except EnvelopeError as exc:
            await self._dead_letter(record, f"not a CareBus event: {exc}", attempts=0)
            return
        if self.dedup.seen(env.id) and not is_replayed(env.extra_headers):
            self.duplicates += 1
            return
        token = tracing.use(env.traceparent)  # log lines and outbound calls carry its trace
        try:
            await self._handle(env, record)
        finally:
            tracing.reset(token)

    async def _handle(self, env: Envelope, record: ConsumerRecord) -> None:
        delay = self.config.backoff_s
        for attempt in range(1, self.config.retries + 2):
            try:
                await self._handler(env, record)
            except PermanentError as exc:
                await self._dead_letter(record, f"{type(exc).__name__}: {exc}", attempt)
                return
            except Exception as exc:  # noqa: BLE001 - any handler failure: retry, then DLQ
                if attempt > self.config.retries:
                    await self._dead_letter(record, f"{type(exc).__name__}: {exc}", attempt)
                    return
                log.warning("event %s failed (attempt %d): %s", env.id, attempt, type(exc).__name__)
                async with slot_released():
                    await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
                delay = min(delay * 2, self.config.max_backoff_s)
            else:
                self.dedup.mark(env.id)
                self.processed += 1
                return

    async def _dead_letter(self, record: ConsumerRecord, reason: str, attempts: int) -> None:
        out = dead_letter_of(record, reason=reason, group=self.config.group_id, attempts=attempts)
        # BrokerUnavailable propagates: no commit, the record is redelivered later.
        await self._producer.send_raw(out.topic, out.key, out.value, out.headers)
        self.dead_lettered += 1
        log.error(
            "dead-lettered %s[%d]@%d after %d attempts",
            record.topic,
            record.partition,
            record.offset,
            attempts,
        )

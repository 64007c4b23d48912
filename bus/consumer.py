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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition

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
        count = 0
        for tp, records in batches.items():
            for record in records:
                await self._process(record)
                self._pending[tp] = record.offset + 1
                count += 1
        await self.commit_pending()
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

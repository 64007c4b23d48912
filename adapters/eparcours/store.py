"""Durable subscriptions: the compacted topic `care.subscriptions` is the database.

Why a compacted topic: subscriptions must survive restarts without another database to
run, and Kafka keeps the latest value per key forever (key = subscription id, value =
the record as JSON, a tombstone when deleted). Every change is written with acks=all
*before* memory changes (`save`), so what a caller was told exists is on the broker; at
start `load` reads the topic from the beginning to its end and rebuilds the registry.

What is *not* durable, on purpose: the per-subscription event log behind `$events`.
The last `events_kept` notifications of each subscription are kept in memory only (they
hold patient data, and the event topics remain the durable source); after a restart
`$events` answers the events numbered since. The item → eventNumber mapping, which the
"one event, one number" promise needs, *is* durable: it is part of the record.

Single writer: numbering is serialised by one lock in one process, so the e-parcours
delivery worker and the subscription API run in the same process (the topic has one
partition; scaling out the other consumers does not change that).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from adapters.eparcours.notify import EventNote
from adapters.eparcours.registry import (
    SubscriptionRecord,
    assign,
    from_json,
    mark_delivered,
    to_json,
)
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from schemas.topics import SUBSCRIPTIONS

log = logging.getLogger("carebus.eparcours.store")


class SubscriptionStore:
    """The registry in memory, every change persisted first to `care.subscriptions`."""

    def __init__(
        self,
        producer: EventProducer | None,
        *,
        topic: str = SUBSCRIPTIONS.name,
        events_kept: int = 100,
        numbers_kept: int = 256,
    ) -> None:
        self.producer = producer  # None: memory only (unit tests)
        self.topic = topic
        self.events_kept = events_kept
        self.numbers_kept = numbers_kept
        self._records: dict[str, SubscriptionRecord] = {}
        self._log: dict[str, deque[EventNote]] = {}
        self._lock = asyncio.Lock()

    # --- reading ---------------------------------------------------------------------
    def get(self, sub_id: str) -> SubscriptionRecord | None:
        return self._records.get(sub_id)

    def all(self, owner: str | None = None) -> list[SubscriptionRecord]:
        return [r for r in self._records.values() if owner is None or r.owner == owner]

    def __len__(self) -> int:
        return len(self._records)

    # --- durable changes -------------------------------------------------------------
    async def _persist(self, sub_id: str, value: bytes | None) -> None:
        if self.producer is not None:
            headers = [("content-type", b"application/json")] if value is not None else []
            await self.producer.send_raw(self.topic, sub_id.encode(), value, headers)

    async def save(self, record: SubscriptionRecord) -> SubscriptionRecord:
        async with self._lock:
            await self._persist(record.id, to_json(record))
            self._records[record.id] = record
        return record

    async def update(
        self, sub_id: str, change: Callable[[SubscriptionRecord], SubscriptionRecord]
    ) -> SubscriptionRecord | None:
        """Apply `change` to the current record under the lock, persist, return it."""
        async with self._lock:
            current = self._records.get(sub_id)
            if current is None:
                return None
            new = change(current)
            if new is not current:
                await self._persist(sub_id, to_json(new))
                self._records[sub_id] = new
            return new

    async def delete(self, sub_id: str) -> bool:
        async with self._lock:
            if sub_id not in self._records:
                return False
            await self._persist(sub_id, None)  # tombstone: compaction forgets it
            del self._records[sub_id]
            self._log.pop(sub_id, None)
            return True

    async def assign(
        self, sub_id: str, item_id: str, now: str
    ) -> tuple[SubscriptionRecord, int, bool]:
        """The eventNumber of a work item, persisted before it is used (see registry)."""
        async with self._lock:
            current = self._records.get(sub_id)
            if current is None:
                raise KeyError(sub_id)
            new, number, fresh = assign(current, item_id, now=now, keep=self.numbers_kept)
            if fresh:
                await self._persist(sub_id, to_json(new))
                self._records[sub_id] = new
            return new, number, fresh

    def delivered(self, sub_id: str, item_id: str) -> None:
        """Memory only: the flag reaches the topic with the next write (a lost flag only
        keeps a mapping longer, never renumbers)."""
        current = self._records.get(sub_id)
        if current is not None:
            self._records[sub_id] = mark_delivered(current, item_id, keep=self.numbers_kept)

    # --- the in-memory event log behind $events --------------------------------------
    def remember(self, sub_id: str, note: EventNote) -> None:
        log_ = self._log.setdefault(sub_id, deque(maxlen=self.events_kept))
        if not any(n.number == note.number for n in log_):
            log_.append(note)

    def events(
        self, sub_id: str, since: int | None = None, until: int | None = None
    ) -> list[EventNote]:
        notes = sorted(self._log.get(sub_id, ()), key=lambda n: n.number)
        return [
            n
            for n in notes
            if (since is None or n.number >= since) and (until is None or n.number <= until)
        ]

    # --- rebuild ---------------------------------------------------------------------
    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """One record of the topic (in offset order): upsert, or forget on a tombstone."""
        if not key:
            return
        sub_id = key.decode(errors="replace")
        if value is None:
            self._records.pop(sub_id, None)
            self._log.pop(sub_id, None)
            return
        try:
            self._records[sub_id] = from_json(value)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable subscription %s on %s: %s", sub_id, self.topic, exc)

    async def load(self, bootstrap: str, kafka: KafkaSettings, *, timeout_s: float = 30.0) -> int:
        """Rebuild from the beginning of the topic to its current end; returns the count."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=bootstrap,
            group_id=None,  # no group: every partition is ours, nothing is committed
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **kafka.client_options(),
        )
        await consumer.start()
        try:
            await asyncio.wait_for(self._read_all(consumer), timeout_s)
        finally:
            await consumer.stop()
        log.info("rebuilt %d subscription(s) from %s", len(self._records), self.topic)
        return len(self._records)

    async def _read_all(self, consumer: AIOKafkaConsumer) -> None:
        # assigned once the topic's metadata arrived (aiokafka offers no event for it)
        while not consumer.assignment():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        tps = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        self._records.clear()
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not behind:
                return
            batches = await consumer.getmany(*tps, timeout_ms=500, max_records=1000)
            for records in batches.values():
                for record in records:
                    self.apply(record.key, record.value)

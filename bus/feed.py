"""Fold a compacted topic into memory, in every worker: the base of the table feeds.

Some state is needed whole by every worker, whatever partitions it owns: the directory
(any event may name any professional) and patients' consent decisions (any event may be
about any patient). Such a topic is compacted, so it keeps the latest record per key;
the feed reads every partition from the beginning with no consumer group and commits
nothing: the state is rebuilt at each start, and `ready()` tells the caller when it has
caught up with what was written before `start()`. Records written later keep being
applied until `stop()`. An unreadable record is logged and counted, never fatal.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bus.errors import BrokerUnavailable
from bus.settings import KafkaSettings

log = logging.getLogger("carebus.feed")


class TopicFeed(abc.ABC):
    """Subclasses implement `fold(key, value, headers, offset)`; raising ValueError from it
    counts the record as invalid (logged by offset, never by content)."""

    name = "feed"

    def __init__(
        self, bootstrap: str, kafka: KafkaSettings, topic: str, *, start_timeout_s: float = 30.0
    ) -> None:
        self._bootstrap = bootstrap
        self._kafka = kafka
        self._topic = topic
        self._start_timeout_s = start_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.applied = 0  # records folded so far
        self.invalid = 0  # records skipped as unreadable

    @abc.abstractmethod
    def fold(
        self, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]], offset: int
    ) -> None:
        """Apply one record (value None: a tombstone) to the state the feed keeps."""

    def describe(self) -> str:
        """What the feed holds, for the 'ready' log line (counts, never content)."""
        return f"{self.applied} records"

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Connect, assign every partition from the beginning, start following.
        Raises BrokerUnavailable if the broker or the topic is not there in time."""
        if self._task is not None:
            return
        consumer = AIOKafkaConsumer(
            self._topic,
            bootstrap_servers=self._bootstrap,
            group_id=None,  # every partition to every worker, nothing is committed
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **self._kafka.client_options(),
        )
        try:
            await asyncio.wait_for(consumer.start(), self._start_timeout_s)
            tps = await asyncio.wait_for(self._assignment(consumer), self._start_timeout_s)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise BrokerUnavailable(f"{self.name} topic {self._topic} unreadable: {exc!r}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer, ends), name=f"{self.name}-feed")

    @staticmethod
    async def _assignment(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # without a group, the consumer takes every partition as soon as it knows the
        # topic (also partitions added later); wait in case it is being provisioned
        while True:
            if assigned := consumer.assignment():
                return sorted(assigned)
            await asyncio.sleep(0.1)

    async def ready(self, timeout_s: float | None = None) -> None:
        """Return once everything written before `start()` is folded.
        Raises TimeoutError after `timeout_s`, or the feed's own failure if it died."""
        if self._task is None:
            raise RuntimeError(f"{type(self).__name__}.ready() before start()")
        waiter = asyncio.ensure_future(self._ready.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, self._task}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._ready.is_set():
            return
        if self._task in done:
            self._task.result()  # re-raise what killed the feed
            raise RuntimeError(f"{self.name} feed stopped before catching up")
        raise TimeoutError(f"{self.name} not caught up with {self._topic} after {timeout_s}s")

    async def _run(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        pending = dict(ends)
        try:
            while True:
                for tp in list(pending):
                    if await consumer.position(tp) >= pending[tp]:
                        del pending[tp]
                if not pending and not self._ready.is_set():
                    self._ready.set()
                    log.info("%s ready: %s", self.name, self.describe())
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for records in batches.values():
                    for record in records:
                        self._apply(
                            record.key, record.value, list(record.headers or ()), record.offset
                        )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s feed on %s stopped", self.name, self._topic)
            raise

    def _apply(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], offset: int
    ) -> None:
        if not key:
            self.invalid += 1
            log.error("%s record at offset %d has no key: skipped", self.name, offset)
            return
        try:
            self.fold(key, value, headers, offset)
        except ValueError as exc:
            self.invalid += 1
            log.error("%s record at offset %d skipped: %s", self.name, offset, exc)
            return
        self.applied += 1

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> TopicFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

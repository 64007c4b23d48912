"""The directory on Kafka: imports are written to `care.directory`, every worker folds it.

`care.directory` is compacted and keyed by entry ("practitioner/<rpps>"…), so it keeps
the latest version of every entry forever and deletion is a tombstone. Each worker needs
the whole directory (any event may name any professional), so the feed reads every
partition from the beginning with no consumer group and commits nothing: the state is
rebuilt at each start, and `ready()` tells routing when it has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bus.errors import BrokerUnavailable
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from processors.directory.model import Directory, Entry, InvalidRecord, entry_record, tombstone
from schemas.topics import DIRECTORY

log = logging.getLogger("carebus.directory")
_HEADERS = [("content-type", b"application/json")]
_WINDOW = 500  # records in flight per acknowledgement round trip


async def publish(
    entries: Iterable[Entry], producer: EventProducer, *, topic: str = DIRECTORY.name
) -> int:
    """Write entries (acks=all) and return how many; a key given twice is written once,
    with its last version. Sends are pipelined in windows, so a national extract does
    not pay one round trip per professional; raises BrokerUnavailable like send_raw."""
    latest = {e.key: e for e in entries}
    records = [entry_record(e) for e in latest.values()]
    for start in range(0, len(records), _WINDOW):
        window = records[start : start + _WINDOW]
        await asyncio.gather(*(producer.send_raw(topic, k, v, list(_HEADERS)) for k, v in window))
    return len(records)


async def publish_tombstones(
    keys: Iterable[str], producer: EventProducer, *, topic: str = DIRECTORY.name
) -> int:
    """Delete entries by key ("practitioner/10003456125"); returns how many were sent."""
    unique = list(dict.fromkeys(keys))
    for key in unique:
        k, v = tombstone(key)
        await producer.send_raw(topic, k, v, [])
    return len(unique)


class DirectoryFeed:
    """Keeps a `Directory` in step with `care.directory`, in the background.

    `start()` takes every partition from the beginning and notes the end offsets;
    `ready()` returns once everything up to those offsets is applied; records written
    later keep being applied until `stop()`. An unreadable record is logged and counted
    (`invalid`), never fatal: one bad import must not stop routing.
    """

    def __init__(
        self,
        bootstrap: str,
        kafka: KafkaSettings,
        directory: Directory | None = None,
        *,
        topic: str = DIRECTORY.name,
        start_timeout_s: float = 30.0,
        on_change: Callable[[str, Entry | None], None] | None = None,
    ) -> None:
        self.directory = directory if directory is not None else Directory()
        self._bootstrap = bootstrap
        self._kafka = kafka
        self._topic = topic
        self._start_timeout_s = start_timeout_s
        self._on_change = on_change
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.applied = 0  # records folded so far
        self.invalid = 0  # records skipped as unreadable

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
            raise BrokerUnavailable(f"directory topic {self._topic} unreadable: {exc!r}") from exc
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer, ends), name="directory-feed")

    @staticmethod
    async def _assignment(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # without a group, the consumer takes every partition as soon as it knows the
        # topic (also partitions added later); wait in case it is being provisioned
        while True:
            if assigned := consumer.assignment():
                return sorted(assigned)
            await asyncio.sleep(0.1)

    async def ready(self, timeout_s: float | None = None) -> None:
        """Return once the directory holds everything written before `start()`.
        Raises TimeoutError after `timeout_s`, or the feed's own failure if it died."""
        if self._task is None:
            raise RuntimeError("DirectoryFeed.ready() before start()")
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
            raise RuntimeError("directory feed stopped before catching up")
        raise TimeoutError(f"directory not caught up with {self._topic} after {timeout_s}s")

    async def _run(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        pending = dict(ends)
        try:
            while True:
                for tp in list(pending):
                    if await consumer.position(tp) >= pending[tp]:
                        del pending[tp]
                if not pending and not self._ready.is_set():
                    self._ready.set()
                    log.info("directory ready: %s", self.directory.counts())
                batches = await consumer.getmany(timeout_ms=500, max_records=2000)
                for records in batches.values():
                    for record in records:
                        self._fold(record.key, record.value, record.offset)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("directory feed on %s stopped", self._topic)
            raise

    def _fold(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if not key:
            self.invalid += 1
            log.error("directory record at offset %d has no key: skipped", offset)
            return
        try:
            entry = self.directory.apply(key, value)
        except InvalidRecord as exc:
            self.invalid += 1
            log.error("directory record at offset %d skipped: %s", offset, exc)
            return
        self.applied += 1
        if self._on_change is not None:
            self._on_change(key.decode(), entry)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def __aenter__(self) -> DirectoryFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

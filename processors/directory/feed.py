"""The directory on Kafka: imports are written to `care.directory`, every worker folds it.

`care.directory` is compacted and keyed by entry ("practitioner/<rpps>"…), so it keeps
the latest version of every entry forever and deletion is a tombstone. Each worker needs
the whole directory (any event may name any professional): `DirectoryFeed` is a
`bus.feed.TopicFeed`, rebuilt from the beginning at each start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from bus.feed import TopicFeed
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from processors.directory.model import Directory, Entry, entry_record, tombstone
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


class DirectoryFeed(TopicFeed):
    """Keeps a `Directory` in step with `care.directory`, in the background (see
    `bus.feed.TopicFeed`: every partition from the beginning, `ready()` once caught up).
    An unreadable record is logged and counted (`invalid`), never fatal: one bad import
    must not stop routing."""

    name = "directory"

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
        super().__init__(bootstrap, kafka, topic, start_timeout_s=start_timeout_s)
        self.directory = directory if directory is not None else Directory()
        self._on_change = on_change

    def describe(self) -> str:
        return str(self.directory.counts())

    def fold(
        self, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]], offset: int
    ) -> None:
        entry = self.directory.apply(key, value)  # InvalidRecord is a ValueError: counted
        if self._on_change is not None:
            self._on_change(key.decode(), entry)

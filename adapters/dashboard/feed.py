"""Follow the bus's topics into the dashboard's projection.

State is rebuilt at every start: the feed has no consumer group and commits nothing; it
reads every partition of `projection.TOPICS` from the beginning (the topics keep 30 days
of case events and 90 days of dead letters and rejected inputs, so that is what the
dashboard knows), then follows them. Memory stays bounded by the projection's limits
(`dashboard.max_cases`, `max_timeline`, `max_items`), whatever the topics hold. So a
dashboard process is disposable and any number of them can run side by side; `ready`
tells when the backlog present at start has been read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer

from adapters.dashboard.projection import TOPICS, Projection
from adapters.dashboard.views import Record
from bus.settings import KafkaSettings

log = logging.getLogger("carebus.dashboard")


class DashboardFeed:
    def __init__(self, bootstrap: str, kafka: KafkaSettings, projection: Projection) -> None:
        self.bootstrap, self.kafka, self.projection = bootstrap, kafka, projection
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.kafka.client_options(),
        )
        await consumer.start()
        self._consumer = consumer
        # no group: subscribing assigns every partition of the topics to this consumer
        # (and the ones created later); without committed offsets it starts at the
        # beginning (auto_offset_reset="earliest")
        consumer.subscribe(list(TOPICS))
        for _ in range(100):
            if consumer.assignment():
                break
            await asyncio.sleep(0.05)
        parts = sorted(consumer.assignment())
        missing = sorted(set(TOPICS) - {tp.topic for tp in parts})
        if missing:
            log.warning("dashboard: topics missing (run `carebus topics apply`): %s", missing)
        ends = await consumer.end_offsets(parts) if parts else {}
        self._task = asyncio.create_task(self._run(consumer, ends), name="dashboard-feed")

    async def _run(self, consumer: AIOKafkaConsumer, ends: dict) -> None:
        backlog = {tp: end for tp, end in ends.items() if end > 0}
        if not backlog:
            self.ready.set()
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep following; aiokafka reconnects
                log.warning("dashboard feed: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for r in records:
                    self.projection.apply(
                        Record(
                            r.topic,
                            r.partition,
                            r.offset,
                            r.timestamp,
                            r.key,
                            r.value,
                            tuple(r.headers or ()),
                        )
                    )
                if tp in backlog and records and records[-1].offset + 1 >= backlog[tp]:
                    del backlog[tp]
            if backlog and not self.ready.is_set():
                for tp in list(backlog):
                    if await consumer.position(tp) >= backlog[tp]:
                        del backlog[tp]
            if not backlog and not self.ready.is_set():
                self.ready.set()
                log.info("dashboard: %d records read at start", self.projection.records)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

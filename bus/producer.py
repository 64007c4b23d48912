"""The one way CareBus writes to Kafka: acks=all, idempotent, confirmed before returning.

An ingress answers its sender only after `publish` returned, i.e. after every in-sync
replica has the record. A broker that does not answer within `timeout_s` raises
`BrokerUnavailable` so the sender is told to retry instead of being lied to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from bus.errors import BrokerUnavailable
from bus.settings import KafkaSettings
from schemas.envelope import Envelope, Headers

log = logging.getLogger("carebus.producer")


class EventProducer:
    """A started-on-demand aiokafka producer with the durability settings fixed."""

    def __init__(
        self,
        bootstrap: str,
        kafka: KafkaSettings,
        *,
        timeout_s: float = 10.0,
        linger_ms: int = 2,
        max_request_size: int = 4 * 1024 * 1024,
    ) -> None:
        self._bootstrap = bootstrap
        self._kafka = kafka
        self._timeout_s = timeout_s
        self._linger_ms = linger_ms
        self._max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect now; raises BrokerUnavailable when the broker is not there."""
        await self._ensure()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=self._linger_ms,
                    max_request_size=self._max_request_size,
                    # one batch per partition per request: at aiokafka's 16 KB default a
                    # 13-26 KB FHIR message is a batch of its own, and idempotent sends
                    # then go one request at a time per partition
                    max_batch_size=1 << 20,
                    **self._kafka.client_options(),
                )
                try:
                    await asyncio.wait_for(producer.start(), self._timeout_s)
                except (KafkaError, OSError, TimeoutError) as exc:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise BrokerUnavailable(f"broker unreachable: {exc!r}") from exc
                self._producer = producer
        return self._producer

    async def ping(self) -> None:
        """A real metadata round trip to the broker; raises BrokerUnavailable."""
        producer = await self._ensure()
        try:
            ok = await asyncio.wait_for(producer.client.fetch_all_metadata(), self._timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"broker did not answer: {exc!r}") from exc
        if ok is None or not ok.brokers():
            raise BrokerUnavailable("broker answered with no brokers")

    async def stop(self) -> None:
        """Flush what is in flight, then close."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> RecordMetadata:
        """Write one record and wait for the broker's acknowledgement (acks=all)."""
        producer = await self._ensure()

        async def write() -> RecordMetadata:
            fut = await producer.send(topic, value=value, key=key, headers=list(headers))
            return await fut

        try:
            # one deadline for metadata wait + append + acknowledgement
            return await asyncio.wait_for(write(), self._timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"write to {topic} not acknowledged: {exc!r}") from exc

    async def publish(self, topic: str, envelope: Envelope) -> RecordMetadata:
        key, value, headers = envelope.encode()
        return await self.send_raw(topic, key, value, headers)

    async def publish_many(self, items: Iterable[tuple[str, Envelope]]) -> Sequence[RecordMetadata]:
        """Write a batch and wait for every acknowledgement; all-or-raise.

        Sends are pipelined (one round trip for the batch, not one per record); on a
        failure some records may have landed: consumers dedup on event id.
        """
        producer = await self._ensure()

        async def write() -> list[RecordMetadata]:
            futures = []
            for topic, env in items:
                key, value, headers = env.encode()
                futures.append(await producer.send(topic, value=value, key=key, headers=headers))
            return list(await asyncio.gather(*futures))

        try:
            return await asyncio.wait_for(write(), self._timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(f"batch not acknowledged: {exc!r}") from exc

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

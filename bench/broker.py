"""Raw Kafka limits on this machine: produce, consume, and consume→produce passthrough.

This is the physical ceiling the pipeline is compared with (issue 8): plain aiokafka,
no validation, no envelope decoding, acks=all like CareBus's own producer.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def _topic(bootstrap: str, name: str, partitions: int = 6) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    """msgs/s for n records of `size` bytes, acks=all, idempotent, all acknowledged."""
    payload = os.urandom(size // 2).hex().encode()[:size]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futs = [await producer.send(topic, payload, key=str(i % 64).encode()) for i in range(n)]
        await asyncio.gather(*futs)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def produce_bytes(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """Write these values (acks=all), keyed round-robin over 64 keys, all acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=1024 * 1024,
        max_request_size=8 << 20,
    )
    await producer.start()
    try:
        futs = [
            await producer.send(topic, v, key=str(i % 64).encode()) for i, v in enumerate(values)
        ]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def passthrough(bootstrap: str, src: str, dst: str, n: int) -> tuple[float, float]:
    """(consume-only msgs/s, consume→produce msgs/s with commit after each batch)."""
    consumer = AIOKafkaConsumer(
        src,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await consumer.start()
    await producer.start()
    try:
        done = 0
        t0 = time.perf_counter()
        while done < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            futs = []
            for records in batch.values():
                for r in records:
                    futs.append(await producer.send(dst, r.value, key=r.key, headers=r.headers))
            await asyncio.gather(*futs)
            await consumer.commit()
            done += len(futs)
        through = n / (time.perf_counter() - t0)
    finally:
        await producer.stop()
        await consumer.stop()
    # consume-only over the copy
    consumer = AIOKafkaConsumer(
        dst,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    try:
        got = 0
        t0 = time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            got += sum(len(v) for v in batch.values())
        consume = n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
    return consume, through


async def run(
    bootstrap: str, *, n: int = 30_000, size: int = 2048, runs: int = 3
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"produce": [], "consume": [], "passthrough": []}
    for _ in range(runs):
        tag = uuid.uuid4().hex[:8]
        src = await _topic(bootstrap, f"bench.src.{tag}")
        dst = await _topic(bootstrap, f"bench.dst.{tag}")
        out["produce"].append(await produce(bootstrap, src, n, size))
        consume, through = await passthrough(bootstrap, src, dst, n)
        out["consume"].append(consume)
        out["passthrough"].append(through)
    return out

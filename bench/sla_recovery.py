"""SLA recovery from the broker: a worker restarts with 100,000 pending deadlines.

bench/sla.py measures the in-memory half (rebuilding the deadline queue from the
table); this is the whole restart as a worker lives it: faust joins the group, reads
the `sla-cases` changelog back from Kafka into its table, and `rebuild_queue` arms
every deadline. The changelog is written the way faust writes it (key = the case id
JSON-encoded, as faust encodes a str-typed key; value = `CaseState.to_bytes()`), with
states made by the real SLA machine (urgent referrals: a reminder and an escalation
each, due over the next hour).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from bench.sla import build_table
from bench.stats import Figure, summarise
from bus.producer import EventProducer
from bus.provisioning import apply_topics
from bus.settings import Settings
from processors.app import Processors, internal_topics
from processors.directory.model import Directory
from processors.runner import run_processors
from processors.sla.policy import SlaPolicies


async def _write_changelog(bootstrap: str, topic: str, table: dict[str, bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        # faust serialises a str-typed table key as JSON (a quoted string), bytes raw
        futs = [await producer.send(topic, v, key=orjson.dumps(k)) for k, v in table.items()]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def recover_once(bootstrap: str, settings: Settings, tmp: Path, deadlines: int) -> float:
    """Seconds from starting a worker to every deadline of the changelog armed."""
    app_id = f"bench-recovery-{uuid.uuid4().hex[:6]}"
    await apply_topics(bootstrap, settings.kafka, internal_topics(app_id))
    table = build_table(deadlines, datetime.now(UTC) + timedelta(hours=1), 3600.0)
    await _write_changelog(bootstrap, f"{app_id}-sla-cases-changelog", table)
    worker_settings = settings.model_copy(update={"data_dir": tmp / app_id})
    async with EventProducer(bootstrap, settings.kafka) as producer:
        ctx = Processors(producer=producer, lookup=Directory(), policies=SlaPolicies())
        started = time.perf_counter()
        async with run_processors(worker_settings, bootstrap, ctx, app_id=app_id):
            deadline = started + 180
            while len(ctx.queue) < deadlines:
                if time.perf_counter() > deadline:
                    raise TimeoutError(
                        f"only {len(ctx.queue)} of {deadlines} deadlines armed after 180 s"
                    )
                await asyncio.sleep(0.05)
            return time.perf_counter() - started


async def run(
    bootstrap: str, settings: Settings, tmp: Path, *, deadlines: int = 100_000, runs: int = 3
) -> list[Figure]:
    times = [await recover_once(bootstrap, settings, tmp, deadlines) for _ in range(runs)]
    return [
        summarise(
            f"SLA recovery from the changelog on Kafka, {deadlines:,} pending "
            "(worker start → all deadlines armed)",
            "s",
            times,
        )
    ]

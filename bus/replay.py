"""Send dead letters and rejected inputs back once their cause is fixed (`carebus replay`).

Dead letters go back to the topic they came from with their original headers (the
consumers dedup on event id, so replaying an event that did get processed is harmless).
Rejected inputs were never events: they are run through ingress validation again and
written only if they now pass. A consumer group remembers what was replayed, so running
the command twice does not send the same record twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from bus.deadletter import header_text, replay_target
from bus.producer import EventProducer
from bus.settings import KafkaSettings
from schemas.outcome import ValidationFailed
from schemas.topics import DEAD_LETTER, REJECTED_INPUT

NOT_REPLAYABLE = frozenset({"forbidden", "security", "business-rule", "conflict"})


@dataclass
class ReplayReport:
    replayed: int = 0
    still_invalid: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)


def _rebuild_rejected(record: ConsumerRecord) -> tuple[str, object] | None:
    """(channel, validated message) when a rejected input now passes, else None."""
    from schemas.validate import validate_message

    channel = header_text(record.headers, "rejected_channel")
    raw = record.value or b""
    if channel == "mllp":
        from adapters.hl7.adt import parse_adt
        from adapters.hl7.to_fhir import to_bundle

        bundle = to_bundle(parse_adt(raw))
        return channel, validate_message(orjson.dumps(bundle), structural=False)
    return channel, validate_message(raw)


async def replay(
    bootstrap: str,
    kafka: KafkaSettings,
    *,
    source: str = "deadletter",
    topic_filter: str | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    topic = DEAD_LETTER.name if source == "deadletter" else REJECTED_INPUT.name
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"carebus-replay-{source}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka.client_options(),
    )
    producer = EventProducer(bootstrap, kafka)
    report = ReplayReport()
    await consumer.start()
    try:
        await producer.start()
        # wait for the assignment (keeping whatever arrives meanwhile), then read up to
        # the end offsets known now
        early: dict = {}
        for _ in range(50):
            if consumer.assignment():
                break
            for tp, recs in (await consumer.getmany(timeout_ms=100)).items():
                early.setdefault(tp, []).extend(recs)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        total = sum(ends.values())
        seen = 0
        batch = early
        while batch or any(await _behind(consumer, ends)):
            for records in batch.values():
                for rec in records:
                    seen += 1
                    if limit is not None and report.replayed >= limit:
                        report.skipped += 1
                        continue
                    await _replay_one(rec, source, topic_filter, dry_run, producer, report)
                    if progress:
                        progress(seen, total)
            if not dry_run and batch:
                await consumer.commit()
            batch = await consumer.getmany(timeout_ms=500, max_records=200)
    finally:
        await producer.stop()
        await consumer.stop()
    return report


async def _behind(consumer: AIOKafkaConsumer, ends: dict) -> list[bool]:
    return [await consumer.position(tp) < end for tp, end in ends.items()]


async def _replay_one(
    rec: ConsumerRecord,
    source: str,
    topic_filter: str | None,
    dry_run: bool,
    producer: EventProducer,
    report: ReplayReport,
) -> None:
    if source == "deadletter":
        target, _ = replay_target(rec.headers)
        if topic_filter and target != topic_filter:
            report.skipped += 1
            return
        if not dry_run:
            await send_back(rec, producer)
        report.replayed += 1
        return
    codes = set(header_text(rec.headers, "rejected_codes").split(","))
    if codes & NOT_REPLAYABLE:
        # refused for who sent it or for the case's state, not for its content: only the
        # sender can decide to send it again (replaying would bypass the check)
        report.skipped += 1
        return
    try:
        rebuilt = await asyncio.to_thread(_rebuild_rejected, rec)
    except ValidationFailed as exc:
        report.still_invalid += 1
        report.reasons.append(exc.reason[:200])
        return
    if rebuilt is None:
        report.skipped += 1
        return
    channel, msg = rebuilt
    if not dry_run:
        from adapters.ingress import Ingress

        await Ingress(producer).accept(msg, channel=f"replay-{channel}")  # type: ignore[arg-type]
    report.replayed += 1


async def send_back(rec: ConsumerRecord, producer: EventProducer) -> str:
    """Write one dead letter back to the topic it came from (original key, value and
    headers, marked replayed); returns that topic."""
    target, headers = replay_target(rec.headers)
    await producer.send_raw(target, rec.key, rec.value, headers)
    return target


async def read_dead_letter(
    bootstrap: str, kafka: KafkaSettings, partition: int, offset: int, timeout_s: float = 10.0
) -> ConsumerRecord:
    """The record at `offset` of `care.deadletter` partition `partition` (no consumer
    group: reading it changes nothing); LookupError when there is none."""
    from aiokafka import TopicPartition

    tp = TopicPartition(DEAD_LETTER.name, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **kafka.client_options(),
    )
    await consumer.start()
    try:
        if partition < 0 or offset < 0:
            raise LookupError(f"no dead letter at {partition}@{offset}")
        consumer.assign([tp])
        try:
            end = (await consumer.end_offsets([tp]))[tp]
        except KafkaError as exc:
            raise LookupError(f"{DEAD_LETTER.name} has no partition {partition}") from exc
        if offset >= end:
            raise LookupError(f"no dead letter at {partition}@{offset}")
        consumer.seek(tp, offset)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            got = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for rec in got.get(tp, []):
                if rec.offset == offset:
                    return rec
                raise LookupError(f"no dead letter at {partition}@{offset} (retention?)")
    finally:
        await consumer.stop()
    raise LookupError(f"no dead letter at {partition}@{offset}")


async def replay_one(
    bootstrap: str,
    kafka: KafkaSettings,
    producer: EventProducer,
    *,
    partition: int,
    offset: int,
    expect_id: str | None = None,
) -> str:
    """Send ONE dead letter (by its partition and offset on care.deadletter) back to its
    topic, e.g. from the coordinator dashboard; returns the topic. `expect_id` guards
    against replaying another record than the one the operator saw (its ce_id)."""
    rec = await read_dead_letter(bootstrap, kafka, partition, offset)
    if expect_id is not None and header_text(rec.headers, "ce_id") != expect_id:
        raise LookupError(f"the dead letter at {partition}@{offset} is not event {expect_id}")
    return await send_back(rec, producer)

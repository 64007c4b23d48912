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
        target, headers = replay_target(rec.headers)
        if topic_filter and target != topic_filter:
            report.skipped += 1
            return
        if not dry_run:
            await producer.send_raw(target, rec.key, rec.value, headers)
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

"""Dead letters and rejected inputs: nothing bad is silently dropped.

A dead letter is an event a consumer could not process (poison, or an effect that kept
failing); a rejected input is something an ingress refused (invalid HL7/FHIR). Both keep
the original bytes and headers untouched, plus `dlq_*` / `rejected_*` headers saying
why and where from, so `carebus replay` can send them back once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from schemas.envelope import Headers, now_iso
from schemas.outcome import Issue
from schemas.topics import DEAD_LETTER, REJECTED_INPUT

DLQ_PREFIX = "dlq_"
REPLAYED = "carebus_replayed"
REJ_PREFIX = "rejected_"
MAX_REASON = 2000  # bytes: a reason is a diagnosis, not a dump of the input


@dataclass(frozen=True, slots=True)
class KafkaRecordOut:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


def _clip(text: str) -> bytes:
    return text.encode()[:MAX_REASON]


def dead_letter(
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]],
    reason: str,
    group: str,
    attempts: int,
) -> KafkaRecordOut:
    """Wrap a consumed record for the dead-letter topic, original bytes untouched."""
    original = [(n, v) for n, v in headers if not n.startswith(DLQ_PREFIX)]
    meta: Headers = [
        ("dlq_reason", _clip(reason)),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(offset).encode()),
        ("dlq_group", group.encode()),
        ("dlq_attempts", str(attempts).encode()),
        ("dlq_time", now_iso().encode()),
    ]
    return KafkaRecordOut(DEAD_LETTER.name, key, value, original + meta)


def dead_letter_of(record: Any, *, reason: str, group: str, attempts: int) -> KafkaRecordOut:
    """`dead_letter` for a consumed record (aiokafka ConsumerRecord or faust Message)."""
    return dead_letter(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=record.headers or [],
        reason=reason,
        group=group,
        attempts=attempts,
    )


def rejected_input(
    *,
    raw: bytes,
    channel: str,
    sender: str,
    issues: Iterable[Issue],
    content_type: str,
    reply_id: str = "",
) -> KafkaRecordOut:
    """Record a refused inbound message (HL7 or FHIR) with why it was refused.

    `sender` is an identity (facility id, token client id), never a patient name.
    """
    issues = list(issues)
    reasons = "; ".join(str(i) for i in issues) or "rejected"
    headers: Headers = [
        ("rejected_channel", channel.encode()),
        ("rejected_sender", sender.encode()),
        ("rejected_reason", _clip(reasons)),
        ("rejected_codes", ",".join(sorted({str(i.code) for i in issues})).encode()),
        ("rejected_time", now_iso().encode()),
        ("content-type", content_type.encode()),
    ]
    if reply_id:
        headers.append(("rejected_reply_id", reply_id.encode()))
    return KafkaRecordOut(REJECTED_INPUT.name, sender.encode() or None, raw, headers)


def replay_target(headers: Iterable[tuple[str, bytes]]) -> tuple[str, Headers]:
    """Where a dead letter goes back to, and its original headers (dlq_* removed)."""
    topic = ""
    original: Headers = []
    for name, value in headers:
        if name == "dlq_topic":
            topic = value.decode()
        elif not name.startswith(DLQ_PREFIX):
            original.append((name, value))
    if not topic:
        raise ValueError("not a dead letter: no dlq_topic header")
    # an operator asked for this record again: consumers must not drop it as a duplicate
    original = [(n, v) for n, v in original if n != REPLAYED] + [(REPLAYED, now_iso().encode())]
    return topic, original


def is_replayed(headers: Iterable[tuple[str, bytes]]) -> bool:
    """True for a record `carebus replay` sent back: dedup on event id must let it through."""
    return any(n == REPLAYED for n, _ in headers)


def header_text(headers: Iterable[tuple[str, bytes]], name: str) -> str:
    for n, v in headers:
        if n == name:
            return v.decode(errors="replace")
    return ""

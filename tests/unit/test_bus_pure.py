"""Pure parts of bus/: dedup, dead-letter records, settings, catalog, export."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.deadletter import (
    dead_letter,
    header_text,
    is_replayed,
    rejected_input,
    replay_target,
)
from bus.dedup import Deduplicator
from bus.settings import KafkaSettings, load_settings
from schemas.codes import EventType
from schemas.export import asyncapi, envelope_json_schema
from schemas.outcome import Issue, IssueCode, operation_outcome
from schemas.topics import CATALOG, DEAD_LETTER, REJECTED_INPUT, topic_for


def test_dedup_marks_only_after_success_and_forgets_oldest() -> None:
    d = Deduplicator(max_entries=3)
    assert not d.seen("a")  # seen() does not mark: a failed attempt is retried
    assert not d.seen("a")
    for i in "abcd":
        d.mark(i)
    assert "a" not in d and len(d) == 3 and d.seen("d")
    assert d.check_and_mark("e") and not d.check_and_mark("e")


def test_dead_letter_keeps_original_bytes_and_says_where_from() -> None:
    out = dead_letter(
        topic="care.stay.events",
        partition=2,
        offset=41,
        key=b"k",
        value=b"\x00raw",
        headers=[("ce_id", b"1"), ("dlq_reason", b"old")],
        reason="boom",
        group="routing",
        attempts=4,
    )
    assert out.topic == DEAD_LETTER.name and out.value == b"\x00raw" and out.key == b"k"
    assert header_text(out.headers, "dlq_reason") == "boom"  # stale dlq_* replaced
    assert [v for n, v in out.headers if n == "dlq_reason"] == [b"boom"]
    target, headers = replay_target(out.headers)
    assert target == "care.stay.events"
    assert headers[0] == ("ce_id", b"1") and is_replayed(headers)
    assert not any(n.startswith("dlq_") for n, _ in headers)
    with pytest.raises(ValueError, match="not a dead letter"):
        replay_target([("ce_id", b"1")])


def test_rejected_input_names_sender_and_reason_not_patient() -> None:
    issue = Issue(IssueCode.REQUIRED, "PV2-9 or EVN-3 must give the planned date", "PV2-9")
    out = rejected_input(
        raw=b"MSH|...",
        channel="mllp",
        sender="FINESS:750712184",
        issues=[issue],
        content_type="x-application/hl7-v2+er7",
    )
    assert out.topic == REJECTED_INPUT.name and out.value == b"MSH|..."
    assert "PV2-9: PV2-9 or EVN-3" in header_text(out.headers, "rejected_reason")
    assert header_text(out.headers, "rejected_sender") == "FINESS:750712184"


def test_operation_outcome_carries_location_and_code() -> None:
    oo = operation_outcome([Issue(IssueCode.VALUE, "bad system", "Bundle.entry[1].resource")])
    assert oo["issue"][0] == {
        "severity": "error",
        "code": "value",
        "diagnostics": "bad system",
        "expression": ["Bundle.entry[1].resource"],
    }


def test_settings_precedence_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('data_dir = "/srv/cb"\n[kafka]\nbootstrap = "k1:9092"\n[http]\nport = 9000\n')
    monkeypatch.setenv("CAREBUS_HTTP__PORT", "9100")
    monkeypatch.delenv("CAREBUS_KAFKA__BOOTSTRAP", raising=False)
    s = load_settings(cfg)
    assert s.kafka.bootstrap == "k1:9092" and s.http.port == 9100 and str(s.data_dir) == "/srv/cb"


def test_secrets_never_in_repr() -> None:
    k = KafkaSettings(
        security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="s3cr3t-value"
    )  # type: ignore[arg-type]
    assert "s3cr3t-value" not in repr(k)
    assert k.client_options()["sasl_plain_password"] == "s3cr3t-value"


def test_every_event_type_has_exactly_one_topic() -> None:
    seen = [e for t in CATALOG for e in t.event_types]
    assert sorted(seen) == sorted(EventType)
    assert topic_for("discharge.late-notice") == "care.sla.events"
    assert topic_for(EventType.DISCHARGE_PLANNED) == "care.stay.events"


def test_exports_describe_every_topic_and_header() -> None:
    schema = envelope_json_schema()
    assert {"ce_id", "ce_type", "traceparent", "content-type"} <= set(schema["properties"])
    doc = asyncapi()
    assert doc["asyncapi"].startswith("3.")
    assert {c["address"] for c in doc["channels"].values()} == {t.name for t in CATALOG}
    assert "referral_requested" in doc["components"]["messages"]


def test_key_groups_keep_offset_order_within_a_key() -> None:
    from aiokafka.structs import ConsumerRecord

    from bus.consumer import key_groups

    def rec(offset: int, key: bytes | None) -> ConsumerRecord:
        return ConsumerRecord("t", 0, offset, 0, 0, key, b"", None, 0, 0, [])

    keys = [b"a", b"b", b"a", None, b"c", b"b", None, b"a"]
    groups = key_groups([rec(i, k) for i, k in enumerate(keys)])
    assert [[r.offset for r in g] for g in groups] == [[0, 2, 7], [1, 5], [3, 6], [4]]


async def test_slot_released_lends_the_slot_during_a_wait() -> None:
    import asyncio

    from bus.consumer import _SLOT, _Slot, slot_released

    sem = asyncio.Semaphore(1)
    order: list[str] = []

    async def backing_off() -> None:
        slot = _Slot(sem)
        _SLOT.set(slot)
        await slot.acquire()
        async with slot_released():  # a backoff: the other key runs meanwhile
            order.append("backoff")
            await asyncio.sleep(0.05)
        assert slot.held  # taken back before the next attempt
        order.append("retry")
        slot.release()

    async def other() -> None:
        await asyncio.sleep(0.01)
        async with sem:
            order.append("other")

    await asyncio.gather(backing_off(), other())
    assert order == ["backoff", "other", "retry"]
    async with slot_released():  # outside a concurrent consumer: a no-op
        pass


def test_delivery_concurrency_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAREBUS_CONFIG", raising=False)
    monkeypatch.setenv("CAREBUS_MSSANTE__CONCURRENCY", "16")
    s = load_settings(None)
    assert s.mssante.concurrency == 16 and s.mssante.pool_size >= 8
    assert s.dmp.concurrency >= 1 and s.eparcours.concurrency >= 1
    monkeypatch.setenv("CAREBUS_DMP__CONCURRENCY", "0")
    with pytest.raises(ValueError, match="concurrency"):
        load_settings(None)

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.envelope import (
    Envelope,
    EnvelopeError,
    child_traceparent,
    header,
    new_event_id,
    new_traceparent,
)


def env(**kw: object) -> Envelope:
    base = dict(
        id=new_event_id(),
        type="discharge.planned",
        source="urn:oid:1.2.250.1.71.4.2.2|1750",
        subject="stay/urn:oid:1.2.3|V42",
        data=b'{"resourceType":"Bundle"}',
    )
    base.update(kw)
    return Envelope(**base)  # type: ignore[arg-type]


def test_encode_uses_cloudevents_binary_headers_and_case_key() -> None:
    e = env()
    key, value, headers = e.encode()
    names = [n for n, _ in headers]
    assert names[:6] == ["ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time", "ce_subject"]
    assert header(headers, "ce_specversion") == b"1.0"
    assert header(headers, "content-type") == b"application/fhir+json"
    assert key == b"stay/urn:oid:1.2.3|V42" and value is e.data
    assert header(headers, "ce_correlationid") == e.subject.encode()
    assert header(headers, "ce_causationid") == e.id.encode()


def test_decode_round_trip_and_extra_headers_kept() -> None:
    e = env(extra_headers=(("x-carebus-attempt", b"2"),))
    assert Envelope.decode(*e.encode()) == e


@pytest.mark.parametrize("drop", ["ce_specversion", "ce_id", "ce_source", "ce_type"])
def test_decode_refuses_missing_required_header(drop: str) -> None:
    key, value, headers = env().encode()
    with pytest.raises(EnvelopeError, match=drop):
        Envelope.decode(key, value, [(n, v) for n, v in headers if n != drop])


def test_decode_refuses_wrong_specversion_and_non_utf8() -> None:
    key, value, headers = env().encode()
    bad = [(n, b"0.3" if n == "ce_specversion" else v) for n, v in headers]
    with pytest.raises(EnvelopeError, match=r"must be 1\.0"):
        Envelope.decode(key, value, bad)
    bad = [(n, b"\xff\xfe" if n == "ce_type" else v) for n, v in headers]
    with pytest.raises(EnvelopeError, match="UTF-8"):
        Envelope.decode(key, value, bad)


def test_caused_event_keeps_case_and_trace_links_cause() -> None:
    root = env()
    child = root.caused(type="sla.reminder", source="urn:carebus:bus")
    assert child.id != root.id and child.causation_id == root.id
    assert child.correlation_id == root.correlation_id == root.subject
    assert child.traceparent[:36] == root.traceparent[:36]  # same trace id
    assert child.traceparent[36:52] != root.traceparent[36:52]  # new span


def test_traceparent_shapes() -> None:
    tp = new_traceparent()
    assert len(tp) == 55 and tp.startswith("00-") and tp.endswith("-01")
    assert child_traceparent("garbage") != "garbage" and len(child_traceparent("garbage")) == 55


@given(
    st.lists(st.tuples(st.text(min_size=1, max_size=20), st.binary(max_size=40)), max_size=8),
    st.binary(max_size=200),
)
def test_decode_of_arbitrary_records_only_raises_envelope_error(hdrs: list, value: bytes) -> None:
    try:
        Envelope.decode(b"k", value, hdrs)
    except EnvelopeError:
        pass

"""The log guard, the JSON log format and the W3C traceparent helpers (pure)."""

from __future__ import annotations

import logging

import orjson

from bus import tracing
from bus.logs import REDACTED, JsonFormatter, PatientDataFilter, scrub
from schemas.envelope import new_traceparent


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("carebus.test", logging.INFO, __file__, 1, msg, args or None, None)
    record.__dict__.update(extra)
    PatientDataFilter().filter(record)
    return record


def test_guard_blanks_patient_fields_ins_and_hl7() -> None:
    r = _record(
        "bundle %s ins %s",
        {"family": "Lefèvre", "given": ["Hélène"], "birthDate": "1958-03-14"},
        "258030319004510",
        patient="Hélène Lefèvre",
    )
    text = r.getMessage()
    for secret in ("Lefèvre", "Hélène", "258030319004510", "1958-03-14"):
        assert secret not in text
    assert r.patient == REDACTED
    assert "PID|" + REDACTED in scrub("MSH|^~\\&|X\rPID|||258030319004510^^^X||LEFEVRE^HELENE\r")
    assert scrub("rpps 10003456125 finess 030780100") == "rpps 10003456125 finess 030780100"


def test_json_line_has_the_trace_of_the_event_being_handled() -> None:
    tp = new_traceparent()
    token = tracing.use(tp)
    try:
        record = _record("delivered %s", "x")
        record.traceparent = tracing.CURRENT.get()
    finally:
        tracing.reset(token)
    line = orjson.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO" and line["logger"] == "carebus.test"
    assert line["message"] == "delivered x" and line["time"].endswith("Z")
    assert (line["trace_id"], line["span_id"]) == tuple(tp.split("-")[1:3])


def test_traceparent_continued_only_when_valid() -> None:
    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ours = tracing.continue_or_start(caller)
    assert ours.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert ours.split("-")[2] != "00f067aa0ba902b7"
    for bad in ("", "garbage", "ff-" + caller[3:], "00-" + "0" * 32 + caller[35:], caller.upper()):
        assert tracing.continue_or_start(bad).split("-")[1] != "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.outbound_headers() == {}
    token = tracing.use(ours)
    try:
        sent = tracing.outbound_headers()["traceparent"]
    finally:
        tracing.reset(token)
    assert sent.split("-")[1] == ours.split("-")[1] and sent != ours

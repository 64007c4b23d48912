"""Logging: text for humans, JSON lines for containers, and a guard against patient data.

`configure(settings.log, verbose)` (the CLI calls it) sets the root handler:
- `format = "text"`: `time level logger message [trace=…]`;
- `format = "json"` (`CAREBUS_LOG__FORMAT=json`, the container default): one JSON object
  per line with `time`, `level`, `logger`, `message`, and `trace_id` / `span_id` when the
  line was written while handling an event (bus.tracing), `exc` for a traceback.

The guard (`PatientDataFilter`) runs on every record when it is created, whatever the
handler (so also for pytest's caplog and for library loggers): CareBus code never logs
patient data, and if someone passes some anyway it is blanked before any handler sees
it: `extra=` fields named like patient data (patient, family, given, birth_date, ins,
nir, telecom…), INS/NIR numbers, FHIR name/birthDate/address members and HL7 PID
segments in the message or in a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from bus import tracing

REDACTED = "[redacted]"

#: `extra=` keys that are patient data whatever their value
PATIENT_FIELDS = frozenset(
    {
        "patient",
        "patient_name",
        "family",
        "given",
        "birth_date",
        "birthdate",
        "birthDate",
        "ins",
        "nir",
        "ipp",
        "address",
        "telecom",
        "phone",
        "email",
        "postcode",
        "pid",
    }
)
_FIELDS_LOWER = frozenset(f.lower() for f in PATIENT_FIELDS)
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "traceparent",
}
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # INS / NIR: 15 digits starting with 1 or 2 (sex), spaced or not
    (re.compile(r"(?<!\d)[12](?:[ .]?\d){14}(?!\d)"), "[INS]"),
    # FHIR JSON (or a Python repr of it): names, birth date, address, telecom
    (
        re.compile(
            r"""(["'](?:family|given|prefix|birthDate|line|city|postalCode|text)["']\s*:\s*)"""
            r"""(\[[^\]]*\]|"[^"]*"|'[^']*')"""
        ),
        rf'\1"{REDACTED}"',
    ),
    (re.compile(r"""(["']telecom["']\s*:\s*)\[[^\]]*\]"""), rf'\1"{REDACTED}"'),
    # HL7 v2 segments that carry the patient (PID, PD1, NK1) up to the segment end
    (re.compile(r"(?m)((?:^|[\r\n]|\\r)(?:PID|PD1|NK1)\|)[^\r\n\\]*"), rf"\1{REDACTED}"),
)


def scrub(text: str) -> str:
    """`text` with every known shape of patient data blanked."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class PatientDataFilter(logging.Filter):
    """Blanks patient data in a record (never drops the record: the event is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in list(record.__dict__):
            if key not in _STANDARD and key.lower() in _FIELDS_LOWER:
                setattr(record, key, REDACTED)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep the template only
            message = str(record.msg)
        clean = scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


_GUARD = PatientDataFilter()
_installed = False


def install_guard() -> None:
    """Run the guard (and stamp the current trace) on every record at creation. Idempotent."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.traceparent = tracing.CURRENT.get()
        _GUARD.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


def _iso(created: float) -> str:
    millis = int(created % 1 * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace_id/span_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = tracing.ids(getattr(record, "traceparent", None) or tracing.CURRENT.get())
        if ids:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """The human format, with the trace id appended when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = tracing.ids(getattr(record, "traceparent", None))
        return f"{line} [trace={ids[0]}]" if ids else line


def configure(fmt: str = "text", level: str | None = None, *, verbose: bool = False) -> None:
    """The process's logging: root handler on stderr, chosen format, the guard installed."""
    install_guard()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or ("INFO" if verbose else "WARNING"))
    logging.getLogger("aiokafka").setLevel(logging.WARNING if verbose else logging.ERROR)

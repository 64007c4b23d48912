"""The bus envelope: CloudEvents 1.0 Kafka binary binding around a FHIR message Bundle.

The value is the Bundle's JSON bytes, carried untouched (validated once at ingress,
never re-serialised); the metadata a router needs travels in headers so that hot
paths read headers, not FHIR. Plain slotted dataclass on purpose: encode/decode sit
on every hop and must cost microseconds, not a model validation.
"""

from __future__ import annotations

import os
import secrets
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

SPECVERSION = "1.0"
FHIR_JSON = "application/fhir+json"

# Kafka header names (CloudEvents Kafka protocol binding, binary content mode).
H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_SOURCE = "ce_source"
H_TYPE = "ce_type"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_CORRELATION = "ce_correlationid"  # CloudEvents extension: the case
H_CAUSATION = "ce_causationid"  # CloudEvents extension: the event that caused this one
H_TRACEPARENT = "traceparent"  # W3C trace context, the name OpenTelemetry propagators use
H_CONTENT_TYPE = "content-type"
#: when ingress accepted the inbound event (ISO UTC); kept on the work items it causes,
#: end-to-end latency (accept → routed, accept → delivered) is measured from it
H_INGRESS_TIME = "carebus_ingress_time"

_KNOWN = frozenset(
    {
        H_SPECVERSION,
        H_ID,
        H_SOURCE,
        H_TYPE,
        H_TIME,
        H_SUBJECT,
        H_CORRELATION,
        H_CAUSATION,
        H_TRACEPARENT,
        H_CONTENT_TYPE,
    }
)

Headers = list[tuple[str, bytes]]


class EnvelopeError(ValueError):
    """A Kafka record that is not a CareBus event (missing or malformed CloudEvents header)."""


def new_event_id() -> str:
    return str(uuid.uuid4())


def new_traceparent() -> str:
    """A fresh W3C traceparent (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace id, new span id: what a hop that re-emits an event propagates."""
    if not parent or len(parent) != 55 or parent[2] != "-":
        return new_traceparent()
    return f"{parent[:36]}{os.urandom(8).hex()}{parent[52:]}"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True, frozen=True)
class Envelope:
    """One event on the bus. `key` is the case id, so one case stays on one partition."""

    id: str
    type: str
    source: str
    subject: str  # the case id (also the Kafka key)
    data: bytes  # FHIR message Bundle JSON
    time: str = field(default_factory=now_iso)
    correlation_id: str = ""  # defaults to subject
    causation_id: str = ""  # defaults to id (a root event causes itself)
    traceparent: str = field(default_factory=new_traceparent)
    content_type: str = FHIR_JSON
    extra_headers: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if not self.correlation_id:
            object.__setattr__(self, "correlation_id", self.subject)
        if not self.causation_id:
            object.__setattr__(self, "causation_id", self.id)

    @property
    def key(self) -> bytes:
        return self.subject.encode()

    def caused(self, **changes: object) -> Envelope:
        """A follow-up event: same case and trace, caused by this one, with a new id/time."""
        base: dict[str, object] = {
            "id": new_event_id(),
            "time": now_iso(),
            "causation_id": self.id,
            "correlation_id": self.correlation_id,
            "traceparent": child_traceparent(self.traceparent),
            "extra_headers": (),
        }
        base.update(changes)
        return replace(self, **base)  # type: ignore[arg-type]

    def headers(self) -> Headers:
        h: Headers = [
            (H_SPECVERSION, b"1.0"),
            (H_ID, self.id.encode()),
            (H_SOURCE, self.source.encode()),
            (H_TYPE, self.type.encode()),
            (H_TIME, self.time.encode()),
            (H_SUBJECT, self.subject.encode()),
            (H_CORRELATION, self.correlation_id.encode()),
            (H_CAUSATION, self.causation_id.encode()),
            (H_TRACEPARENT, self.traceparent.encode()),
            (H_CONTENT_TYPE, self.content_type.encode()),
        ]
        h.extend(self.extra_headers)
        return h

    def encode(self) -> tuple[bytes, bytes, Headers]:
        """(key, value, headers) for a Kafka producer."""
        return self.key, self.data, self.headers()

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None, headers: Headers | tuple) -> Envelope:
        """Rebuild an envelope from a consumed record; refuses a record that is not an event."""
        h: dict[str, str] = {}
        extra: list[tuple[str, bytes]] = []
        for name, raw in headers:
            if name in _KNOWN:
                try:
                    h[name] = raw.decode() if raw is not None else ""
                except UnicodeDecodeError as exc:
                    raise EnvelopeError(f"header {name} is not UTF-8") from exc
            else:
                extra.append((name, raw))
        if h.get(H_SPECVERSION) != SPECVERSION:
            raise EnvelopeError(f"{H_SPECVERSION} must be 1.0, got {h.get(H_SPECVERSION)!r}")
        for required in (H_ID, H_SOURCE, H_TYPE):
            if not h.get(required):
                raise EnvelopeError(f"missing header {required}")
        subject = h.get(H_SUBJECT) or (key.decode(errors="replace") if key else "")
        if value is None:
            raise EnvelopeError("record has no value")
        return cls(
            id=h[H_ID],
            type=h[H_TYPE],
            source=h[H_SOURCE],
            subject=subject,
            data=value,
            time=h.get(H_TIME) or now_iso(),
            correlation_id=h.get(H_CORRELATION, ""),
            causation_id=h.get(H_CAUSATION, ""),
            traceparent=h.get(H_TRACEPARENT) or new_traceparent(),
            content_type=h.get(H_CONTENT_TYPE) or FHIR_JSON,
            extra_headers=tuple(extra),
        )


def ingress_time(headers: Headers | tuple) -> datetime | None:
    """The `carebus_ingress_time` of an event or work item (None if absent or unreadable)."""
    raw = header(headers, H_INGRESS_TIME)
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def header(headers: Headers | tuple, name: str) -> bytes | None:
    """First value of a header in a Kafka header list (None when absent)."""
    for n, v in headers:
        if n == name:
            return v
    return None

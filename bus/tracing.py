"""W3C trace context inside a CareBus process: which trace the current work belongs to.

The trace travels between processes in the events' `traceparent` header (see
schemas/envelope.py: `Envelope.caused()` keeps the trace id and takes a new span id).
Inside a process, the event being handled sets a context variable, so that log lines
carry its trace_id/span_id and outbound HTTP calls (DMP ITI-65, e-parcours rest-hooks)
send a `traceparent` continuing the same trace, without passing it through every call.
"""

from __future__ import annotations

import contextvars
import re

from schemas.envelope import child_traceparent, new_traceparent

HEADER = "traceparent"
_SHAPE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

#: the traceparent of the event this task is handling (None outside event handling)
CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "carebus_traceparent", default=None
)


def valid(value: str | None) -> bool:
    """A W3C traceparent we can continue: version 00 shape, non-zero ids, not version ff."""
    if not value:
        return False
    found = _SHAPE.match(value.strip())
    if found is None:
        return False
    version, trace_id, span_id, _ = found.groups()
    return version != "ff" and trace_id != "0" * 32 and span_id != "0" * 16


def continue_or_start(incoming: str | None) -> str:
    """The traceparent of an inbound message: a child of the caller's when it sent a
    valid one (same trace id, our own span id), else a new trace."""
    if incoming and valid(incoming):
        value = incoming.strip()
        # a future version's extra fields are dropped: we speak version 00
        return child_traceparent(f"00{value[2:55]}")
    return new_traceparent()


def ids(traceparent: str | None) -> tuple[str, str] | None:
    """(trace_id, span_id) of a traceparent, None when it is not a valid one."""
    if not valid(traceparent):
        return None
    parts = traceparent.strip().split("-")  # type: ignore[union-attr]
    return parts[1], parts[2]


def use(traceparent: str | None) -> contextvars.Token:
    """Make `traceparent` the current one (for log lines and outbound calls)."""
    return CURRENT.set(traceparent)


def reset(token: contextvars.Token) -> None:
    CURRENT.reset(token)


def outbound_headers() -> dict[str, str]:
    """Headers for an outbound HTTP call made while handling an event: a child span of
    the current trace. Empty outside event handling."""
    current = CURRENT.get()
    if not valid(current):
        return {}
    return {HEADER: child_traceparent(current)}

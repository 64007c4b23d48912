"""Subscription records: their life cycle and their event numbering, pure.

Why numbering lives here: the backport IG's promise to a subscriber is that event
numbers are sequential, so a gap means a missed event (fetch it with `$events`) and a
repeated number means a duplicate (ignore it). The bus delivers at least once, so the
number must be tied to the *work item* (one event for one subscription), not to the
delivery attempt: `assign` returns the number a work item already has, and only a new
work item takes the next one. The mapping is part of the record, which the store
persists (compacted topic) *before* the notification leaves, so a crash between the
two cannot give one event two numbers. Mappings of delivered items are kept for the
last `keep` items (enough to cover the uncommitted tail a restarted consumer replays);
undelivered ones are kept until delivered (a dead-lettered item replayed days later
still gets its number), up to a hard cap.

Status machine (R4 subscription-status codes): requested → active (handshake answered
2xx) | error (handshake failed) | off; active → error (delivery retries exhausted) | off;
error → active (a probe succeeded) | requested | off; off is final (deleted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

import orjson

from adapters.eparcours.filters import Filter

PENDING_CAP = 10_000  # undelivered mappings kept per subscription, at most


class Status(StrEnum):
    REQUESTED = "requested"
    ACTIVE = "active"
    ERROR = "error"
    OFF = "off"


class Content(StrEnum):
    EMPTY = "empty"
    ID_ONLY = "id-only"
    FULL_RESOURCE = "full-resource"


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.REQUESTED: frozenset({Status.ACTIVE, Status.ERROR, Status.OFF}),
    Status.ACTIVE: frozenset({Status.ERROR, Status.OFF}),
    Status.ERROR: frozenset({Status.ACTIVE, Status.REQUESTED, Status.OFF}),
    Status.OFF: frozenset(),
}


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Numbered:
    number: int
    delivered: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class SubscriptionRecord:
    """One subscription as the bus keeps it (and writes it to care.subscriptions)."""

    id: str
    owner: str  # API client id that created it: the only one who may see it
    topic: str  # SubscriptionTopic canonical URL
    endpoint: str
    secret: str  # HMAC key of the X-CareBus-Signature header
    filters: tuple[Filter, ...] = ()
    headers: tuple[str, ...] = ()  # "Name: value", sent with every notification
    content: Content = Content.ID_ONLY
    payload_type: str = "application/fhir+json"
    status: Status = Status.REQUESTED
    reason: str = ""
    heartbeat_s: int = 0  # 0: no heartbeat
    timeout_s: int = 0  # 0: the bus default
    max_count: int = 1
    end: str = ""  # FHIR instant after which nothing is sent
    error: str = ""  # why the status is error
    events: int = 0  # eventsSinceSubscriptionStart: the last number given
    numbers: Mapping[str, Numbered] = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    revision: int = 0

    @property
    def status_format(self) -> str:
        """ "r4b" (SubscriptionStatus resource) when the payload type asks for FHIR 4.3,
        else "r4" (the backport's Parameters), what an R4 platform understands."""
        return "r4b" if "fhirversion=4.3" in self.payload_type.replace(" ", "").lower() else "r4"

    def number_of(self, item_id: str) -> Numbered | None:
        return self.numbers.get(item_id)


def transition(
    record: SubscriptionRecord, to: Status, *, now: str, error: str = ""
) -> SubscriptionRecord:
    """The record in status `to`; raises IllegalTransition for a move the machine forbids."""
    if to == record.status:
        return replace(record, error=(error or record.error) if to is Status.ERROR else "")
    if to not in TRANSITIONS[record.status]:
        raise IllegalTransition(f"subscription {record.id}: {record.status} → {to} is not allowed")
    return replace(
        record,
        status=to,
        error=error if to is Status.ERROR else "",
        updated=now,
        revision=record.revision + 1,
    )


def _trim(numbers: dict[str, Numbered], keep: int) -> dict[str, Numbered]:
    delivered = [k for k, v in numbers.items() if v.delivered]
    pending = [k for k, v in numbers.items() if not v.delivered]
    drop = set(delivered[: max(0, len(delivered) - keep)])
    drop.update(pending[: max(0, len(pending) - PENDING_CAP)])
    return {k: v for k, v in numbers.items() if k not in drop}


def assign(
    record: SubscriptionRecord, item_id: str, *, now: str, keep: int = 256
) -> tuple[SubscriptionRecord, int, bool]:
    """(record, eventNumber, new?) for a work item: its number if it has one, else the next.

    Only a new number changes the record (and must be persisted before sending)."""
    known = record.numbers.get(item_id)
    if known is not None:
        return record, known.number, False
    number = record.events + 1
    numbers = _trim({**record.numbers, item_id: Numbered(number)}, keep)
    updated = replace(
        record, events=number, numbers=numbers, updated=now, revision=record.revision + 1
    )
    return updated, number, True


def mark_delivered(
    record: SubscriptionRecord, item_id: str, *, keep: int = 256
) -> SubscriptionRecord:
    """The record once the receiver acknowledged `item_id` (lets its mapping age out)."""
    known = record.numbers.get(item_id)
    if known is None or known.delivered:
        return record
    numbers = _trim({**record.numbers, item_id: Numbered(known.number, True)}, keep)
    return replace(record, numbers=numbers)


# --- serialisation (the value written to care.subscriptions) ------------------------
def to_json(record: SubscriptionRecord) -> bytes:
    data = asdict(record)
    data["filters"] = [[f.name, list(f.values)] for f in record.filters]
    data["numbers"] = {k: [v.number, v.delivered] for k, v in record.numbers.items()}
    return orjson.dumps(data)


def from_json(raw: bytes) -> SubscriptionRecord:
    data = orjson.loads(raw)
    data["filters"] = tuple(Filter(n, tuple(v)) for n, v in data.get("filters") or [])
    data["numbers"] = {
        k: Numbered(int(n), bool(d)) for k, (n, d) in (data.get("numbers") or {}).items()
    }
    data["headers"] = tuple(data.get("headers") or ())
    data["status"] = Status(data["status"])
    data["content"] = Content(data["content"])
    known = set(SubscriptionRecord.__dataclass_fields__)
    return SubscriptionRecord(**{k: v for k, v in data.items() if k in known})

"""What the bus sent by mail, by work item id: how a read receipt finds its case.

An MDN names the original mail only by `Original-Message-ID` (`<item-id@…>`); most
mail clients return no original header. The delivery.read event must still be keyed
by the case and caused by the routed event, so the sender records, before sending,
the few envelope facts a receipt needs (case, correlation, event id, trace, mailbox)
in a small file per item under `<data_dir>/mssante/sent/`. Written atomically (tmp +
rename) and overwritten on redelivery: same item, same facts. Item ids read from a
receipt are untrusted, so a lookup accepts only a UUID (no path can be smuggled in).
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from schemas.workitem import WorkItem

#: header the sender adds so a bounce that quotes our headers names its case
H_CASE = "X-CareBus-Case"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True, slots=True)
class SentRef:
    """The envelope facts of a delivered work item that its receipts need."""

    item_id: str
    event_id: str
    event_type: str
    subject: str  # the case id (Kafka key)
    correlation_id: str
    traceparent: str
    address: str
    recipient_kind: str = ""
    recipient_id: str = ""
    role: str = ""

    @classmethod
    def of(cls, item: WorkItem) -> SentRef:
        return cls(
            item_id=item.id,
            event_id=item.event.id,
            event_type=item.event.type,
            subject=item.event.subject,
            correlation_id=item.event.correlation_id,
            traceparent=item.event.traceparent,
            address=item.recipient.address,
            recipient_kind=item.recipient.kind.value,
            recipient_id=item.recipient.id,
            role=item.recipient.role,
        )


def valid_item_id(value: str) -> bool:
    return bool(_UUID.fullmatch(value))


class SentIndex:
    """File-per-item index under `<data_dir>/mssante/sent/<2 hex>/<item-id>.json`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "mssante" / "sent"

    def _path(self, item_id: str) -> Path:
        if not valid_item_id(item_id):
            raise ValueError(f"not a work item id: {item_id!r}")
        return self.root / item_id[:2] / f"{item_id}.json"

    def record(self, ref: SentRef) -> None:
        """Remember `ref` (blocking; call through a thread from async code)."""
        path = self._path(ref.item_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(orjson.dumps(asdict(ref)))
        os.replace(tmp, path)

    def lookup(self, item_id: str) -> SentRef | None:
        """The recorded facts, or None for an unknown or malformed item id."""
        try:
            data = orjson.loads(self._path(item_id).read_bytes())
        except (ValueError, OSError):
            return None
        try:
            return SentRef(**data)
        except TypeError:
            return None

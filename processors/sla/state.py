"""Per-case SLA state and its compact binary form.

The SLA agent keeps one `CaseState` per open case in a faust table, i.e. in memory on the
worker and in a compacted changelog topic. Hundreds of thousands of open cases per
territory make the size matter, so `to_bytes` packs a state with `struct` (timestamps as
int64 microseconds, enums as one byte, roles as a bit mask, event ids as 6-byte digests):
a referral (61-char case id) with reminder and escalation pending takes 129 bytes; with a full
history and dedup window, about 280 (plus ~30 bytes per acknowledgement awaited).
`to_dict` is the readable twin for logs, the dashboard and tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from processors.sla.policy import ROLES, Role

Kind = Literal["referral", "stay", "expertise"]
Status = Literal["open", "answered", "cancelled", "closed"]
DeadlineKind = Literal[
    "reminder", "escalation", "breach", "followup", "ack-reminder", "late-notice"
]

#: how many event-id digests a state remembers for deduplication: a case has few events,
#: and an older duplicate is harmless anyway (answers and cancels are idempotent by status)
SEEN_MAX = 12
#: bytes of an event-id digest (48 bits: collisions within 12 ids of a case are negligible)
DIGEST_SIZE = 6
#: how many fired deadlines a state remembers (audit trail; the topic keeps the rest)
HISTORY_MAX = 6

_KINDS: tuple[Kind, ...] = get_args(Kind)
_STATUSES: tuple[Status, ...] = get_args(Status)
_DEADLINE_KINDS: tuple[DeadlineKind, ...] = get_args(DeadlineKind)
_PRIORITIES: tuple[str | None, ...] = (None, "routine", "urgent", "asap", "stat")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NONE_TS = -(2**63)
_VERSION = 1
_HEAD = struct.Struct("<BBBBBqqIH")  # version kind status priority late opened due token len
_PENDING = struct.Struct("<qBBBIB")  # fire_at kind step roles token recipient-length
_FIRED = struct.Struct("<qBBI")  # fire_at kind step token


def _us(at: datetime | None) -> int:
    return _NONE_TS if at is None else (at - _EPOCH) // timedelta(microseconds=1)


def _dt(us: int) -> datetime | None:
    return None if us == _NONE_TS else _EPOCH + timedelta(microseconds=us)


def _mask(roles: tuple[Role, ...]) -> int:
    return sum(1 << ROLES.index(r) for r in set(roles))


def _roles(mask: int) -> tuple[Role, ...]:
    return tuple(r for i, r in enumerate(ROLES) if mask & (1 << i))


@dataclass(frozen=True, slots=True)
class Deadline:
    """A pending timer of one case; `token` is unique within the case and never reused."""

    fire_at: datetime
    kind: DeadlineKind
    token: int
    step: int = 0
    notify: tuple[Role, ...] = ()
    #: the individual recipient an ack-reminder is about (a directory id)
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class Fired:
    """A deadline that fired (or a notice emitted at once), kept as a short audit trail."""

    fire_at: datetime
    kind: DeadlineKind
    step: int = 0
    token: int = 0


@dataclass(slots=True)
class CaseState:
    """Everything the SLA machine needs to know about one case, and nothing more.

    Participants (who the performer is, their mailbox) are deliberately absent: roles are
    resolved by the agent from the case's resources, which keeps this state tiny.
    """

    case_id: str
    kind: Kind
    status: Status = "open"
    opened_at: datetime | None = None
    priority: str | None = None
    due_at: datetime | None = None
    answered_late: bool = False
    next_token: int = 1
    pending: list[Deadline] = field(default_factory=list)
    history: list[Fired] = field(default_factory=list)
    seen: list[bytes] = field(default_factory=list)

    def copy(self) -> CaseState:
        """A copy whose lists can be changed without touching this state."""
        return CaseState(
            self.case_id,
            self.kind,
            self.status,
            self.opened_at,
            self.priority,
            self.due_at,
            self.answered_late,
            self.next_token,
            list(self.pending),
            list(self.history),
            list(self.seen),
        )

    def new_token(self) -> int:
        """Allocate a token; tokens only grow, so a cancelled one never comes back."""
        token = self.next_token
        self.next_token += 1
        return token

    def remember(self, fired: Fired) -> None:
        """Append to the bounded history."""
        self.history.append(fired)
        del self.history[:-HISTORY_MAX]

    def to_bytes(self) -> bytes:
        """Compact binary form for the faust table (see module docstring)."""
        case = self.case_id.encode()
        parts = [
            _HEAD.pack(
                _VERSION,
                _KINDS.index(self.kind),
                _STATUSES.index(self.status),
                _PRIORITIES.index(self.priority) if self.priority in _PRIORITIES else 0,
                int(self.answered_late),
                _us(self.opened_at),
                _us(self.due_at),
                self.next_token,
                len(case),
            ),
            case,
            bytes([len(self.pending)]),
        ]
        for d in self.pending:
            who = (d.recipient or "").encode()
            kind = _DEADLINE_KINDS.index(d.kind)
            parts.append(
                _PENDING.pack(_us(d.fire_at), kind, d.step, _mask(d.notify), d.token, len(who))
            )
            parts.append(who)
        parts.append(bytes([len(self.history)]))
        for f in self.history:
            kind = _DEADLINE_KINDS.index(f.kind)
            parts.append(_FIRED.pack(_us(f.fire_at), kind, f.step, f.token))
        parts.append(bytes([len(self.seen)]))
        parts.extend(self.seen)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> CaseState:
        """Inverse of `to_bytes`; refuses an unknown format version."""
        if not data or data[0] != _VERSION:
            raise ValueError("unknown CaseState encoding version")
        _, kind, status, prio, late, opened, due, token, n = _HEAD.unpack_from(data)
        pos = _HEAD.size
        case_id = data[pos : pos + n].decode()
        pos += n
        pending: list[Deadline] = []
        count, pos = data[pos], pos + 1
        for _ in range(count):
            at, k, step, mask, tok, wlen = _PENDING.unpack_from(data, pos)
            pos += _PENDING.size
            who = data[pos : pos + wlen].decode() or None
            pos += wlen
            fire_at = _dt(at)
            assert fire_at is not None
            pending.append(Deadline(fire_at, _DEADLINE_KINDS[k], tok, step, _roles(mask), who))
        history: list[Fired] = []
        count, pos = data[pos], pos + 1
        for _ in range(count):
            at, k, step, tok = _FIRED.unpack_from(data, pos)
            pos += _FIRED.size
            fire_at = _dt(at)
            assert fire_at is not None
            history.append(Fired(fire_at, _DEADLINE_KINDS[k], step, tok))
        count, pos = data[pos], pos + 1
        size = DIGEST_SIZE
        seen = [data[pos + size * i : pos + size * (i + 1)] for i in range(count)]
        return cls(
            case_id,
            _KINDS[kind],
            _STATUSES[status],
            _dt(opened),
            _PRIORITIES[prio],
            _dt(due),
            bool(late),
            token,
            pending,
            history,
            seen,
        )

    def to_dict(self) -> dict[str, object]:
        """Readable JSON-ready form (ISO timestamps), e.g. for the coordinator dashboard."""

        def iso(at: datetime | None) -> str | None:
            return None if at is None else at.isoformat()

        return {
            "case_id": self.case_id,
            "kind": self.kind,
            "status": self.status,
            "opened_at": iso(self.opened_at),
            "priority": self.priority,
            "due_at": iso(self.due_at),
            "answered_late": self.answered_late,
            "next_token": self.next_token,
            "pending": [
                [iso(d.fire_at), d.kind, d.token, d.step, list(d.notify), d.recipient]
                for d in self.pending
            ],
            "history": [[iso(f.fire_at), f.kind, f.step, f.token] for f in self.history],
            "seen": [s.hex() for s in self.seen],
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CaseState:
        """Inverse of `to_dict`."""

        def at(value: object) -> datetime | None:
            return None if value is None else datetime.fromisoformat(str(value))

        pending = [
            Deadline(at(p[0]), p[1], p[2], p[3], tuple(p[4]), p[5])  # type: ignore[arg-type]
            for p in data["pending"]  # type: ignore[attr-defined]
        ]
        history = [
            Fired(at(h[0]), h[1], h[2], h[3])  # type: ignore[arg-type]
            for h in data["history"]  # type: ignore[attr-defined]
        ]
        return cls(
            str(data["case_id"]),
            data["kind"],  # type: ignore[arg-type]
            data["status"],  # type: ignore[arg-type]
            at(data["opened_at"]),
            data["priority"],  # type: ignore[arg-type]
            at(data["due_at"]),
            bool(data["answered_late"]),
            int(data["next_token"]),  # type: ignore[call-overload]
            pending,
            history,
            [bytes.fromhex(s) for s in data["seen"]],  # type: ignore[attr-defined]
        )

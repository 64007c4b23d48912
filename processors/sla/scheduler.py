"""DeadlineQueue: the in-process timer heap of the SLA agent.

One worker holds the pending deadlines of the partitions it owns, up to about a million,
without a Python object per entry beyond one int: the heap is a list of ints
`fire_us << 32 | slot` (one int comparison per heap step, about three times faster than
tuples), and a slot is a position in two parallel arrays (`case_id` reference, token).
The per-case index maps a case id to its slot, or to a short list of slots when it has
several timers. Measured with tracemalloc at 1,000,000 timers: 120 bytes per timer
(137 with three timers per case), plus the case-id string when nothing else holds it.

Cancellation is lazy. Instead of a generation counter stored in every entry, the slot
itself serves as the generation: cancelling marks the slot dead (its case reference is
cleared) and removes it from the index; the heap entry is skipped and its slot recycled
when it reaches the top. A slot is reused only once its heap entry
is gone, so a stale entry can never wake up as somebody else's timer. Rescheduling a live
token cancels the old slot. The heap is compacted when dead entries outnumber live ones.

Contract with the faust agent (the queue is a cache, `CaseState` in the table is the truth):
1. On partition assignment (and so on restart), rebuild: `requeue(queue, states)` for the
   states of the assigned partitions; on revocation, `queue.cancel(case_id)` for theirs.
2. After `on_event`, apply `Effects.cancel` (`queue.cancel(case_id, d.token)`) then
   `Effects.schedule` (`queue.schedule(case_id, d.fire_at, d.token)`).
3. A timer task sleeps until `next_due()` (capped to ~1 s so new earlier deadlines are
   seen), then for each `pop_due(now)` entry loads the case state and calls
   `machine.on_due(state, entry.token, now)`. The machine fires only tokens still pending
   in the state, so stale entries, duplicates after a rebuild, or a pop replayed after a
   crash emit nothing. Send the notices *before* writing the new state: a crash in between
   re-fires a notice with the same deterministic event id, which consumers deduplicate,
   whereas the other order could lose it.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from processors.sla.calendar import as_utc

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1


def _micros(at: datetime) -> int:
    return (as_utc(at) - _EPOCH) // _US


class Due(NamedTuple):
    """A due timer: which case, which token, when it was meant to fire (µs since epoch)."""

    fire_us: int
    case_id: str
    token: int

    @property
    def fire_at(self) -> datetime:
        """Firing time as an aware UTC datetime (exact, no float rounding)."""
        return _EPOCH + timedelta(microseconds=self.fire_us)


class _Pending(Protocol):
    fire_at: datetime
    token: int


class _State(Protocol):
    case_id: str

    @property
    def pending(self) -> Iterable[_Pending]: ...


class DeadlineQueue:
    """Heap of (case, token) timers with lazy cancellation; not thread-safe (one loop)."""

    __slots__ = ("_case", "_dead", "_free", "_heap", "_index", "_live", "_token")

    def __init__(self) -> None:
        self._heap: list[int] = []
        self._case: list[str | None] = []
        self._token = array("q")
        self._free: list[int] = []
        self._index: dict[str, int | list[int]] = {}
        self._live = 0
        self._dead = 0

    def __len__(self) -> int:
        """Number of live (scheduled, not cancelled, not popped) timers."""
        return self._live

    def __contains__(self, key: object) -> bool:
        """`(case_id, token) in queue`: is that timer live?"""
        if not isinstance(key, tuple) or len(key) != 2 or not isinstance(key[0], str):
            return False
        return any(self._token[s] == key[1] for s in self._slots(key[0]))

    def _slots(self, case_id: str) -> list[int]:
        found = self._index.get(case_id)
        if found is None:
            return []
        return [found] if isinstance(found, int) else list(found)

    def _unindex(self, case_id: str, slot: int) -> None:
        found = self._index[case_id]
        if isinstance(found, int):
            del self._index[case_id]
            return
        found.remove(slot)
        if len(found) == 1:
            self._index[case_id] = found[0]

    def schedule(self, case_id: str, fire_at: datetime, token: int) -> None:
        """Arm a timer; scheduling a live token again moves it (the old entry dies)."""
        fire_us = _micros(fire_at)
        if fire_us < 0:
            raise ValueError("deadlines before 1970 are not supported")
        self.cancel(case_id, token)
        if self._free:
            slot = self._free.pop()
            self._case[slot] = case_id
            self._token[slot] = token
        else:
            slot = len(self._case)
            if slot > _SLOT_MASK:
                raise OverflowError("too many timers in one queue")
            self._case.append(case_id)
            self._token.append(token)
        found = self._index.get(case_id)
        if found is None:
            self._index[case_id] = slot
        elif isinstance(found, int):
            self._index[case_id] = [found, slot]
        else:
            found.append(slot)
        heapq.heappush(self._heap, fire_us << _SLOT_BITS | slot)
        self._live += 1

    def cancel(self, case_id: str, token: int | None = None) -> int:
        """Cancel one token of a case, or every timer of the case; return how many."""
        removed = 0
        for slot in self._slots(case_id):
            if token is None or self._token[slot] == token:
                self._case[slot] = None
                self._unindex(case_id, slot)
                removed += 1
        if removed:
            self._live -= removed
            self._dead += removed
            if len(self._heap) > 1024 and self._dead > self._live:
                self.compact()
        return removed

    def _drop_dead_top(self) -> None:
        heap, case = self._heap, self._case
        while heap and case[heap[0] & _SLOT_MASK] is None:
            self._free.append(heapq.heappop(heap) & _SLOT_MASK)
            self._dead -= 1

    def next_due(self) -> datetime | None:
        """When the earliest live timer fires, or None when the queue is empty."""
        self._drop_dead_top()
        if not self._heap:
            return None
        return _EPOCH + timedelta(microseconds=self._heap[0] >> _SLOT_BITS)

    def pop_due(self, now: datetime, limit: int | None = None) -> list[Due]:
        """Remove and return the live timers due at `now`, earliest first.

        `limit` bounds one batch so a long backlog does not stall the event loop.
        """
        bound = (_micros(now) + 1) << _SLOT_BITS
        heap, case, tokens, free, pop = (
            self._heap,
            self._case,
            self._token,
            self._free,
            heapq.heappop,
        )
        out: list[Due] = []
        todo = len(heap) if limit is None else limit
        while heap and heap[0] < bound and len(out) < todo:
            key = pop(heap)
            slot = key & _SLOT_MASK
            free.append(slot)
            case_id = case[slot]
            if case_id is None:
                self._dead -= 1
                continue
            case[slot] = None
            self._unindex(case_id, slot)
            out.append(Due(key >> _SLOT_BITS, case_id, tokens[slot]))
        self._live -= len(out)
        return out

    def compact(self) -> None:
        """Drop every dead entry now (O(n)); memory then tracks live timers only."""
        case = self._case
        alive = [k for k in self._heap if case[k & _SLOT_MASK] is not None]
        self._free.extend(k & _SLOT_MASK for k in self._heap if case[k & _SLOT_MASK] is None)
        heapq.heapify(alive)
        self._heap = alive
        self._dead = 0


def requeue(queue: DeadlineQueue, states: Iterable[_State]) -> int:
    """Arm every pending deadline of `states` (restart, rebalance); return how many."""
    count = 0
    for state in states:
        for d in state.pending:
            queue.schedule(state.case_id, d.fire_at, d.token)
            count += 1
    return count

"""Dedup on event id: the other half of at-least-once delivery.

Offsets are committed after processing, so a crash replays the uncommitted tail; a
bounded LRU of recently processed ids turns that replay into no-ops. Ids are marked
only after their effect succeeded, so a failed attempt is retried, not skipped.
"""

from __future__ import annotations

from collections import OrderedDict


class Deduplicator:
    """Bounded memory of processed event ids (oldest forgotten first)."""

    def __init__(self, max_entries: int = 200_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._max = max_entries

    def seen(self, event_id: str) -> bool:
        """True when the id was already processed (and refreshes its place)."""
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return True
        return False

    def mark(self, event_id: str) -> None:
        self._seen[event_id] = None
        self._seen.move_to_end(event_id)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def check_and_mark(self, event_id: str) -> bool:
        """Atomic 'first time?' for effects that cannot fail half-way: True = new."""
        if self.seen(event_id):
            return False
        self.mark(event_id)
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._seen

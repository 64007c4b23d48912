"""Due deadlines become ticks on care.sla.ticks; a tick the broker refuses is re-armed.

A tick is the only hand-off between a worker's timer and the agent that fires the
deadline on the case's partition. faust's `send` returns once the record is buffered;
the broker's answer comes later, on the returned future. A refusal there (an
InvalidTimestamp from a worker clock stepped beyond the broker's tolerance, an ACL, a
deleted topic) used to be logged by faust and nothing more: the deadline had left the
queue and never fired until the next recovery. So every tick is tracked from the pop
until the agent receives it; a refused one goes back in the queue at its own firing time,
and the timer holds off for `retry_s` (on the monotonic clock, which NTP does not step) so
a broker that keeps refusing is not hammered every tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import Counter

from bus.metrics import LATE_DEADLINES, REGISTRY
from processors.context import Processors
from processors.sla.scheduler import Due

log = logging.getLogger("carebus.processors")

REFUSED = Counter(
    "carebus_sla_ticks_refused_total",
    "Deadline ticks the broker refused (re-armed and retried)",
    registry=REGISTRY,
)


class Ticker:
    """The worker's timer side: pop due deadlines, send their ticks, track them."""

    def __init__(self, ctx: Processors, ticks: Any, retry_s: float = 5.0) -> None:
        self.ctx = ctx
        self.ticks = ticks  # the faust topic care.sla.ticks (raw serializers)
        self.retry_s = retry_s
        #: (case, token) → fire time (µs) of ticks sent and not yet received back: the
        #: "late" pending deadlines; a backlog here means the agent is behind its clock
        self.in_flight: dict[tuple[str, int], int] = {}
        self._hold_until = 0.0  # monotonic: no pops before, after a refusal
        self._last_warning = 0.0

    async def fire_due(self, limit: int = 5000) -> int:
        """Send the ticks of the deadlines due now; return how many were handed over."""
        if time.monotonic() < self._hold_until:
            return 0
        due = self.ctx.queue.pop_due(self.ctx.clock(), limit=limit)
        sent = 0
        try:
            for d in due:
                self.in_flight[(d.case_id, d.token)] = d.fire_us
                fut = await self.ticks.send(key=d.case_id.encode(), value=str(d.token).encode())
                fut.add_done_callback(lambda f, d=d: self._answered(d, f))
                sent += 1
        finally:
            # popped but not handed to the producer (the timer cancelled by a rebalance,
            # a send refused at once): back in the queue, or it would never fire
            for d in due[sent:]:
                self._rearm(d)
        if due:
            LATE_DEADLINES.set(len(self.in_flight))
        return sent

    def landed(self, case_id: str, token: int) -> None:
        """The agent received the tick (whatever it decided): no longer in flight."""
        if self.in_flight.pop((case_id, token), None) is not None:
            LATE_DEADLINES.set(len(self.in_flight))

    def reset(self) -> None:
        """A new assignment: the queue was rebuilt from the table, which re-arms all."""
        self.in_flight.clear()
        LATE_DEADLINES.set(0)

    def _answered(self, d: Due, fut: asyncio.Future) -> None:
        error = None if not fut.cancelled() else "cancelled"
        if error is None and fut.exception() is not None:
            error = type(fut.exception()).__name__
        if error is None:
            return
        REFUSED.inc()
        self._hold_until = time.monotonic() + self.retry_s
        if (case_token := (d.case_id, d.token)) in self.in_flight:
            self._rearm(d)
            LATE_DEADLINES.set(len(self.in_flight))
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning(
                "SLA: the broker refused a deadline tick (%s, case %s): re-armed, retrying "
                "in %.0f s; check the worker's clock against the brokers' if InvalidTimestamp",
                error,
                case_token[0],
                self.retry_s,
            )

    def _rearm(self, d: Due) -> None:
        self.in_flight.pop((d.case_id, d.token), None)
        self.ctx.queue.schedule(d.case_id, d.fire_at, d.token)

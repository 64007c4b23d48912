"""The retention sweep: forget finished cases (processors/sla/retention.py) in the tables.

A faust table can only be written by the agent, in the context of the event being
processed (the changelog record goes to that event's partition). So the sweep, a timer,
only reads the worker's own table entries and sends a command per case to
care.sla.ticks, keyed by the case like the deadline ticks; the agent receives it on the
case's partition, judges the case again with the state it has *then* (an event may have
arrived meanwhile) and deletes or dates it. A delete writes a tombstone to both
changelogs, so compaction also drops the case from Kafka and the next recovery skips it.

Commands are idempotent (a replayed "purge" of a forgotten case is a no-op), and
at most `MAX_PER_SWEEP` leave per sweep: a territory's first sweep after an upgrade, or a
long-idle backlog, spreads over several intervals instead of flooding the tick topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any

import faust
from prometheus_client import Counter, Gauge

from bus.metrics import REGISTRY
from processors.context import Processors
from processors.routing.parties import CaseParties
from processors.sla.retention import Verdict, stamp, verdict
from processors.sla.state import CaseState

log = logging.getLogger("carebus.processors")

PURGE, TOUCH = b"purge", b"touch"
COMMANDS: dict[Verdict, bytes] = {"purge": PURGE, "touch": TOUCH}
MAX_PER_SWEEP = 10_000

FORGOTTEN = Counter(
    "carebus_sla_cases_forgotten_total",
    "Finished cases removed from the SLA tables after their retention",
    registry=REGISTRY,
)
TRACKED = Gauge(
    "carebus_sla_cases_tracked",
    "Cases in this worker's tables (parties or SLA state), at the last sweep",
    registry=REGISTRY,
)


def _judge(raw_parties: bytes | None, raw_state: bytes | None, ctx: Processors) -> Verdict:
    return verdict(
        CaseParties.from_bytes(raw_parties) if raw_parties else None,
        CaseState.from_bytes(raw_state) if raw_state else None,
        ctx.clock(),
        ctx.policies.retention,
    )


class Sweep:
    """The timer's side (`run`) and the agent's side (`apply`) of the retention rule."""

    def __init__(
        self, ctx: Processors, cases: faust.Table, parties: faust.Table, ticks: Any
    ) -> None:
        self.ctx, self.cases, self.parties, self.ticks = ctx, cases, parties, ticks

    async def run(self) -> int:
        """Send a command for each case to forget or to date; return how many were sent."""
        started = time.perf_counter()
        keys = list(dict.fromkeys([*self.parties.keys(), *self.cases.keys()]))
        TRACKED.set(len(keys))
        sent = 0
        for i, key in enumerate(keys):
            judged = _judge(self.parties.get(key), self.cases.get(key), self.ctx)
            if judged != "keep":
                await self.ticks.send(key=key.encode(), value=COMMANDS[judged])
                sent += 1
                if sent >= MAX_PER_SWEEP:
                    break
            if i % 5000 == 4999:  # let heartbeats and the agent run during a long sweep
                await asyncio.sleep(0)
        if sent:
            log.info(
                "SLA retention: %d of %d cases to forget or date (%.2fs)",
                sent,
                len(keys),
                time.perf_counter() - started,
            )
        return sent

    def apply(self, case_id: str, command: bytes) -> None:
        """In the agent, on the case's partition: judge again, then delete or date."""
        raw_parties, raw_state = self.parties.get(case_id), self.cases.get(case_id)
        judged = _judge(raw_parties, raw_state, self.ctx)
        if judged == "purge" and command == PURGE:
            if raw_parties is not None:
                del self.parties[case_id]
            if raw_state is not None:
                del self.cases[case_id]
            FORGOTTEN.inc()
        elif judged == "touch":
            known = CaseParties.from_bytes(raw_parties) if raw_parties else CaseParties()
            self.parties[case_id] = replace(known, touched=stamp(self.ctx.clock())).to_bytes()

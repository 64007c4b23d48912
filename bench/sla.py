"""SLA scale: memory per pending deadline, firing lateness, recovery time (no broker).

The issue asks whether one worker holds 100,000 pending deadlines (and a territory's
worst case, 1,000,000) and still fires each within a second, and how long a restarted
worker needs before its deadlines are armed again. The worker's SLA data is exactly
two structures, so that is what this measures, with the real code on both:

- the table: `dict[case id, CaseState.to_bytes()]` (the faust memory store is a dict;
  the changelog copy lives in Kafka, not in the worker);
- the timer: one `DeadlineQueue` holding every pending deadline of those cases.

States are made by the SLA machine itself (`on_event` on urgent referrals: a reminder
and an escalation per case, so N deadlines = N/2 cases), with ~60-character case ids
like real ones. What is *not* measured: the broker round trip of a tick
(care.sla.ticks → SLA agent) and the notice's publication, which
tests/integration/test_processors_resilience.py measures end to end (~20–500 ms), and
reading the changelog back from Kafka on recovery.

Figures (`run()` returns name → one value per run; `UNITS` gives each unit):

- memory: tracemalloc around building the table, then the queue *the way a restarted
  worker builds it* (`requeue` from the bytes, as `rebuild_queue` does, so the queue
  holds its own case-id strings); per pending deadline.
- lateness: the agent loop, simulated: every 0.2 s (the worker's timer interval) pop
  the due entries (limit 5000, as `fire_due`), and for each one decode the state,
  `on_due`, encode the new state, as `on_tick` does; lateness = clock when `on_due`
  runs minus the deadline's `fire_at`. The clock is the wall clock shifted so that the
  loop starts at the first deadline (building a million states takes longer than the
  window). Deadlines arrive at 5,000/s: 100,000 spread over 20 s all fire; with
  1,000,000 (spread over 200 s) each run measures one 20 s window while the queue still
  holds 1,000,000 → 700,000, so the two sizes differ only by the queue's size, which is
  the question. Tick granularity alone puts p50 near 100 ms.
- capacity: the same loop on a backlog (everything already due, no sleeping): how many
  deadlines per second one worker's CPU can fire. A burst of more than that per second
  (e.g. 1,000,000 all due within 20 s = 50,000/s) is late by backlog / capacity.
- recovery: `requeue(DeadlineQueue(), CaseState.from_bytes(v) for v in table)` for
  100,000 pending deadlines, i.e. what `rebuild_queue` does once faust restored the table.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from processors.sla.machine import EventFacts, on_due, on_event
from processors.sla.policy import Reminder, SlaPolicies, SlaPolicy
from processors.sla.scheduler import DeadlineQueue, requeue
from processors.sla.state import CaseState
from schemas.codes import EventType

#: the worker's timer interval (Processors.tick_interval_s) and batch (fire_due's limit)
TICK_S = 0.2
BATCH = 5000
#: deadlines falling due per second in the lateness runs: 100,000 over a 20 s window
RATE = 5000.0
WINDOW_S = 20.0
#: reminder at the due date, escalation 1 s later (24/7 clock: no calendar maths at fire)
POLICIES = SlaPolicies(
    policies=(
        SlaPolicy(
            name="bench-urgent",
            applies_to=EventType.REFERRAL_REQUESTED,
            priorities=("urgent",),
            business_hours=False,
            due="1s",
            reminder_at=(Reminder(),),
            escalate_after="1s",
        ),
    )
)
_DUE = timedelta(seconds=1)
_PER_CASE = 2  # pending deadlines per case (reminder + escalation)

UNITS: dict[str, str] = {}


def _name(label: str, unit: str) -> str:
    UNITS[label] = unit
    return label


def _k(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def case_id(i: int) -> str:
    """A realistic case id (61 characters, like the referral ids of the samples)."""
    return f"referral/https://carebus.fr/fhir/sid/referral|ADR-2025-{i:09d}"


def build_table(deadlines: int, first: datetime, spread_s: float) -> dict[str, bytes]:
    """The SLA table after `deadlines / 2` urgent referrals whose reminders fall due
    evenly over `spread_s` from `first` (escalations 1 s after each reminder)."""
    cases = deadlines // _PER_CASE
    step = spread_s / cases
    table: dict[str, bytes] = {}
    for i in range(cases):
        cid = case_id(i)
        when = first - _DUE + timedelta(seconds=i * step)
        facts = EventFacts(case_id=cid, event_id=f"bench-{i}", time=when, priority="urgent")
        state, fx = on_event(None, EventType.REFERRAL_REQUESTED, facts, when, POLICIES)
        assert state is not None and len(fx.schedule) == _PER_CASE
        table[cid] = state.to_bytes()
    return table


def rebuild(table: dict[str, bytes]) -> DeadlineQueue:
    """What `rebuild_queue` does after a restart, minus the faust plumbing."""
    queue = DeadlineQueue()
    requeue(queue, (CaseState.from_bytes(v) for v in table.values() if v))
    return queue


def restored(table: dict[str, bytes]) -> tuple[dict[str, bytes], DeadlineQueue, float, float]:
    """What a restarted worker holds, rebuilt under tracemalloc: the table as faust
    restores it from changelog records, and the queue `rebuild_queue` makes from it.

    Only the final structures are traced: the records are prepared beforehand (in a
    worker they are Kafka's buffers) and so are the decoded states (transient: garbage
    once requeued), because tracing every temporary of a million `from_bytes` calls
    would take minutes. The queue gets its own copy of each case id, as after a real
    restart (`from_bytes` decodes a new string; nothing else keeps it).
    Returns (table, queue, bytes per deadline for both, bytes per deadline for the queue).
    """
    records = [(len(k.encode()), k.encode() + v) for k, v in table.items()]
    states = [CaseState.from_bytes(v) for v in table.values()]
    deadlines = sum(len(s.pending) for s in states)
    del table
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        restored_table = {rec[:n].decode(): rec[n:] for n, rec in records}
        del records
        gc.collect()
        with_table = tracemalloc.get_traced_memory()[0]
        queue = DeadlineQueue()
        for state in states:
            own_id = state.case_id.encode().decode()
            for d in state.pending:
                queue.schedule(own_id, d.fire_at, d.token)
        gc.collect()
        with_queue = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(queue) == deadlines
    return (
        restored_table,
        queue,
        (with_queue - before) / deadlines,
        (with_queue - with_table) / deadlines,
    )


def _fire(
    queue: DeadlineQueue, table: dict[str, bytes], now: float, clock_shift: float
) -> list[float]:
    """One timer tick: pop what is due and apply it, as fire_due + on_tick do.
    Returns the lateness (s) of each deadline fired."""
    late: list[float] = []
    for due in queue.pop_due(datetime.fromtimestamp(now, UTC), limit=BATCH):
        state = CaseState.from_bytes(table[due.case_id])
        at = time.time() - clock_shift
        new, notices, again = on_due(state, due.token, datetime.fromtimestamp(at, UTC))
        assert notices, "a deadline popped as due did not fire"
        late.append(at - due.fire_us / 1e6)
        for d in again:
            queue.schedule(due.case_id, d.fire_at, d.token)
        table[due.case_id] = new.to_bytes()
    return late


def fire_window(
    queue: DeadlineQueue, table: dict[str, bytes], clock_shift: float, until: float
) -> list[float]:
    """Run the timer loop until the (shifted) clock reaches `until` (epoch s) or the
    queue is empty; a tick that overruns its interval is followed by the next at once,
    as faust's timer does."""
    late: list[float] = []
    next_tick = time.time()
    while len(queue):
        now = time.time() - clock_shift
        if now >= until:
            break
        late += _fire(queue, table, now, clock_shift)
        next_tick += TICK_S
        pause = next_tick - time.time()
        if pause > 0:
            time.sleep(pause)
        else:
            next_tick = time.time()
    return late


def quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lateness_runs(deadlines: int, runs: int) -> dict[str, list[float]]:
    """Memory (measured once: it is deterministic) and lateness p50/p99 (ms) per run.

    A run is one 20 s window. When the deadlines span more than the windows to run
    (1,000,000 span 200 s), the windows follow each other on the same structures;
    otherwise (100,000 span 20 s) each run builds a fresh table and queue.
    """
    size = _k(deadlines)
    spread = deadlines / RATE  # seconds over which the deadlines fall due
    mem_total: list[float] = []
    mem_queue: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    table: dict[str, bytes] = {}
    queue = DeadlineQueue()
    start = window = 0.0
    for _ in range(runs):
        window += WINDOW_S
        if window >= spread or not len(queue):
            first = datetime.now(UTC)
            table = build_table(deadlines, first, spread)
            if mem_total:
                queue = rebuild(table)
            else:
                table, queue, total, alone = restored(table)
                mem_total.append(total)
                mem_queue.append(alone)
            start, window = first.timestamp(), 0.0
        # the clock reads the window's start now, however long the build took
        shift = time.time() - (start + window)
        late = fire_window(queue, table, shift, start + window + WINDOW_S)
        assert late, "nothing fired"
        p50.append(quantile(late, 0.50) * 1000)
        p99.append(quantile(late, 0.99) * 1000)
    return {
        _name(f"sla memory per pending deadline, table + queue @{size}", "bytes"): mem_total,
        _name(f"sla memory per pending deadline, queue alone @{size}", "bytes"): mem_queue,
        _name(f"sla firing lateness p50 @{size} pending", "ms"): p50,
        _name(f"sla firing lateness p99 @{size} pending", "ms"): p99,
    }


def capacity(deadlines: int = 50_000, runs: int = 3) -> list[float]:
    """Deadlines fired per second on a backlog (everything due, no sleeping)."""
    out = []
    for _ in range(runs):
        first = datetime.now(UTC) - timedelta(hours=1)
        table = build_table(deadlines, first, 60.0)
        queue = rebuild(table)
        now = time.time()
        t0 = time.perf_counter()
        fired = 0
        while len(queue):
            fired += len(_fire(queue, table, now, 0.0))
        out.append(fired / (time.perf_counter() - t0))
    return out


def recovery(deadlines: int = 100_000, runs: int = 3) -> list[float]:
    """Seconds to requeue `deadlines` pending deadlines from their serialized states."""
    table = build_table(deadlines, datetime.now(UTC) + timedelta(hours=1), 3600.0)
    out = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        queue = rebuild(table)
        out.append(time.perf_counter() - t0)
        assert len(queue) == deadlines
    return out


def run(runs: int = 3, sizes: tuple[int, ...] = (100_000, 1_000_000)) -> dict[str, list[float]]:
    """Every SLA scale figure; each list has one value per run (memory: per build)."""
    out: dict[str, list[float]] = {}
    for n in sizes:
        out.update(lateness_runs(n, runs))
    out[_name("sla firing capacity, one worker (decode + on_due + encode)", "deadlines/s")] = (
        capacity(runs=runs)
    )
    out[_name("sla recovery: requeue 100k pending deadlines from bytes", "s")] = recovery(runs=runs)
    return out


if __name__ == "__main__":  # pragma: no cover - `python -m bench.sla` prints the figures
    for measure, values in run().items():
        print(f"{measure}: {[round(v, 3) for v in values]} {UNITS[measure]}")

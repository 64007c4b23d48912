"""Fault (e): the wall clock steps forward and backward around SLA deadlines.

The SLA agent (processors/app.py) reads the wall clock (`Processors.clock`) twice per
deadline: when its timer pops due entries from the DeadlineQueue, and when the tick
comes back through care.sla.ticks and `on_due` decides. NTP corrections, a VM resumed
from suspend or an operator fixing the date can move that clock either way between the
two. Deadlines are wall-clock instants on purpose (a business deadline is "Monday 09:30",
not "N seconds after the event"), so the wall clock is the right reference there; the
timer *period* is faust's `app.timer`, which sleeps on the event loop's monotonic clock,
so a backward step never stalls the timer itself.

What must hold whatever the clock does: every deadline fires exactly once, never while
the clock reads before its instant, and none is left pending once the clock has passed it
and the queue has been drained (no skip). The agent loop is simulated on the pure queue
and machine, the clock injected.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.sla.machine import CaseState, EventFacts, on_due, on_event
from processors.sla.policy import SlaPolicies
from processors.sla.scheduler import DeadlineQueue, requeue
from schemas.codes import EventType as E

PARIS = ZoneInfo("Europe/Paris")
POLICIES = SlaPolicies()
T0 = datetime(2026, 1, 9, 17, 30, tzinfo=PARIS)  # Friday evening


class Agent:
    """The SLA agent's timer + tick path (processors/app.py fire_due / on_tick), pure."""

    def __init__(self) -> None:
        self.queue = DeadlineQueue()
        self.states: dict[str, CaseState] = {}
        self.fired: Counter[tuple[str, int]] = Counter()
        self.early: list[tuple[str, int, datetime, datetime]] = []
        self.ticks: list[tuple[str, int]] = []  # in flight on care.sla.ticks

    def open(self, case: str, priority: str, at: datetime) -> None:
        facts = EventFacts(case_id=case, event_id=f"ev-{case}", time=at, priority=priority)
        state, fx = on_event(None, E.REFERRAL_REQUESTED, facts, at, POLICIES)
        assert state is not None
        self.states[case] = state
        for d in fx.schedule:
            self.queue.schedule(case, d.fire_at, d.token)

    def timer(self, now: datetime) -> None:
        self.ticks += [(d.case_id, d.token) for d in self.queue.pop_due(now)]

    def deliver_ticks(self, now: datetime) -> None:
        ticks, self.ticks = self.ticks, []
        for case, token in ticks:
            state = self.states[case]
            pending = {d.token: d for d in state.pending}
            new, notices, again = on_due(state, token, now)
            for n in notices:
                self.fired[(case, token)] += 1
                if pending[token].fire_at > now:
                    self.early.append((case, token, pending[token].fire_at, now))
                assert n.kind == pending[token].kind
            for d in again:
                self.queue.schedule(case, d.fire_at, d.token)
            self.states[case] = new

    def step(self, pop_at: datetime, tick_at: datetime) -> None:
        """One timer pass at `pop_at`, its ticks handled when the clock reads `tick_at`."""
        self.timer(pop_at)
        self.deliver_ticks(tick_at)

    def restart(self) -> None:
        """A worker restart: the queue is rebuilt from the table (states)."""
        self.queue = DeadlineQueue()
        requeue(self.queue, self.states.values())
        self.ticks = []

    def all_tokens(self) -> set[tuple[str, int]]:
        return {(c, d.token) for c, s in self.states.items() for d in s.pending}


def opened() -> tuple[Agent, dict[tuple[str, int], datetime]]:
    agent = Agent()
    agent.open("referral/t|A", "urgent", T0)
    agent.open("referral/t|B", "routine", T0 + timedelta(minutes=5))
    deadlines = {(c, d.token): d.fire_at for c, s in agent.states.items() for d in s.pending}
    assert len(deadlines) == 4
    return agent, deadlines


def test_forward_jump_past_every_deadline_fires_each_once() -> None:
    agent, deadlines = opened()
    far = T0 + timedelta(days=30)
    agent.step(far, far)
    agent.step(far, far)  # the next timer pass finds nothing more
    assert agent.fired == Counter({k: 1 for k in deadlines})
    assert not agent.early and not agent.all_tokens()


def test_backward_jump_between_pop_and_tick_defers_without_loss() -> None:
    agent, deadlines = opened()
    first = min(deadlines.values())
    # popped just after the deadline, then NTP steps the clock back an hour
    agent.step(first + timedelta(seconds=1), first - timedelta(hours=1))
    assert not agent.fired and not agent.early
    # requeued: it fires when the clock is past it again, once
    agent.step(first - timedelta(minutes=1), first - timedelta(minutes=1))
    assert not agent.fired
    agent.step(first, first)
    fired = [k for k, v in agent.fired.items() if v]
    assert [deadlines[k] for k in fired] == [first]


def test_backward_jump_after_firing_does_not_fire_again() -> None:
    agent, deadlines = opened()
    first = min(deadlines.values())
    agent.step(first, first)
    assert sum(agent.fired.values()) == 1
    # clock back before the deadline; a duplicated tick (redelivery) and a restart
    back = first - timedelta(hours=2)
    key = next(iter(agent.fired))
    agent.ticks.append(key)
    agent.deliver_ticks(back)
    agent.restart()
    agent.step(back, back)
    agent.step(first + timedelta(seconds=1), first + timedelta(seconds=1))
    assert agent.fired[key] == 1


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(min_value=-3 * 86400, max_value=5 * 86400),  # clock at the pop
            st.integers(min_value=-86400, max_value=86400),  # moved before the tick
            st.booleans(),  # a worker restart after this step
        ),
        min_size=1,
        max_size=25,
    )
)
def test_any_clock_walk_fires_each_deadline_once_never_early_never_skipped(
    steps: list[tuple[int, int, bool]],
) -> None:
    agent, deadlines = opened()
    for at, drift, restart in steps:
        pop_at = T0 + timedelta(seconds=at)
        agent.step(pop_at, pop_at + timedelta(seconds=drift))
        if restart:
            agent.restart()
    # the clock settles past every deadline; two passes drain what was requeued
    end = max(deadlines.values()) + timedelta(seconds=1)
    agent.step(end, end)
    agent.step(end, end)
    assert not agent.early, agent.early
    assert all(v == 1 for v in agent.fired.values()), agent.fired
    assert set(agent.fired) == set(deadlines), "a deadline was skipped"
    assert not agent.all_tokens()

"""Property tests: the machine and the queue together fire each deadline at most once.

The simulation is what the faust agent does: apply events, persist the state as bytes (the
table), keep the queue in step with `Effects`, tick the clock and fire what `pop_due`
returns through `on_due`, and sometimes restart (queue rebuilt from the table only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import event, given, settings, target
from hypothesis import strategies as st

from processors.sla.machine import CaseState, EventFacts, on_due, on_event
from processors.sla.policy import SlaPolicies
from processors.sla.scheduler import DeadlineQueue, requeue
from schemas.codes import EventType as E

POLICIES = SlaPolicies()
START = datetime(2026, 3, 20, 7, 0, tzinfo=UTC)  # a Friday, DST change nine days later
PEOPLE = ("gp", "nurse", "pharmacist")
CASES = {
    "referral/s|R1": "referral",
    "referral/s|R2": "referral",
    "expertise/s|X1": "expertise",
    "stay/s|S1": "stay",
}
EVENTS = {
    "referral": [
        E.REFERRAL_REQUESTED,
        E.REFERRAL_ACCEPTED,
        E.REFERRAL_REJECTED,
        E.REFERRAL_CANCELLED,
        E.REFERRAL_COMPLETED,
    ],
    "expertise": [E.EXPERTISE_REQUESTED, E.EXPERTISE_ANSWERED, E.EXPERTISE_DECLINED],
    "stay": [
        E.ADMISSION_NOTIFIED,
        E.DISCHARGE_PLANNED,
        E.DISCHARGE_COMPLETED,
        E.DISCHARGE_REVERTED,
        E.DISCHARGE_CANCELLED,
        E.ADMISSION_CANCELLED,
        E.DELIVERY_READ,
    ],
}
CANCELS = {E.REFERRAL_CANCELLED, E.DISCHARGE_CANCELLED, E.ADMISSION_CANCELLED}

event_op = st.tuples(
    st.just("event"),
    st.sampled_from(sorted(CASES)),
    st.integers(0, 6),  # which event of the case's family
    st.sampled_from(["routine", "urgent", "stat", None]),
    st.integers(-12, 96),  # planned discharge, hours after the announcement
    st.sets(st.sampled_from(PEOPLE)),
)
minutes = st.one_of(st.integers(0, 180), st.integers(0, 4 * 24 * 60))
tick_op = st.tuples(st.just("tick"), minutes)
ops = st.lists(
    st.one_of(event_op, tick_op, st.just(("duplicate",)), st.just(("restart",))), max_size=40
)


@dataclass
class Agent:
    """The faust agent, reduced to its SLA bookkeeping."""

    now: datetime = START
    table: dict[str, bytes] = field(default_factory=dict)
    queue: DeadlineQueue = field(default_factory=DeadlineQueue)
    applied: list[tuple[E, EventFacts]] = field(default_factory=list)
    fired: list[tuple[str, int]] = field(default_factory=list)
    scheduled: set[tuple[str, int]] = field(default_factory=set)
    cancelled: set[tuple[str, int]] = field(default_factory=set)
    silenced: set[str] = field(default_factory=set)  # cases cancelled and not reopened

    def state(self, case_id: str) -> CaseState | None:
        data = self.table.get(case_id)
        return None if data is None else CaseState.from_bytes(data)

    def event(self, et: E, facts: EventFacts) -> None:
        before = self.state(facts.case_id)
        state, effects = on_event(before, et, facts, self.now, POLICIES)
        if effects.duplicate:
            assert state is before and not (effects.schedule or effects.cancel)
            return
        self.applied.append((et, facts))
        for d in effects.cancel:
            assert (facts.case_id, d.token) not in self.fired
            self.queue.cancel(facts.case_id, d.token)
            self.cancelled.add((facts.case_id, d.token))
        for d in effects.schedule:
            assert (facts.case_id, d.token) not in self.scheduled  # tokens never reused
            self.queue.schedule(facts.case_id, d.fire_at, d.token)
            self.scheduled.add((facts.case_id, d.token))
        if state is None:
            return
        if et in CANCELS and state.status == "cancelled":
            assert state.pending == []
            self.silenced.add(facts.case_id)
        elif state.status == "open":
            self.silenced.discard(facts.case_id)
        self.table[facts.case_id] = state.to_bytes()

    def tick(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        due = self.queue.pop_due(self.now)
        assert [d.fire_us for d in due] == sorted(d.fire_us for d in due)
        for entry in due:
            assert entry.fire_at <= self.now
            state = self.state(entry.case_id)
            assert state is not None
            state, notices, again = on_due(state, entry.token, self.now)
            assert again == ()  # the queue never pops early
            assert len(notices) <= 1
            if notices:
                key = (entry.case_id, entry.token)
                assert key not in self.fired, "a deadline fired twice"
                assert key not in self.cancelled, "a cancelled deadline fired"
                assert entry.case_id not in self.silenced, "a cancelled case fired"
                assert notices[0].case_id == entry.case_id
                self.fired.append(key)
            self.table[entry.case_id] = state.to_bytes()

    def restart(self) -> None:
        self.queue = DeadlineQueue()
        states = [CaseState.from_bytes(b) for b in self.table.values()]
        assert requeue(self.queue, states) == sum(len(s.pending) for s in states)


def facts_for(agent: Agent, op: tuple, serial: int) -> tuple[E, EventFacts]:
    _, case_id, which, priority, planned_in, people = op
    family = EVENTS[CASES[case_id]]
    et = family[which % len(family)]
    facts = EventFacts(
        case_id=case_id,
        event_id=f"ev-{serial}",
        time=agent.now,
        priority=priority,
        planned_at=agent.now + timedelta(hours=planned_in),
        recipients=tuple(sorted(people)),
    )
    return et, facts


@settings(max_examples=300, deadline=None)
@given(ops)
def test_any_interleaving_fires_each_deadline_at_most_once(steps: list[tuple]) -> None:
    agent = Agent()
    for serial, op in enumerate(steps):
        if op[0] == "event":
            agent.event(*facts_for(agent, op, serial))
        elif op[0] == "tick":
            agent.tick(op[1])
        elif op[0] == "duplicate" and agent.applied:
            agent.event(*agent.applied[serial % len(agent.applied)])
        elif op[0] == "restart":
            agent.restart()
    agent.tick(60 * 24 * 60)  # two months later everything pending has fired
    target(float(len(agent.fired)), label="deadlines fired")
    event(f"fired: {min(len(agent.fired), 5)}+, cancelled: {min(len(agent.cancelled), 3)}+")
    assert len(agent.fired) == len(set(agent.fired))
    assert set(agent.fired) <= agent.scheduled - agent.cancelled
    for case_id in agent.table:
        assert agent.state(case_id).pending == []
    assert len(agent.queue) == 0


# --- DeadlineQueue against a dict model ------------------------------------------------

q_ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 3), st.integers(0, 5), st.integers(0, 500)),
        st.tuples(st.just("cancel"), st.integers(0, 3), st.none() | st.integers(0, 5)),
        st.tuples(st.just("pop"), st.integers(0, 200), st.none() | st.integers(1, 4)),
        st.just(("compact",)),
    ),
    max_size=80,
)


@settings(max_examples=400, deadline=None)
@given(q_ops)
def test_queue_matches_a_dict_model(steps: list[tuple]) -> None:
    queue, model = DeadlineQueue(), {}
    now = START
    for op in steps:
        if op[0] == "schedule":
            key = (f"case-{op[1]}", op[2])
            at = START + timedelta(seconds=op[3], microseconds=op[3])
            queue.schedule(key[0], at, key[1])
            model[key] = at
        elif op[0] == "cancel":
            case = f"case-{op[1]}"
            gone = [k for k in model if k[0] == case and op[2] in (None, k[1])]
            assert queue.cancel(case, op[2]) == len(gone)
            for k in gone:
                del model[k]
        elif op[0] == "pop":
            now += timedelta(seconds=op[1])
            out = queue.pop_due(now, limit=op[2])
            due = sorted((at, k) for k, at in model.items() if at <= now)
            assert [d.fire_at for d in out] == [at for at, _ in due][: len(out)]
            assert op[2] is not None or len(out) == len(due)
            for d in out:
                assert model.pop((d.case_id, d.token)) == d.fire_at  # live, once, exact
        else:
            queue.compact()
        assert len(queue) == len(model)
        assert queue.next_due() == min(model.values(), default=None)
        assert all(k in queue for k in model)

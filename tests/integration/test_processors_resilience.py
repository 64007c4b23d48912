"""SLA deadlines survive worker crashes: real broker, real `carebus run processors` processes.

test_processors.py runs the faust app in-process; here each worker is the command an
operator runs (`python -m bus.cli run processors`), so a SIGKILL is a real crash: no
`finally`, no LeaveGroup, no flush. What the issue promises is checked from the topics'
point of view, the only one a consumer of the bus has: every reminder / escalation /
follow-up appears exactly once on care.sla.events (no duplicate record, no duplicate
notice id), on time, and each work item once on care.delivery.mssante.

Knobs, and why:
- Policies are compressed through a per-test TOML file (CAREBUS_CONFIG), the same way a
  territory configures them, so the workers read them through Settings.
- The faust consumer-group timeouts are set through faust's own environment variables
  (BROKER_SESSION_TIMEOUT / BROKER_HEARTBEAT_INTERVAL): CareBus settings do not expose
  them, and faust's default 60 s session timeout means a crashed worker keeps its
  partitions, hence its deadlines, for up to a minute. 6 s is the broker's minimum.
- BROKER_CLIENT_ID names each worker, so the consumer-group description tells which
  process owns which partitions.
- Each test runs its workers in a consumer group of its own (CAREBUS_PROCESSORS__APP_ID,
  as a second territory on a shared cluster would), positioned at the end of the source
  topics before the workers start. On the session broker the earlier suites left
  thousands of events on the care topics: a group reading them from `earliest` (or from
  where the previous test of this file stopped) spends its first minute on that backlog,
  with compressed policies firing a notice for every old case, and the test would time
  the backlog instead of the deadlines. Fresh case ids, and only the records of those
  cases read from the end offsets at the test's start, do the rest.
- Before a SIGKILL the tests wait until the group has committed the published events: a
  crash before the commit replays the uncommitted tail by design (at-least-once, with
  deterministic work-item ids), which would duplicate *work items* on the topic (never
  notices: the SLA state deduplicates events). Deadline notices are checked strictly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.structs import ConsumerRecord, RecordMetadata

from bus.producer import EventProducer
from bus.provisioning import apply_topics
from bus.settings import Settings
from processors.app import internal_topics
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import referral_info, stay_info
from schemas.topics import (
    DELIVERY_MSSANTE,
    REFERRAL_EVENTS,
    SLA_EVENTS,
    STAY_EVENTS,
    topic_for,
)
from schemas.workitem import WorkItem
from tests.integration.processors_support import envelope, start_at_the_end

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: the default group of `carebus run processors` (ProcessorsSettings.app_id); the tests of
#: this file use a group of their own each (fixture `group`), test_scale_out this one
GROUP = "carebus-processors"
REPO = Path(__file__).parents[2]
SESSION_TIMEOUT_S = 6  # broker default group.min.session.timeout.ms
READY_TIMEOUT_S = 60.0
#: a notice counts as "on time" up to this much after its due instant. The worker's timer
#: ticks every 0.2 s and a tick makes a round trip through care.sla.ticks; the issue asks
#: for a second, CI machines are slower than that, so the bound is generous but tight
#: enough to tell an on-time firing from one that waited for a session timeout.
ON_TIME_S = 2.0


def toml(*, due_s: int, escalate_s: int, followup_s: int) -> str:
    """Compressed policies, written the way a territory would (see processors/sla/policy)."""
    return f"""
[[sla.policies]]
name = "referral-urgent"
applies_to = "referral.requested"
priorities = ["urgent", "asap", "stat"]
business_hours = false
due = "{due_s}s"
reminder_at = [{{after = "0s", anchor = "due", notify = ["performer"]}}]
escalate_after = "{escalate_s}s"
escalate_to = ["coordinator", "requester"]

[sla.discharge]
followup_after = "{followup_s}s"
"""


# --- worker processes -------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    """One `carebus run processors` process and its log file."""

    name: str
    client_id: str
    proc: asyncio.subprocess.Process
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name} log tail ---\n{self.text()[-chars:]}"

    async def ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Wait for the CLI's banner, printed once partitions are assigned and the SLA table
        recovered (runner.wait_assigned); return when that was (time.time())."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if "CareBus is running" in self.text():
                return time.time()
            if self.proc.returncode is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}\n{self.tail()}")
            await asyncio.sleep(0.1)
        pytest.fail(f"{self.name} not ready after {timeout:.0f} s\n{self.tail()}")

    async def kill(self) -> float:
        """SIGKILL: a crash, no cleanup at all; return when it happened."""
        self.proc.send_signal(signal.SIGKILL)
        killed = time.time()
        await self.proc.wait()
        return killed

    async def stop(self) -> None:
        """SIGTERM (clean shutdown: the worker leaves the group), SIGKILL if it hangs."""
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            await self.kill()

    def requeued(self) -> list[int]:
        """Counts from the SLA agent's 'N pending deadlines requeued' recovery lines."""
        out = []
        for line in self.text().splitlines():
            if "pending deadlines requeued" in line:
                out.append(int(line.split("SLA: ", 1)[1].split()[0]))
        return out


class Workers:
    """Starts worker processes for one test and always reaps them."""

    def __init__(self, tmp: Path, bootstrap: str, config: str, group: str = GROUP) -> None:
        self.tmp = tmp
        self.bootstrap = bootstrap
        self.group = group
        self.config = tmp / "carebus.toml"
        self.config.write_text(config)
        # Pre-created: `carebus run processors` on a fresh data dir with an external broker
        # crashes (faust mkdirs <data_dir>/processors without parents), see the report.
        self.data_dir = tmp / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.started: list[Worker] = []
        self.tag = uuid.uuid4().hex[:6]

    async def start(self, name: str, extra_env: dict[str, str] | None = None) -> Worker:
        """`extra_env`: more environment for this worker (e.g. a faked wall clock)."""
        client_id = f"test-{name}-{self.tag}"
        env = dict(
            os.environ,
            CAREBUS_KAFKA__BOOTSTRAP=self.bootstrap,
            CAREBUS_DATA_DIR=str(self.data_dir),
            CAREBUS_CONFIG=str(self.config),
            CAREBUS_PROCESSORS__APP_ID=self.group,
            BROKER_SESSION_TIMEOUT=str(SESSION_TIMEOUT_S),
            BROKER_HEARTBEAT_INTERVAL="1",
            BROKER_CLIENT_ID=client_id,
            COLUMNS="200",
            **(extra_env or {}),
        )
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bus.cli",
                "--verbose",
                "run",
                "processors",
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, client_id, proc, log)
        self.started.append(worker)
        return worker

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.started))


@pytest.fixture
async def group(catalog_applied: str, settings: Settings) -> str:
    """A consumer group of this test's own, committed at the end of every source topic:
    the workers start with no backlog and no SLA state but what the test sends."""
    app_id = f"carebus-resilience-{uuid.uuid4().hex[:8]}"
    await apply_topics(catalog_applied, settings.kafka, internal_topics(app_id))
    await start_at_the_end(catalog_applied, app_id)
    return app_id


def changelog(group: str) -> str:
    return f"{group}-sla-cases-changelog"


@pytest.fixture
async def spawn(
    catalog_applied: str, tmp_path: Path, group: str
) -> AsyncIterator[Callable[[str], Workers]]:
    made: list[Workers] = []

    def make(config: str) -> Workers:
        workers = Workers(tmp_path, catalog_applied, config, group)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        await workers.close()


# --- the broker side: publish, watch topics, inspect the group -----------------------------


@pytest.fixture
async def producer(catalog_applied: str, settings: Settings) -> AsyncIterator[EventProducer]:
    p = EventProducer(catalog_applied, settings.kafka)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def admin(catalog_applied: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=catalog_applied)
    await client.start()
    yield client
    await client.close()


class Watch:
    """Records of our cases on some topics, from the end offsets at creation onwards.

    Reading from the end (not from `earliest`) keeps the test independent of what other
    tests left on the session broker; filtering on our case keys does the rest.
    """

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.cases: set[bytes] = set()
        self.records: dict[str, list[ConsumerRecord]] = {t: [] for t in self.topics}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, admin: AIOKafkaAdminClient) -> None:
        described = await admin.describe_topics(self.topics)
        parts = [
            TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
        ]
        assert {tp.topic for tp in parts} == set(self.topics), described
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            for tp, rs in batch.items():
                self.records[tp.topic] += [r for r in rs if case_key(tp.topic, r) in self.cases]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def until(
        self,
        what: str,
        check: Callable[[], bool],
        timeout: float,
        explain: Callable[[], str] = str,
    ) -> None:
        end = time.monotonic() + timeout
        while not check():
            if time.monotonic() > end:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{explain()}")
            assert self._task is not None and not self._task.done(), "watch consumer died"
            await asyncio.sleep(0.05)

    def envelopes(self, topic: str) -> list[tuple[ConsumerRecord, Envelope]]:
        return [(r, Envelope.decode(r.key, r.value, r.headers)) for r in self.records[topic]]


def case_key(topic: str, record: ConsumerRecord) -> bytes | None:
    """The case id of a record: event topics key by it, the faust table's changelog keys by
    its JSON form (Table(key_type=str) uses faust's json key serializer)."""
    if topic.endswith("-sla-cases-changelog") and record.key:
        return str(orjson.loads(record.key)).encode()
    return record.key


@pytest.fixture
async def watch(
    catalog_applied: str, admin: AIOKafkaAdminClient, group: str
) -> AsyncIterator[Watch]:
    w = Watch(catalog_applied, (SLA_EVENTS.name, DELIVERY_MSSANTE.name, changelog(group)))
    await w.start(admin)
    yield w
    await w.stop()


async def members(admin: AIOKafkaAdminClient, group: str = GROUP) -> dict[str, dict[str, set[int]]]:
    """client id → topic → partitions, as the group coordinator sees the group now."""
    [response] = await admin.describe_consumer_groups([group])
    [(error, _group, state, _ptype, _protocol, group_members)] = response.groups
    assert error == 0, f"describe {group}: error {error}"
    out: dict[str, dict[str, set[int]]] = {}
    if state != "Stable":
        return out
    for _member_id, client_id, _host, _metadata, assignment in group_members:
        decoded = ConsumerProtocolMemberAssignment.decode(assignment) if assignment else None
        topics = decoded.assignment if decoded is not None else []
        out[client_id] = {topic: set(parts) for topic, parts in topics}
    return out


async def stable_split(
    admin: AIOKafkaAdminClient, workers: list[Worker], timeout: float = 40.0, group: str = GROUP
) -> dict[str, dict[str, set[int]]]:
    """Wait until exactly `workers` are the group and each owns referral partitions."""
    want = {w.client_id for w in workers}
    end = time.monotonic() + timeout
    seen: dict[str, dict[str, set[int]]] = {}
    while time.monotonic() < end:
        seen = await members(admin, group)
        if set(seen) == want and all(
            seen[c].get(REFERRAL_EVENTS.name) and seen[c].get(STAY_EVENTS.name) for c in want
        ):
            return seen
        await asyncio.sleep(0.25)
    pytest.fail(f"group never settled on {sorted(want)}: last seen {seen}")


async def stable_split_single(
    admin: AIOKafkaAdminClient, worker: Worker, timeout: float, group: str
) -> dict[str, set[int]]:
    """Wait until `worker` alone is the group (the dead member's session expired)."""
    end = time.monotonic() + timeout
    seen: dict[str, dict[str, set[int]]] = {}
    while time.monotonic() < end:
        seen = await members(admin, group)
        if set(seen) == {worker.client_id}:
            return seen[worker.client_id]
        await asyncio.sleep(0.25)
    pytest.fail(f"{worker.name} never got the group alone: last seen {seen}")


async def committed_past(
    admin: AIOKafkaAdminClient,
    published: Iterable[RecordMetadata],
    group: str,
    timeout: float = 30.0,
) -> None:
    """Wait until the group committed every published record (nothing left to replay)."""
    need: dict[TopicPartition, int] = {}
    for md in published:
        tp = TopicPartition(md.topic, md.partition)
        need[tp] = max(need.get(tp, 0), md.offset + 1)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        offsets = await admin.list_consumer_group_offsets(group, partitions=list(need))
        if all(offsets.get(tp) and offsets[tp].offset >= off for tp, off in need.items()):
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"{group} did not commit {need} in {timeout:.0f} s")


# --- events ------------------------------------------------------------------------------


def urgent_referral() -> Envelope:
    info = dataclasses.replace(
        referral_info(), referral_id=f"R-{uuid.uuid4().hex[:10]}", priority="urgent"
    )
    return envelope(EventType.REFERRAL_REQUESTED, info)


def completed_discharge() -> Envelope:
    info = dataclasses.replace(
        stay_info(), visit_number=f"V{uuid.uuid4().hex[:10]}", discharged_at=datetime.now(UTC)
    )
    return envelope(EventType.DISCHARGE_COMPLETED, info)


async def publish(
    producer: EventProducer, watch: Watch, envs: Iterable[Envelope]
) -> list[RecordMetadata]:
    envs = list(envs)
    watch.cases.update(e.subject.encode() for e in envs)
    return list(await producer.publish_many((topic_for(e.type), e) for e in envs))


def expected_notices(
    envs: Iterable[Envelope], *, due_s: int, escalate_s: int, followup_s: int
) -> dict[tuple[str, str], datetime]:
    """(case id, notice type) → when it is due: computed from the event time (ce_time),
    as the SLA machine does, not from when the event was read."""
    out: dict[tuple[str, str], datetime] = {}
    for env in envs:
        at = datetime.fromisoformat(env.time)
        if env.type == EventType.REFERRAL_REQUESTED:
            out[(env.subject, "sla.reminder")] = at + timedelta(seconds=due_s)
            out[(env.subject, "sla.escalated")] = at + timedelta(seconds=due_s + escalate_s)
        elif env.type == EventType.DISCHARGE_COMPLETED:
            out[(env.subject, "discharge.followup-due")] = at + timedelta(seconds=followup_s)
    return out


def notice_count(watch: Watch) -> int:
    return len(watch.records[SLA_EVENTS.name])


async def all_notices(
    watch: Watch,
    expected: dict,
    timeout: float,
    workers: Iterable[Worker] = (),
    linger: float = 2.0,
) -> None:
    """Wait for as many notices as expected, then a little longer: a duplicate fired by a
    second worker or a replay would land within a tick or two of the first. On a timeout
    the failure shows what arrived and the workers' logs."""

    def explain() -> str:
        got = Counter(env.type for _, env in watch.envelopes(SLA_EVENTS.name))
        return "\n".join([f"got {dict(got)}", *(w.tail() for w in workers)])

    await watch.until(
        f"{len(expected)} notices", lambda: notice_count(watch) >= len(expected), timeout, explain
    )
    await asyncio.sleep(linger)


def check_exactly_once(watch: Watch, expected: dict[tuple[str, str], datetime]) -> list[float]:
    """Each expected notice once on care.sla.events, no other, no duplicate id, each on
    time; each work item once on care.delivery.mssante. Returns the lateness (s)."""
    notices = watch.envelopes(SLA_EVENTS.name)
    got = Counter((env.subject, env.type) for _, env in notices)
    dupes = {k: n for k, n in got.items() if n > 1}
    assert not dupes, f"notices fired more than once: {dupes}"
    assert set(got) == set(expected), (
        f"missing {set(expected) - set(got)}, unexpected {set(got) - set(expected)}"
    )
    ids = Counter(env.id for _, env in notices)
    assert all(n == 1 for n in ids.values()), f"duplicate notice ids: {ids.most_common(3)}"
    lateness = []
    for record, env in notices:
        fired = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        late = (fired - expected[(env.subject, env.type)]).total_seconds()
        lateness.append(late)
        # CreateTime has ms resolution: allow that much "early"
        assert -0.01 <= late <= ON_TIME_S, f"{env.type} of {env.subject}: {late:+.3f} s vs due"
    items = watch.envelopes(DELIVERY_MSSANTE.name)
    twice = [k for k, n in Counter(env.id for _, env in items).items() if n > 1]
    assert not twice, f"work items published more than once: {twice[:5]}"
    # every notice was also routed (the requester/coordinator/performer got it)
    routed = {WorkItem.from_envelope(env).event.id for _, env in items}
    assert {env.id for _, env in notices} <= routed
    return lateness


# --- tests -------------------------------------------------------------------------------


async def test_kill_restart_mid_deadline_fires_once_on_time(
    spawn, producer: EventProducer, watch: Watch, admin: AIOKafkaAdminClient, group: str
) -> None:
    """SIGKILL the only worker while a reminder is pending; its successor recovers the SLA
    table and fires the reminder and the escalation once each, on time.

    The reminder is due 20 s after the request: the crash is detected after the 6 s
    session timeout, the successor needs a few seconds to start, and the deadline must
    still be ahead of it so that "on time" is measured, not "caught up".
    """
    policy = {"due_s": 20, "escalate_s": 3, "followup_s": 60}
    workers = spawn(toml(**policy))
    first = await workers.start("first")
    await first.ready()

    ref = urgent_referral()
    published = await publish(producer, watch, [ref])
    expected = expected_notices([ref], **policy)
    reminder_due = expected[(ref.subject, "sla.reminder")]
    # the SLA state has the case (its changelog record), the route agent routed it, and
    # the group committed the event: from here on nothing depends on the first worker
    await watch.until("the case in the SLA table", lambda: watch.records[changelog(group)], 30)
    await watch.until("the work item", lambda: watch.records[DELIVERY_MSSANTE.name], 30)
    await committed_past(admin, published, group)

    killed = await first.kill()
    margin = (reminder_due - datetime.fromtimestamp(killed, UTC)).total_seconds()
    assert margin > 0, "setup too slow: the reminder was due before the crash"
    second = await workers.start("second")
    ready = await second.ready()
    # the successor only owns the partitions once the dead member's session expired
    takeover = ready - killed
    assert takeover < margin, (
        f"successor ready {takeover:.1f} s after the crash, reminder due {margin:.1f} s after"
        f": on time cannot be judged\n{second.tail()}"
    )
    assert notice_count(watch) == 0, "a notice fired before its due time"

    await all_notices(watch, expected, margin + policy["escalate_s"] + 20, [second])
    lateness = check_exactly_once(watch, expected)
    assert [e.type for _, e in watch.envelopes(SLA_EVENTS.name)] == [
        "sla.reminder",
        "sla.escalated",
    ]
    assert all(r.timestamp / 1000 > ready for r in watch.records[SLA_EVENTS.name])
    # the successor armed our case's reminder and escalation from the recovered table
    # (the group is this test's own: no other case is in it)
    assert second.requeued() and max(second.requeued()) == 2, second.tail()
    roles = Counter(
        (WorkItem.from_envelope(env).event.type, WorkItem.from_envelope(env).recipient.role)
        for _, env in watch.envelopes(DELIVERY_MSSANTE.name)
    )
    assert roles[("referral.requested", "performer")] == 1
    assert roles[("sla.reminder", "performer")] == 1
    assert roles[("sla.escalated", "coordinator")] == 1
    assert roles[("sla.escalated", "requester")] == 1
    print(f"\ntakeover {takeover:.2f} s after SIGKILL; lateness {[f'{x:.3f}' for x in lateness]}")


async def test_two_workers_split_partitions_exactly_once(
    spawn, producer: EventProducer, watch: Watch, admin: AIOKafkaAdminClient, group: str
) -> None:
    """Two processes in one group: each owns half of the partitions, both fire the
    deadlines of their own cases, and no notice is fired twice."""
    policy = {"due_s": 5, "escalate_s": 3, "followup_s": 6}
    workers = spawn(toml(**policy))
    a, b = await asyncio.gather(workers.start("a"), workers.start("b"))
    await asyncio.gather(a.ready(), b.ready())
    split = await stable_split(admin, [a, b], group=group)

    envs = [urgent_referral() for _ in range(15)] + [completed_discharge() for _ in range(15)]
    published = await publish(producer, watch, envs)
    expected = expected_notices(envs, **policy)
    await all_notices(watch, expected, 60, [a, b])
    lateness = check_exactly_once(watch, expected)

    # both did work: each member owns partitions that carried some of our cases, and the
    # assignment did not move while the deadlines fired
    assert await members(admin, group) == split, "the group rebalanced during the test"
    for w in (a, b):
        owned = {(t, p) for t, parts in split[w.client_id].items() for p in parts}
        ours = [md for md in published if (md.topic, md.partition) in owned]
        assert ours, f"{w.name} owned no partition with our cases: {split[w.client_id]}"
    owners = {w.name: sorted(split[w.client_id][REFERRAL_EVENTS.name]) for w in (a, b)}
    p50 = sorted(lateness)[len(lateness) // 2]
    print(f"\nreferral partitions {owners}; lateness p50 {p50:.3f} s max {max(lateness):.3f} s")


async def test_kill_one_of_two_survivor_fires_its_deadlines_once(
    spawn, producer: EventProducer, watch: Watch, admin: AIOKafkaAdminClient, group: str
) -> None:
    """SIGKILL one of two workers while its cases have deadlines pending: the survivor
    takes its partitions, recovers their SLA state and fires each deadline once."""
    policy = {"due_s": 20, "escalate_s": 3, "followup_s": 20}
    workers = spawn(toml(**policy))
    a, b = await asyncio.gather(workers.start("a"), workers.start("b"))
    await asyncio.gather(a.ready(), b.ready())
    split = await stable_split(admin, [a, b], group=group)

    envs = [urgent_referral() for _ in range(10)] + [completed_discharge() for _ in range(10)]
    published = await publish(producer, watch, envs)
    expected = expected_notices(envs, **policy)
    victim = {(t, p) for t, parts in split[b.client_id].items() for p in parts}
    orphans = [md for md in published if (md.topic, md.partition) in victim]
    assert orphans, "the worker to kill holds none of our cases"
    cases = {e.subject.encode() for e in envs}
    cl = changelog(group)
    await watch.until(
        "every case in the SLA table",
        lambda: {case_key(cl, r) for r in watch.records[cl]} >= cases,
        30,
    )
    await committed_past(admin, published, group)

    killed = await b.kill()
    first_due = min(expected.values())
    margin = (first_due - datetime.fromtimestamp(killed, UTC)).total_seconds()
    assert margin > 0, "setup too slow: a deadline was due before the crash"
    survivor = await stable_split_single(admin, a, SESSION_TIMEOUT_S + 20, group)
    takeover = time.time() - killed
    assert survivor[REFERRAL_EVENTS.name] == set(range(REFERRAL_EVENTS.partitions))

    await all_notices(watch, expected, margin + policy["escalate_s"] + 20, [a])
    lateness = check_exactly_once(watch, expected)
    # the victim's cases were fired by the survivor (the victim was dead by then)
    assert all(r.timestamp / 1000 > killed for r in watch.records[SLA_EVENTS.name])
    assert len(a.requeued()) >= 2, a.tail()  # recovered again after the takeover
    print(
        f"\ntakeover {takeover:.2f} s after SIGKILL; {len(orphans)} cases moved; "
        f"lateness max {max(lateness):.3f} s"
    )

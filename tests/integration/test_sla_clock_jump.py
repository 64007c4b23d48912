"""Fault (e) on a real process: the wall clock of a `carebus run processors` worker is
stepped forward and backward around SLA deadlines, the way NTP steps it.

The unit tests (tests/unit/test_sla_clock_jumps.py) walk an injected clock through the
SLA agent's code; here the worker is the command an operator runs, and its clock is moved
from outside with libfaketime (Debian `libfaketime`, installed by `make test`):
`LD_PRELOAD` makes every CLOCK_REALTIME read of the process (time.time, datetime.now, the
ce_time of what it produces) add the offset written in a file, re-read every
second. `DONT_FAKE_MONOTONIC=1` leaves CLOCK_MONOTONIC alone, as an NTP step does: the
asyncio loop's timers, aiokafka's session and heartbeat clocks keep real time. (With it,
libfaketime 0.9.10 answers `clock_nanosleep` EINVAL, which only `time.sleep` uses; no
code path of the worker calls it.)

What is checked, from care.sla.events as any consumer of the bus sees it:
- a step forward past the reminders fires each reminder once, within seconds, and no
  escalation (they are not due yet, even on the stepped clock);
- a step backward after the reminders fired fires nothing again;
- a step forward past the escalations fires each escalation once;
- a step beyond the hour Kafka 4 lets a record's CreateTime run ahead of the broker
  still has the worker's writes taken (the bus topics are LogAppendTime);
- no notice is early on the worker's own clock (its ce_time is that clock);
- each notice id once; each work item once on care.delivery.mssante.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bus.producer import EventProducer
from bus.provisioning import apply_topics
from bus.settings import KafkaSettings, Settings
from schemas.topics import DELIVERY_MSSANTE, SLA_EVENTS, SLA_TICKS
from tests.integration import test_processors_resilience as res
from tests.integration.test_processors_resilience import (
    Watch,
    Worker,
    changelog,
    committed_past,
    expected_notices,
    notice_count,
    publish,
    toml,
    urgent_referral,
)

# the resilience tests' fixtures, under their names: own consumer group at the end of the
# sources, worker processes reaped after the test, a watch on our cases' records
admin, group, producer, spawn, watch = res.admin, res.group, res.producer, res.spawn, res.watch

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

POLICY = {"due_s": 300, "escalate_s": 300, "followup_s": 3600}  # reminder T+5 min, esc. T+10
CASES = 3
#: from writing the offset to the notices on the topic: libfaketime's 1 s cache, the
#: timer's 0.2 s tick, a round trip through care.sla.ticks, routing; generous for CI
PROMPT_S = 15.0


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.skip("libfaketime is not installed (`make test` installs Debian libfaketime)")
    return found[0]


class SteppedClock:
    """The offset file libfaketime reads: '+400' = 400 s ahead of the real clock."""

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "faketime.rc"
        self.set(0)

    def set(self, offset_s: int) -> float:
        """Step the worker's wall clock to real + offset; return when (monotonic)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        tmp.replace(self.path)  # atomic: the worker never reads half a line
        return time.monotonic()

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_CACHE_DURATION": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


def kinds(watch: Watch) -> Counter:
    return Counter(env.type for _, env in watch.envelopes(SLA_EVENTS.name))


async def stepped_worker_with_cases(
    spawn,
    clock: SteppedClock,
    policy: dict[str, int],
    producer: EventProducer,
    watch: Watch,
    admin: AIOKafkaAdminClient,
    group: str,
) -> tuple[Worker, dict]:
    """A worker on the stepped clock, holding CASES urgent referrals in its SLA table, their
    events committed (nothing left to replay); returns it and when each notice is due."""
    worker = await spawn(toml(**policy)).start("stepped", clock.env())
    await worker.ready()
    refs = [urgent_referral() for _ in range(CASES)]
    published = await publish(producer, watch, refs)
    await watch.until(
        "the cases in the SLA table",
        lambda: len({r.key for r in watch.records[changelog(group)]}) >= CASES,
        30,
        worker.tail,
    )
    await committed_past(admin, published, group)
    return worker, expected_notices(refs, **policy)


async def test_ntp_steps_around_deadlines_fire_each_notice_once_never_early(
    spawn,
    producer: EventProducer,
    watch: Watch,
    admin: AIOKafkaAdminClient,
    group: str,
    tmp_path: Path,
) -> None:
    clock = SteppedClock(tmp_path)
    worker, due = await stepped_worker_with_cases(
        spawn, clock, POLICY, producer, watch, admin, group
    )
    assert notice_count(watch) == 0, "a notice before any deadline"

    # 1. NTP steps the clock 400 s forward: past the reminders (T+300), short of the
    #    escalations (T+600)
    stepped = clock.set(400)
    await watch.until("the reminders", lambda: notice_count(watch) >= CASES, PROMPT_S, worker.tail)
    reminders_after = time.monotonic() - stepped
    await asyncio.sleep(3)
    assert kinds(watch) == Counter({"sla.reminder": CASES}), kinds(watch)

    # 2. stepped back 600 s (now 200 s behind real time): nothing fires again, nothing
    #    fires early
    clock.set(-600)
    await asyncio.sleep(8)
    assert kinds(watch) == Counter({"sla.reminder": CASES}), kinds(watch)

    # 3. forward again, 2 h ahead: past the escalations, and past the hour Kafka 4 allows
    #    a record's CreateTime to be ahead of the broker (message.timestamp.after.max.ms):
    #    the bus topics are LogAppendTime, so the worker's writes are still taken
    stepped = clock.set(7200)
    await watch.until(
        "the escalations", lambda: notice_count(watch) >= 2 * CASES, PROMPT_S, worker.tail
    )
    escalations_after = time.monotonic() - stepped
    await asyncio.sleep(3)

    notices = watch.envelopes(SLA_EVENTS.name)
    got = Counter((env.subject, env.type) for _, env in notices)
    assert got == Counter(dict.fromkeys(due, 1)), f"expected each once: {got}"
    assert len({env.id for _, env in notices}) == len(notices), "a notice id twice"
    for _, env in notices:
        fired = datetime.fromisoformat(env.time)  # ce_time: the worker's clock when it fired
        early = (due[(env.subject, env.type)] - fired).total_seconds()
        assert early <= 0.01, f"{env.type} of {env.subject} {early:.1f} s early on its clock"
    items = Counter(env.id for _, env in watch.envelopes(DELIVERY_MSSANTE.name))
    assert items and max(items.values()) == 1, f"work items twice: {items.most_common(3)}"
    assert "Traceback" not in worker.text(), worker.tail()
    print(f"reminders {reminders_after:.1f} s and escalations {escalations_after:.1f} s after")


@contextlib.asynccontextmanager
async def ticks_refusing_future_records(
    admin: AIOKafkaAdminClient, bootstrap: str, kafka: KafkaSettings, limit_ms: int
) -> AsyncIterator[None]:
    """care.sla.ticks back on CreateTime, refusing records dated more than `limit_ms`
    ahead of the broker (what every topic did before the bus topics were LogAppendTime);
    the catalog's config is applied again afterwards."""
    override = {
        "message.timestamp.type": "CreateTime",
        "message.timestamp.after.max.ms": str(limit_ms),
    }
    await admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, SLA_TICKS.name, configs=override)]
    )
    try:
        yield
    finally:
        await apply_topics(bootstrap, kafka)  # full config again: drops the override


async def test_ticks_the_broker_refuses_are_rearmed_and_fire_once_it_takes_them(
    spawn,
    producer: EventProducer,
    watch: Watch,
    admin: AIOKafkaAdminClient,
    group: str,
    tmp_path: Path,
    catalog_applied: str,
    settings: Settings,
) -> None:
    """A tick is sent, faust's `send` returns, and the broker refuses it afterwards: the
    deadline must go back in the queue, not vanish (before the fix, the reminders of this
    test never fired). Here the broker refuses because the worker's clock is 10 min ahead
    of a topic that allows 1 min; once the clock is set right, each reminder fires once."""
    policy = {"due_s": 10, "escalate_s": 3000, "followup_s": 3600}
    clock = SteppedClock(tmp_path)
    async with ticks_refusing_future_records(admin, catalog_applied, settings.kafka, 60_000):
        worker, due = await stepped_worker_with_cases(
            spawn, clock, policy, producer, watch, admin, group
        )
        clock.set(600)  # the reminders are due on the worker's clock; its ticks are refused
        await watch.until(
            "the broker's refusal in the worker's log",
            lambda: "refused a deadline tick" in worker.text(),
            PROMPT_S,
            worker.tail,
        )
        await asyncio.sleep(5)  # a few refused retries
        assert notice_count(watch) == 0, kinds(watch)
        clock.set(0)  # NTP fixes the clock: the reminders (due 10 s after the requests) are due
        await watch.until("the reminders", lambda: notice_count(watch) >= CASES, 30, worker.tail)
        await asyncio.sleep(3)
    notices = watch.envelopes(SLA_EVENTS.name)
    got = Counter((env.subject, env.type) for _, env in notices)
    reminders = {k for k in due if k[1] == "sla.reminder"}
    assert got == Counter(dict.fromkeys(reminders, 1)), got

"""Finished cases leave the processors' tables after their retention (real broker).

The faust processors run in-process with a 2 s retention and a sweep every 0.5 s; what is
checked is what a restarted worker would recover: the compacted changelogs of the two
tables. A forgotten case gets a tombstone (a record with no value) in each changelog it
was in; a case with a deadline pending keeps its entries until the deadline has fired;
a case that is still talked about is kept; and a new request on a forgotten case starts
it afresh (its reminder fires again), as the retention rule says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord

from bus.settings import Settings
from processors.app import Processors
from processors.sla.policy import DischargePolicy, SlaPolicies
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import referral_info
from schemas.topics import SLA_EVENTS, topic_for
from tests.integration.processors_support import (
    envelope,
    processors_running,
    start_at_the_end,
)
from tests.integration.test_processors import collect, stay

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

RETENTION_S = 2.0
SWEEP_S = 0.5
#: retention + slack (an eighth) + one sweep + the tick round trip, with room for a slow CI
FORGOTTEN_WITHIN_S = RETENTION_S * 9 / 8 + SWEEP_S + 6.0


class Changelogs:
    """Every record of the two SLA changelogs of one app, by case id, as they arrive."""

    def __init__(self, bootstrap: str, app_id: str) -> None:
        self.topics = [f"{app_id}-sla-parties-changelog", f"{app_id}-sla-cases-changelog"]
        self.consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.records: list[ConsumerRecord] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            for rs in batch.values():
                self.records += rs

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    def of(self, case: str, table: str) -> list[ConsumerRecord]:
        topic = next(t for t in self.topics if t.endswith(f"-sla-{table}-changelog"))
        return [
            r for r in self.records if r.topic == topic and r.key and orjson.loads(r.key) == case
        ]

    def forgotten(self, case: str, table: str) -> bool:
        """The last record of the case in that changelog is a tombstone."""
        records = self.of(case, table)
        return bool(records) and records[-1].value is None

    async def until(self, what: str, check, timeout: float) -> None:
        end = asyncio.get_running_loop().time() + timeout
        while not check():
            if asyncio.get_running_loop().time() > end:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.1)


@pytest.fixture
async def running(
    catalog_applied: str, settings: Settings
) -> AsyncIterator[tuple[Processors, Changelogs]]:
    policies = SlaPolicies(retention=f"{RETENTION_S}s").compressed({"referral-urgent": 3600})
    policies = policies.model_copy(
        update={"discharge": DischargePolicy(ack_within=None, followup_after="5s")}
    )
    app_id = f"test-retention-{uuid.uuid4().hex[:6]}"
    await start_at_the_end(catalog_applied, app_id)
    async with processors_running(
        catalog_applied, settings, policies, "", sweep_interval_s=SWEEP_S, app_id=app_id
    ) as ctx:
        logs = Changelogs(catalog_applied, app_id)
        await logs.start()
        try:
            yield ctx, logs
        finally:
            await logs.stop()


async def publish(ctx: Processors, *envs: Envelope) -> None:
    for env in envs:
        await ctx.producer.publish(topic_for(env.type), env)


def urgent():
    return dataclasses.replace(
        referral_info(), referral_id=f"R-{uuid.uuid4().hex[:8]}", priority="urgent"
    )


async def sla_notices(
    bootstrap: str, case: str, count: int, timeout: float
) -> list[tuple[str, int]]:
    """(type, record timestamp in ms) of the case's notices on care.sla.events."""
    got = await collect(bootstrap, SLA_EVENTS.name, case, lambda g: len(g) >= count, timeout)
    return [(Envelope.decode(r.key, r.value, r.headers).type, r.timestamp) for r in got]


async def test_finished_cases_are_forgotten_pending_ones_kept_until_they_fire(
    running: tuple[Processors, Changelogs], catalog_applied: str
) -> None:
    ctx, logs = running
    admission = envelope(EventType.ADMISSION_NOTIFIED, stay())  # parties only, no SLA state
    info = urgent()
    requested = envelope(EventType.REFERRAL_REQUESTED, info)
    accepted = envelope(EventType.REFERRAL_ACCEPTED, info)  # answered: nothing pending
    discharge = envelope(EventType.DISCHARGE_COMPLETED, stay(discharged_at=datetime.now(UTC)))
    await publish(ctx, admission, requested, accepted, discharge)

    # written first (each table entry once), then tombstoned
    await logs.until(
        "the admission and the answered referral to be forgotten",
        lambda: (
            logs.forgotten(admission.subject, "parties")
            and logs.forgotten(requested.subject, "parties")
            and logs.forgotten(requested.subject, "cases")
        ),
        FORGOTTEN_WITHIN_S,
    )
    assert logs.of(admission.subject, "cases") == []  # an A01 alone has no SLA state
    for case in (admission.subject, requested.subject):
        first, tombstone = logs.of(case, "parties")[0], logs.of(case, "parties")[-1]
        assert first.value is not None
        assert orjson.loads(first.value)["touched"] > 0
        # `touched` is when the event was processed (rounded up); the changelog record
        # itself may be written up to a commit interval later, so it is no reference
        kept_s = tombstone.timestamp / 1000 - orjson.loads(first.value)["touched"]
        assert kept_s >= RETENTION_S, f"{case} forgotten {kept_s:.2f} s after its last event"

    # the discharge's follow-up (due 5 s after it) kept it past the retention: it is
    # forgotten only after the follow-up notice went out
    assert not logs.forgotten(discharge.subject, "cases")
    notices = await sla_notices(catalog_applied, discharge.subject, 1, timeout=20)
    assert [t for t, _ in notices] == ["discharge.followup-due"]
    fired_ms = notices[0][1]
    await logs.until(
        "the discharge to be forgotten once its follow-up fired",
        lambda: (
            logs.forgotten(discharge.subject, "cases")
            and logs.forgotten(discharge.subject, "parties")
        ),
        FORGOTTEN_WITHIN_S,
    )
    after_ms = logs.of(discharge.subject, "cases")[-1].timestamp - fired_ms
    assert after_ms >= 0, f"the discharge was forgotten {-after_ms} ms before its follow-up"


async def test_a_case_still_talked_about_is_kept(
    running: tuple[Processors, Changelogs],
) -> None:
    """Admission, then one event per second on the same stay (each naming the case):
    the case outlives the retention because every event dates it again."""
    ctx, logs = running
    info = stay()
    await publish(ctx, envelope(EventType.ADMISSION_NOTIFIED, info))
    for _ in range(5):  # 5 s of activity, 2.5 retentions
        await asyncio.sleep(1.0)
        await publish(ctx, envelope(EventType.ADMISSION_NOTIFIED, info))
    subject = envelope(EventType.ADMISSION_NOTIFIED, info).subject
    await logs.until("the case in the changelog", lambda: logs.of(subject, "parties"), 10)
    assert not logs.forgotten(subject, "parties")
    # then silence: forgotten
    await logs.until(
        "the quiet case to be forgotten",
        lambda: logs.forgotten(subject, "parties"),
        FORGOTTEN_WITHIN_S,
    )


async def test_a_new_request_on_a_forgotten_case_starts_afresh(
    running: tuple[Processors, Changelogs], catalog_applied: str
) -> None:
    ctx, logs = running
    info = urgent()
    first = envelope(EventType.REFERRAL_REQUESTED, info)
    await publish(ctx, first, envelope(EventType.REFERRAL_ACCEPTED, info))
    await logs.until(
        "the answered referral to be forgotten",
        lambda: logs.forgotten(first.subject, "cases"),
        FORGOTTEN_WITHIN_S,
    )
    # remembered, an answered case ignores a new request; forgotten, it is a new case
    again = envelope(EventType.REFERRAL_REQUESTED, info)
    assert again.id != first.id
    await publish(ctx, again)
    notices = await sla_notices(catalog_applied, first.subject, 2, timeout=20)
    assert [t for t, _ in notices] == ["sla.reminder", "sla.escalated"]

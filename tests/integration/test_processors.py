"""The processors (faust app, in-process) on the real broker, with compressed SLA policies."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import AIOKafkaConsumer

from bus.deadletter import header_text
from bus.settings import Settings
from processors.app import Processors
from processors.sla.policy import DischargePolicy, SlaPolicies
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import expertise_info, referral_info, stay_info
from schemas.topics import DEAD_LETTER, DELIVERY_MSSANTE, SLA_EVENTS, topic_for
from schemas.workitem import WorkItem
from tests.integration.processors_support import (
    envelope,
    processors_running,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def policies() -> SlaPolicies:
    p = SlaPolicies().compressed({"referral-urgent": 3600})  # 2 h → 2 s
    return p.model_copy(
        update={"discharge": DischargePolicy(ack_within="60s", followup_after="3s")}
    )


@pytest.fixture
async def processors(catalog_applied: str, settings: Settings) -> AsyncIterator[Processors]:
    async with processors_running(catalog_applied, settings, policies(), "test-processors") as ctx:
        yield ctx


async def publish(ctx: Processors, *envs: Envelope) -> None:
    for env in envs:
        await ctx.producer.publish(topic_for(env.type), env)


async def collect(bootstrap: str, topic: str, case: str, until, timeout: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list = []
    try:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            batch = await consumer.getmany(timeout_ms=200)
            for rs in batch.values():
                got += [r for r in rs if r.key == case.encode()]
            if until(got):
                break
    finally:
        await consumer.stop()
    return got


def items(records: list) -> list[WorkItem]:
    return [WorkItem.from_envelope(Envelope.decode(r.key, r.value, r.headers)) for r in records]


def types(records: list) -> list[str]:
    return [Envelope.decode(r.key, r.value, r.headers).type for r in records]


def stay(**changes: object):
    base = stay_info()
    return dataclasses.replace(base, visit_number=f"V{uuid.uuid4().hex[:10]}", **changes)


async def test_discharge_planned_late_notice_and_routing(processors, catalog_applied) -> None:
    now = datetime.now(UTC)
    env = envelope(EventType.DISCHARGE_PLANNED, stay(planned_discharge=now + timedelta(hours=20)))
    await publish(processors, env)
    notices = await collect(catalog_applied, SLA_EVENTS.name, env.subject, lambda g: len(g) >= 1)
    assert types(notices) == ["discharge.late-notice"]
    work = await collect(catalog_applied, DELIVERY_MSSANTE.name, env.subject, lambda g: len(g) >= 5)
    by_event = {}
    for item in items(work):
        by_event.setdefault(item.event.type, set()).add(item.recipient.role)
    assert by_event["discharge.planned"] == {"gp", "care-team", "coordinator"}
    assert by_event["discharge.late-notice"] == {"coordinator"}


async def test_urgent_referral_unanswered_reminder_then_escalation(
    processors, catalog_applied
) -> None:
    info = dataclasses.replace(
        referral_info(), referral_id=f"R-{uuid.uuid4().hex[:8]}", priority="urgent"
    )
    env = envelope(EventType.REFERRAL_REQUESTED, info)
    await publish(processors, env)
    got = await collect(
        catalog_applied, SLA_EVENTS.name, env.subject, lambda g: len(g) >= 2, timeout=20
    )
    assert types(got) == ["sla.reminder", "sla.escalated"]
    reminder, escalation = (Envelope.decode(r.key, r.value, r.headers) for r in got)
    assert escalation.time > reminder.time
    work = await collect(catalog_applied, DELIVERY_MSSANTE.name, env.subject, lambda g: len(g) >= 4)
    roles = {(i.event.type, i.recipient.role) for i in items(work)}
    assert ("referral.requested", "performer") in roles
    assert ("sla.reminder", "performer") in roles
    assert {("sla.escalated", "coordinator"), ("sla.escalated", "requester")} <= roles
    # no duplicate notices on the topic: each deadline fired once
    await asyncio.sleep(1.0)
    again = await collect(
        catalog_applied, SLA_EVENTS.name, env.subject, lambda g: False, timeout=1.5
    )
    assert len(again) == 2


async def test_answer_in_time_cancels_deadlines(processors, catalog_applied) -> None:
    info = dataclasses.replace(
        referral_info(), referral_id=f"R-{uuid.uuid4().hex[:8]}", priority="urgent"
    )
    requested = envelope(EventType.REFERRAL_REQUESTED, info)
    accepted = envelope(EventType.REFERRAL_ACCEPTED, info)
    await publish(processors, requested, accepted)
    await asyncio.sleep(5)  # past the compressed due date and escalation
    got = await collect(
        catalog_applied, SLA_EVENTS.name, requested.subject, lambda g: False, timeout=1.5
    )
    assert got == []
    work = await collect(
        catalog_applied, DELIVERY_MSSANTE.name, requested.subject, lambda g: len(g) >= 2
    )
    assert {(i.event.type, i.recipient.role) for i in items(work)} == {
        ("referral.requested", "performer"),
        ("referral.accepted", "requester"),
    }


async def test_followup_due_and_revert_cancels_it(processors, catalog_applied) -> None:
    now = datetime.now(UTC)
    kept = stay(discharged_at=now)
    reverted = stay(discharged_at=now)
    done = envelope(EventType.DISCHARGE_COMPLETED, kept)
    done2 = envelope(EventType.DISCHARGE_COMPLETED, reverted)
    revert = envelope(EventType.DISCHARGE_REVERTED, reverted)
    await publish(processors, done, done2, revert)
    got = await collect(
        catalog_applied, SLA_EVENTS.name, done.subject, lambda g: len(g) >= 1, timeout=15
    )
    assert types(got) == ["discharge.followup-due"]
    none = await collect(
        catalog_applied, SLA_EVENTS.name, done2.subject, lambda g: False, timeout=1.5
    )
    assert none == []


async def test_poison_dead_lettered_and_partition_keeps_flowing(
    processors, catalog_applied
) -> None:
    info = dataclasses.replace(expertise_info(), expertise_id=f"X-{uuid.uuid4().hex[:8]}")
    good = envelope(EventType.EXPERTISE_REQUESTED, info)
    poison = dataclasses.replace(good, id=str(uuid.uuid4()), data=b'{"not": "a bundle"}')
    await publish(processors, poison, good)
    work = await collect(
        catalog_applied, DELIVERY_MSSANTE.name, good.subject, lambda g: len(g) >= 1
    )
    assert [i.event.id for i in items(work)] == [good.id]
    dead = await collect(catalog_applied, DEAD_LETTER.name, good.subject, lambda g: len(g) >= 1)
    assert any(
        r.value == poison.data and "route" in header_text(r.headers, "dlq_group") for r in dead
    )


async def test_unresolved_recipient_alerts_coordinator(processors, catalog_applied) -> None:
    base = stay()
    gp = dataclasses.replace(base.declared_gp, mailbox=None)
    env = envelope(EventType.ADMISSION_NOTIFIED, dataclasses.replace(base, declared_gp=gp))
    await publish(processors, env)
    work = await collect(
        catalog_applied,
        DELIVERY_MSSANTE.name,
        env.subject,
        lambda g: any(i.event.type == "delivery.failed" for i in items(g)),
    )
    alerts = [i for i in items(work) if i.event.type == "delivery.failed"]
    assert [a.recipient.role for a in alerts] == ["coordinator"]
    dead = await collect(catalog_applied, DEAD_LETTER.name, env.subject, lambda g: len(g) >= 1)
    assert any("recipient unresolved: gp" in header_text(r.headers, "dlq_reason") for r in dead)

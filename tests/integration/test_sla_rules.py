"""The SLA rules not covered by test_processors.py, on the real broker with compressed
policies: routine referral, tele-expertise, discharge acknowledgements (read receipts)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from bus.settings import Settings
from processors.app import Processors
from processors.sla.policy import DischargePolicy, SlaPolicies
from schemas.cases import case_ref
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.model import BusNoticeInfo
from schemas.samples import expertise_info, referral_info
from schemas.topics import DELIVERY_MSSANTE, SLA_EVENTS
from tests.integration.processors_support import envelope, processors_running
from tests.integration.test_processors import collect, items, publish, stay, types

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def policies() -> SlaPolicies:
    # routine: 5 business days → ~2 s, escalation 2 business days later → ~1 s;
    # expertise: reminder after 3 days → 3 s, escalation at 7 days → 7 s
    p = SlaPolicies().compressed({"referral-routine": 86400, "expertise": 86400})
    return p.model_copy(
        update={"discharge": DischargePolicy(ack_within="8s", followup_after="P7D")}
    )


@pytest.fixture
async def processors(catalog_applied: str, settings: Settings) -> AsyncIterator[Processors]:
    async with processors_running(catalog_applied, settings, policies(), "test-sla") as ctx:
        yield ctx


async def test_routine_referral_reminded_then_escalated(processors, catalog_applied) -> None:
    info = dataclasses.replace(
        referral_info(), referral_id=f"R-{uuid.uuid4().hex[:8]}", priority="routine"
    )
    env = envelope(EventType.REFERRAL_REQUESTED, info)
    await publish(processors, env)
    got = await collect(
        catalog_applied, SLA_EVENTS.name, env.subject, lambda g: len(g) >= 2, timeout=30
    )
    assert types(got) == ["sla.reminder", "sla.escalated"]


async def test_expertise_reminder_then_escalation_and_late_answer(
    processors, catalog_applied
) -> None:
    info = dataclasses.replace(expertise_info(), expertise_id=f"X-{uuid.uuid4().hex[:8]}")
    asked = envelope(EventType.EXPERTISE_REQUESTED, info)
    await publish(processors, asked)
    got = await collect(
        catalog_applied, SLA_EVENTS.name, asked.subject, lambda g: len(g) >= 2, timeout=30
    )
    assert types(got) == ["sla.reminder", "sla.escalated"]
    answered = dataclasses.replace(info, answer="Lésion bénigne.")
    await publish(processors, envelope(EventType.EXPERTISE_ANSWERED, answered))
    work = await collect(
        catalog_applied,
        DELIVERY_MSSANTE.name,
        asked.subject,
        lambda g: any(i.event.type == "expertise.answered" for i in items(g)),
    )
    answer_items = [i for i in items(work) if i.event.type == "expertise.answered"]
    assert [i.recipient.role for i in answer_items] == ["requester"]
    await asyncio.sleep(1.0)
    after = await collect(
        catalog_applied, SLA_EVENTS.name, asked.subject, lambda g: False, timeout=1.5
    )
    assert len(after) == 2  # the late answer closed the case: nothing more fires


def read_receipt(cause: Envelope, recipient_rpps: str) -> Envelope:
    event_id = str(uuid.uuid4())
    info = BusNoticeInfo(
        about=case_ref(cause.subject),
        text="lu",
        channel="mssante",
        address="x@y.mssante.fr",
        about_event=cause.id,
        recipient_id=recipient_rpps,
    )
    bundle = build_event(
        EventType.DELIVERY_READ, info, event_id=event_id, timestamp=datetime.now(UTC)
    )
    return cause.caused(
        id=event_id, type="delivery.read", source="urn:carebus:bus", data=orjson.dumps(bundle)
    )


async def test_discharge_recipients_who_did_not_read_get_a_reminder(
    processors, catalog_applied
) -> None:
    now = datetime.now(UTC)
    info = stay(planned_discharge=now + timedelta(hours=60))
    env = envelope(EventType.DISCHARGE_PLANNED, info)
    await publish(processors, env)
    gp_rpps = info.declared_gp.rpps
    # the GP reads the announcement as soon as it is mailed; the care team does not
    # (a receipt can only follow the mail, so wait for the routing of the event first;
    # the 8 s window leaves room for reading the whole topic on a loaded CI machine)
    await collect(
        catalog_applied,
        DELIVERY_MSSANTE.name,
        env.subject,
        lambda g: any(i.event.type == "discharge.planned" for i in items(g)),
    )
    await publish(processors, read_receipt(env, gp_rpps))

    def reminders(records: list) -> list:
        return [i for i in items(records) if i.event.type == "sla.reminder"]

    await collect(
        catalog_applied,
        DELIVERY_MSSANTE.name,
        env.subject,
        lambda g: len(reminders(g)) >= len(info.care_team),
        timeout=40,
    )
    await asyncio.sleep(1.0)  # a reminder to the GP, if any, would be out by now
    got = await collect(
        catalog_applied, DELIVERY_MSSANTE.name, env.subject, lambda g: False, timeout=1.5
    )
    reminded = [i.recipient.id for i in reminders(got)]
    assert sorted(reminded) == sorted(p.rpps for p in info.care_team)  # once each
    assert gp_rpps not in reminded

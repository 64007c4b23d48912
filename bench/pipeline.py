"""Routed events/s per processor worker: the faust routing + SLA agents catching up on a
backlog of realistic events (referrals with letters, discharges, tele-expertise) on the
embedded broker. One worker process, both agents running, work items acknowledged."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import orjson

from bench.stats import Figure, summarise
from bus.producer import EventProducer
from bus.settings import Settings
from processors.app import Processors
from processors.directory.importers import from_bytes
from processors.directory.model import Directory, territory_from_settings
from processors.runner import run_processors
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.samples import expertise_info, referral_info, stay_info
from schemas.topics import topic_for
from schemas.validate import validate_message


def _events(n: int) -> list[Envelope]:
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            et, info = (
                EventType.REFERRAL_REQUESTED,
                dataclasses.replace(referral_info(), referral_id=f"B-{uuid.uuid4().hex[:10]}"),
            )
        elif kind == 1:
            et, info = (
                EventType.DISCHARGE_COMPLETED,
                dataclasses.replace(stay_info(), visit_number=f"B{uuid.uuid4().hex[:10]}"),
            )
        else:
            et, info = (
                EventType.EXPERTISE_REQUESTED,
                dataclasses.replace(expertise_info(), expertise_id=f"B-{uuid.uuid4().hex[:10]}"),
            )
        msg = validate_message(orjson.dumps(build_event(et, info)), structural=False)
        out.append(
            Envelope(
                id=msg.event_id,
                type=et.value,
                source="urn:bench",
                subject=msg.case_id,
                data=msg.raw,
            )
        )
    return out


async def run(bootstrap: str, settings: Settings, *, n: int = 3000, runs: int = 3) -> list[Figure]:
    from pathlib import Path

    sample = Path(__file__).parents[1] / "deploy" / "samples" / "annuaire.json"
    directory = Directory(
        from_bytes(sample.read_bytes(), "annuaire.json").entries,
        defaults=[territory_from_settings(t) for t in settings.routing.territories],
    )
    rates: list[float] = []
    total = 0
    async with EventProducer(bootstrap, settings.kafka) as producer:
        for _ in range(runs):
            events = _events(n)
            for i in range(0, n, 500):
                await producer.publish_many((topic_for(e.type), e) for e in events[i : i + 500])
            total += n
            ctx = Processors(producer=producer, lookup=directory, policies=settings.sla)
            async with run_processors(
                settings, bootstrap, ctx, app_id=f"bench-{uuid.uuid4().hex[:6]}"
            ):
                started = time.perf_counter()
                while len(ctx.dedup) < total:  # noqa: ASYNC110 - polling a counter the agent owns
                    await asyncio.sleep(0.05)
                rates.append(total / (time.perf_counter() - started))
    return [
        summarise(
            "pipeline: events routed per worker (route + SLA agents, work items acked)",
            "events/s",
            rates,
        )
    ]

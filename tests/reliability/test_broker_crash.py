"""Fault (a): the broker is SIGKILLed mid-stream and restarted.

`carebus up` runs as a subprocess against an embedded Apache Kafka the test owns (so the
test can kill it); a hospital (MLLP) and a practice software (FHIR HTTP) send all along.
While the broker is down the senders must hear AE / 503 (never AA / 202), and retry; after
the restart nothing acknowledged is lost and every effect happens once (invariant).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bus.embedded import EmbeddedKafka
from bus.provisioning import apply_topics
from tests.reliability import harness as h
from tests.reliability.conftest import broker_settings

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("CAREBUS_KAFKA__BOOTSTRAP")),
        reason="kills the embedded broker; an external cluster is not ours to kill",
    ),
]


async def wait_until(cond: object, within: float, what: str) -> None:
    end = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            pytest.fail(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def test_broker_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path) -> None:
    bsettings = broker_settings(tmp_path / "broker")
    broker = EmbeddedKafka(bsettings)
    bootstrap = await broker.start()
    await apply_topics(bootstrap, bsettings.kafka)
    await h.publish_directory(bootstrap, bsettings.kafka)
    stack = h.StackProcess(tmp_path, bootstrap)
    load = h.Load(stack.ports["mllp"], stack.base, hl7_interval=0.05, fhir_interval=0.3)
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    broker2: EmbeddedKafka | None = None
    try:
        await stack.start()
        tasks = [asyncio.create_task(load.hl7(stop)), asyncio.create_task(load.fhir(stop))]
        await wait_until(lambda: load.count("AA") >= 40 and load.count("202") >= 6, 60, "traffic")
        before = len(load.sent)
        broker.kill()  # SIGKILL: no flush, no controlled shutdown
        # while it is down: transient refusals only
        await wait_until(
            lambda: (
                any(s.answer == "AE" for s in load.sent[before:])
                and any(s.answer == "503" for s in load.sent[before:])
            ),
            90,
            "AE and 503 while the broker is down",
        )
        down = load.sent[before:]
        broker2 = EmbeddedKafka(bsettings)  # same data dir, same ports
        await broker2.start()
        restarted = len(load.sent)
        # once a channel heard a transient refusal, nothing more was acknowledged on it
        # until the broker came back (an answer in flight at the kill may still be AA)
        for via in ("mllp", "http"):
            seen = [s for s in down if s.via == via]
            first = next(i for i, s in enumerate(seen) if s.transient)
            assert not [s for s in seen[first:] if s.acknowledged], seen
        await wait_until(
            lambda: (
                sum(s.answer == "AA" for s in load.sent[restarted:]) >= 20
                and sum(s.answer == "202" for s in load.sent[restarted:]) >= 3
            ),
            120,
            "traffic acknowledged again after the restart",
        )
        stop.set()
        await asyncio.gather(*tasks)
        report = await h.settle(
            bootstrap, bsettings.kafka, load.sent, stack.data_dir, stack.store_url, within=150
        )
        codes = {a: load.count(a) for a in ("AA", "AE", "AR", "202", "503", "422", "")}
        assert report.ok, f"{codes}\n{report.summary()}\n{stack.tail()}"
        assert codes["AE"] + codes["503"] + codes[""] > 0
        assert report.delivered > 50
        print(f"broker crash: answers {codes}; {report.summary()}")
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await stack.stop()
        if broker2 is not None:
            await broker2.stop()
        broker.kill()

"""Fault (b): an outbound worker and a processor worker SIGKILLed mid-batch, restarted.

Two `carebus run` processes on the same settings, as an operator scales out: one runs the
processors and the ingress listeners, the other the outbound workers (with the embedded
mailbox and document store). Under load, the adapters process is SIGKILLed while it is
delivering, then restarted; then the processors process. At-least-once redelivers the
uncommitted tail: the invariant checks no acknowledged input is lost and no effect is
duplicated (one .eml per recipient and Message-ID, one document per masterIdentifier).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bus.settings import KafkaSettings
from tests.reliability import harness as h
from tests.reliability import invariant as inv

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CAREBUS_RELIABILITY_LONG"),
        reason="~2 min: run by `make reliability` (CAREBUS_RELIABILITY_LONG=1), not in CI",
    ),
]


def mails(stack: h.StackProcess) -> int:
    return len(inv.read_mailbox(stack.data_dir)[0])


async def wait_until(cond: object, within: float, what: str) -> None:
    end = time.monotonic() + within
    while not cond():  # type: ignore[operator]
        if time.monotonic() > end:
            pytest.fail(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def test_worker_sigkill_mid_batch_no_loss_no_duplicate(
    rel_bootstrap: str, tmp_path: Path
) -> None:
    kafka = KafkaSettings(bootstrap=rel_bootstrap)
    front = h.StackProcess(tmp_path, rel_bootstrap, name="front", roles=("processors", "ingress"))
    back = h.StackProcess(
        tmp_path, rel_bootstrap, name="back", roles=("adapters",), ports=front.ports
    )
    since = await inv.end_offsets(rel_bootstrap, kafka, h.BUS_TOPICS)
    load = h.Load(front.ports["mllp"], front.base, hl7_interval=0.02, fhir_interval=0.2)
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        await back.start()
        await front.start()
        tasks = [asyncio.create_task(load.hl7(stop)), asyncio.create_task(load.fhir(stop))]
        await wait_until(lambda: mails(back) >= 30, 60, "mails delivered")
        await back.kill()  # mid-batch: deliveries were flowing
        killed_at = mails(back)
        await back.start()
        await wait_until(lambda: mails(back) >= killed_at + 30, 90, "delivery resumed")
        await front.kill()
        await front.start()
        await wait_until(
            lambda: load.count("AA") >= 100 and load.count("202") >= 15, 90, "traffic after"
        )
        stop.set()
        await asyncio.gather(*tasks)
        report = await h.settle(
            rel_bootstrap, kafka, load.sent, back.data_dir, back.store_url, since=since
        )
        codes = {a: load.count(a) for a in ("AA", "AE", "AR", "202", "503", "422", "")}
        assert report.ok, f"{codes}\n{report.summary()}\n{back.tail()}\n{front.tail()}"
        assert report.delivered > 100 and report.failed == 0, report.summary()
        print(f"worker crash: answers {codes}; {report.summary()}")
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await front.stop()
        await back.stop()

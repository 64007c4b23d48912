"""The SLA timer's tick hand-off, pure (a stand-in topic whose futures the test settles)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from aiokafka.errors import InvalidTimestampError

from processors.context import Processors
from processors.sla.policy import SlaPolicies
from processors.ticker import Ticker

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


class Topic:
    """Records sends; each returns a future the test resolves as the broker would."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, asyncio.Future]] = []

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((key, value, fut))
        return fut


def ticker(now: list[datetime]) -> tuple[Ticker, Topic]:
    ctx = Processors(producer=None, lookup=None, policies=SlaPolicies(), clock=lambda: now[0])  # type: ignore[arg-type]
    topic = Topic()
    return Ticker(ctx, topic, retry_s=0.05), topic


async def test_a_refused_tick_goes_back_in_the_queue_and_is_sent_again() -> None:
    now = [T0]
    t, topic = ticker(now)
    t.ctx.queue.schedule("case-a", T0 - timedelta(seconds=1), 1)
    t.ctx.queue.schedule("case-b", T0 + timedelta(hours=1), 2)
    assert await t.fire_due() == 1
    topic.sent[0][2].set_exception(InvalidTimestampError())
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert ("case-a", 1) not in t.in_flight and len(t.ctx.queue) == 2
    assert await t.fire_due() == 0, "holds off after a refusal"
    await asyncio.sleep(0.06)
    assert await t.fire_due() == 1 and topic.sent[1][:2] == (b"case-a", b"1")
    topic.sent[1][2].set_result(object())
    await asyncio.sleep(0)
    assert ("case-a", 1) in t.in_flight  # taken by the broker, on its way to the agent
    t.landed("case-a", 1)
    assert not t.in_flight and len(t.ctx.queue) == 1  # case-b still pending


async def test_a_tick_taken_then_landed_is_never_rearmed() -> None:
    now = [T0]
    t, topic = ticker(now)
    t.ctx.queue.schedule("case-a", T0, 7)
    await t.fire_due()
    t.landed("case-a", 7)  # the agent got it before the producer's answer was read
    topic.sent[0][2].set_exception(InvalidTimestampError())  # e.g. a late duplicate's error
    await asyncio.sleep(0)
    assert len(t.ctx.queue) == 0, "fired already: re-arming would only make a no-op tick"


async def test_reset_forgets_what_was_in_flight() -> None:
    now = [T0]
    t, _ = ticker(now)
    t.ctx.queue.schedule("case-a", T0, 1)
    await t.fire_due()
    t.reset()
    assert not t.in_flight

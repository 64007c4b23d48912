"""Run the processors (faust app) inside a CareBus process, next to the other roles."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import faust

from bus.provisioning import apply_topics
from bus.settings import Settings
from processors.app import Processors, create_app, internal_topics

log = logging.getLogger("carebus.processors")


async def wait_assigned(app: faust.App, timeout_s: float = 60.0) -> None:
    """Until the worker owns partitions and its tables are recovered (so deadlines are
    armed): before that, events are not lost, only not yet processed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        recovery = app.tables.recovery
        if app.consumer.assignment() and not app.rebalancing and recovery.completed.is_set():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("processors did not get their partitions in time")


@contextlib.asynccontextmanager
async def run_processors(
    settings: Settings,
    bootstrap: str,
    ctx: Processors,
    *,
    app_id: str = "carebus-processors",
    wait: bool = True,
) -> AsyncIterator[faust.App]:
    # faust creates its datadir without parents: on a fresh data dir (external broker,
    # `carebus run processors`) the worker would die at start with FileNotFoundError
    (settings.data_dir / "processors").mkdir(parents=True, exist_ok=True)
    await apply_topics(bootstrap, settings.kafka, internal_topics(app_id))
    app = create_app(settings, bootstrap, ctx, app_id=app_id)
    app.finalize()
    await app.start()
    try:
        if wait:
            await wait_assigned(app)
        yield app
    finally:
        await app.stop()

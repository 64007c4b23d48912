"""Composition root: start every component of a CareBus process, stop them in order.

Start order: broker → topics → producer → ingress state → listeners. Stop order is the
reverse, so the listeners stop taking messages first and every message already
acknowledged was acknowledged after its durable write (nothing in flight is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from bus.runtime import broker
from bus.settings import Settings

log = logging.getLogger("carebus.stack")


@dataclass
class Running:
    bootstrap: str
    endpoints: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def run_stack(settings: Settings, *, ingress: bool = True):
    """Run the configured roles until the block exits; yields what runs where."""
    from adapters.fhir_api.app import ApiContext, create_app
    from adapters.fhir_api.auth import TokenRegistry
    from adapters.hl7.listener import MllpListener
    from adapters.ingress import Ingress, follow_referrals
    from bus.asgi import serve
    from bus.producer import EventProducer
    from bus.provisioning import apply_topics

    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await stack.enter_async_context(broker(settings))
        running = Running(bootstrap)
        running.endpoints["kafka"] = bootstrap
        await apply_topics(bootstrap, settings.kafka)
        producer = EventProducer(bootstrap, settings.kafka)
        await producer.start()
        stack.push_async_callback(producer.stop)
        if ingress:
            gate = Ingress(producer)
            stop_feed = asyncio.Event()
            feed = asyncio.create_task(
                follow_referrals(gate, bootstrap, settings.kafka, stop_feed), name="referral-feed"
            )

            async def stop_referral_feed() -> None:
                stop_feed.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await feed

            stack.push_async_callback(stop_referral_feed)
            tokens = TokenRegistry(settings.http.clients)
            if not len(tokens):
                log.warning("no HTTP API client configured: every API call will get 401")
            h = settings.http
            base = f"http://{h.host}:{h.port}/fhir"
            ctx = ApiContext(gate, tokens, h.max_body_bytes, base)
            port = await stack.enter_async_context(serve(create_app(ctx), h.host, h.port))
            running.endpoints["fhir"] = f"http://{h.host}:{port}/fhir"
            mllp = MllpListener(gate, settings.mllp)
            mport = await mllp.start()
            stack.push_async_callback(mllp.stop)
            running.endpoints["mllp"] = f"mllp://{settings.mllp.host}:{mport}"
        yield running

"""Composition root: start the components of a CareBus process, stop them in order.

Start order: broker → topics → producer → directory → subscriptions → processors →
outbound workers (and the embedded mailbox / document store) → ingress listeners.
Stop order is the reverse: the listeners stop taking messages first, so every message
already acknowledged was acknowledged after its durable write; consumers commit what
they processed; deadlines stay in the SLA table and resume on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bus.consumer import EventConsumer
from bus.dedup import Deduplicator
from bus.logs import install_guard
from bus.producer import EventProducer
from bus.runtime import broker
from bus.settings import ApiClient, Settings

if TYPE_CHECKING:
    from adapters.eparcours.service import SubscriptionService
    from adapters.fhir_api.auth import TokenRegistry
    from processors.consent import ConsentRegistry

log = logging.getLogger("carebus.stack")

ROLES = ("processors", "adapters", "ingress", "dashboard")


@dataclass
class Running:
    """What runs where (printed by `carebus up`, used by `carebus demo`)."""

    bootstrap: str
    endpoints: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    dmp_url: str = ""
    groups: list[str] = field(default_factory=list)  # consumer groups this process runs


def _task(
    stack: contextlib.AsyncExitStack, coro: Coroutine[object, object, None], name: str
) -> asyncio.Task:
    task = asyncio.create_task(coro, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    stack.push_async_callback(cancel)
    return task


async def _consume(
    stack: contextlib.AsyncExitStack,
    consumer: EventConsumer,
    name: str,
    running: Running | None = None,
) -> None:
    """Run an EventConsumer until shutdown, then let it commit and leave the group."""
    if running is not None:
        running.groups.append(consumer.config.group_id)
    stop = asyncio.Event()
    await consumer.start()
    task = asyncio.create_task(consumer.run(stop), name=name)

    async def shutdown() -> None:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10)
        except (TimeoutError, Exception):  # noqa: BLE001 - still stop the consumer below
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await consumer.stop()

    stack.push_async_callback(shutdown)


@contextlib.asynccontextmanager
async def run_stack(settings: Settings, roles: tuple[str, ...] = ROLES) -> AsyncIterator[Running]:
    """Run the given roles (default: all) until the block exits; yields what runs where.

    Each role scales out by starting more processes with the same settings: processors
    and adapters split partitions through their consumer groups; ingress is stateless.
    """
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")
    from adapters.eparcours.deliver import build_service
    from processors.consent import ConsentFeed
    from processors.directory.feed import DirectoryFeed
    from processors.directory.model import Directory, territory_from_settings

    install_guard()  # no patient data in any log line of this process, whatever the handler
    async with contextlib.AsyncExitStack() as stack:
        bootstrap = await stack.enter_async_context(broker(settings))
        running = Running(bootstrap)
        producer = EventProducer(bootstrap, settings.kafka)
        await producer.start()
        stack.push_async_callback(producer.stop)
        # e-parcours subscriptions, rebuilt from their compacted topic (routing matches
        # events against them; the API and the worker change and use them)
        service = await build_service(settings, producer, bootstrap=bootstrap)
        if "processors" in roles:
            # directory: compacted topic → in-memory table; territories from settings
            defaults = [territory_from_settings(t) for t in settings.routing.territories]
            directory = Directory(defaults=defaults)
            feed = DirectoryFeed(bootstrap, settings.kafka, directory)
            await feed.start()
            stack.push_async_callback(feed.stop)
            await feed.ready()
            # consent: patients' recorded decisions, folded the same way
            consents = ConsentFeed(bootstrap, settings.kafka)
            await consents.start()
            stack.push_async_callback(consents.stop)
            await consents.ready()
            await _processors(
                stack, settings, running, producer, service, directory, consents.registry
            )
        if "adapters" in roles:
            await _adapters(stack, settings, running, producer, service)
        if "ingress" in roles:
            await _ingress(stack, settings, running, producer, service)
        if "dashboard" in roles:
            await _dashboard(stack, settings, running, producer)
        await _observability(stack, settings, running)
        running.endpoints["kafka"] = bootstrap
        yield running


async def _processors(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    running: Running,
    producer: EventProducer,
    service: SubscriptionService,
    directory: object,
    consents: ConsentRegistry,
) -> None:
    from processors.app import Processors
    from processors.runner import run_processors

    ctx = Processors(
        producer=producer,
        lookup=directory,
        policies=settings.sla,  # type: ignore[arg-type]
        subscriptions=service,
        consents=consents,
        sweep_interval_s=settings.processors.sweep_interval_s,
        dedup=Deduplicator(settings.kafka.dedup_window),
    )
    await stack.enter_async_context(
        run_processors(settings, running.bootstrap, ctx, app_id=settings.processors.app_id)
    )
    running.endpoints["processors"] = "routing + SLA agents (faust)"
    running.groups.append(settings.processors.app_id)


async def _adapters(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    running: Running,
    producer: EventProducer,
    service: SubscriptionService,
) -> None:
    """Outbound workers, with the embedded mailbox / document store by default."""
    from adapters.delivery import DeliveryWorker
    from adapters.dmp.client import DmpAdapter
    from adapters.dmp.store import embedded_store
    from adapters.eparcours.deliver import EparcoursWorker, retry_policy, run_heartbeats
    from adapters.mssante.mailbox import LocalMailbox
    from adapters.mssante.receipts import ReceiptPoller
    from adapters.mssante.sender import MssanteAdapter
    from schemas.topics import DELIVERY_DMP, DELIVERY_EPARCOURS, DELIVERY_MSSANTE

    bootstrap, kafka = running.bootstrap, settings.kafka
    # MSSanté: embedded TLS mailbox unless a relay is configured
    mailbox_port = None
    if not settings.mssante.host:
        mailbox = LocalMailbox.from_settings(settings)
        await mailbox.start()
        stack.push_async_callback(mailbox.stop)
        mailbox_port = mailbox.port
        running.endpoints["mailbox"] = (
            f"smtp://{settings.mssante.mailbox_host}:{mailbox.port} (STARTTLS, mTLS) → "
            f"{settings.data_dir / 'mailbox'}"
        )
        running.ports["mailbox"] = mailbox.port
    mail = MssanteAdapter.from_settings(settings, mailbox_port=mailbox_port)
    stack.push_async_callback(mail.aclose)
    await _consume(
        stack,
        DeliveryWorker(mail, producer).consumer(
            bootstrap, kafka, DELIVERY_MSSANTE.name, concurrency=settings.mssante.concurrency
        ),
        "deliver-mssante",
        running,
    )
    if settings.mssante.imap_host:
        poller = ReceiptPoller.from_settings(settings, producer)
        stop_poll = asyncio.Event()
        stack.callback(stop_poll.set)
        _task(stack, poller.run(stop_poll, settings.mssante.imap_poll_s), "mdn-poller")
    # shared record: embedded document store unless a DMP URL is set
    dmp_url = settings.dmp.base_url
    if not dmp_url:
        dmp_url = await stack.enter_async_context(embedded_store(settings))
        running.endpoints["document store"] = f"{dmp_url} (IHE MHD ITI-65/67/68)"
    running.dmp_url = dmp_url
    record = DmpAdapter(dmp_url, settings=settings.dmp)
    stack.push_async_callback(record.aclose)
    await _consume(
        stack,
        DeliveryWorker(record, producer).consumer(
            bootstrap, kafka, DELIVERY_DMP.name, concurrency=settings.dmp.concurrency
        ),
        "deliver-dmp",
        running,
    )
    # e-parcours rest-hooks and heartbeats
    platforms = EparcoursWorker(service, producer, retry=retry_policy(settings.eparcours))
    await _consume(
        stack,
        platforms.consumer(
            bootstrap, kafka, DELIVERY_EPARCOURS.name, concurrency=settings.eparcours.concurrency
        ),
        "deliver-eparcours",
        running,
    )
    stop_beats = asyncio.Event()
    stack.callback(stop_beats.set)
    _task(stack, run_heartbeats(service, stop_beats), "heartbeats")


async def _ingress(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    running: Running,
    producer: EventProducer,
    service: SubscriptionService,
) -> None:
    """FHIR HTTP (with the Subscription API) and HL7 MLLP listeners."""
    from adapters.eparcours.api import subscription_routes, token_authorizer
    from adapters.fhir_api.app import ApiContext, create_app
    from adapters.fhir_api.auth import TokenRegistry
    from adapters.hl7.listener import MllpListener
    from adapters.ingress import Ingress, follow_referrals
    from bus.asgi import serve

    h = settings.http
    gate = Ingress(producer, rules=settings.ingress, dedup_size=settings.kafka.dedup_window)
    stop_feed = asyncio.Event()
    stack.callback(stop_feed.set)
    _task(
        stack, follow_referrals(gate, running.bootstrap, settings.kafka, stop_feed), "referral-feed"
    )
    tokens = TokenRegistry(h.clients)
    if not len(tokens):
        log.warning("no HTTP API client configured: every API call will get 401")
    _watch_token_expiry(tokens, h.clients)
    base = f"http://{h.host}:{h.port}/fhir"
    app = create_app(ApiContext(gate, tokens, h.max_body_bytes, base))
    app.router.routes.extend(
        subscription_routes(service, token_authorizer(h.clients), prefix="/fhir")
    )
    port = await stack.enter_async_context(serve(app, h.host, h.port))
    running.endpoints["fhir"] = f"http://{h.host}:{port}/fhir"
    running.ports["http"] = port
    mllp = MllpListener(gate, settings.mllp)
    mport = await mllp.start()
    stack.push_async_callback(mllp.stop)
    running.endpoints["mllp"] = f"mllp://{settings.mllp.host}:{mport}"
    running.ports["mllp"] = mport


def _watch_token_expiry(tokens: TokenRegistry, clients: list[ApiClient]) -> None:
    """Warn now about tokens that expire within 14 days; export every expiry for alerts."""
    from bus.metrics import TOKEN_EXPIRY

    for c in clients:
        if c.expires is not None:
            TOKEN_EXPIRY.labels(c.id).set(c.expires.timestamp())
    now = datetime.now(UTC)
    for c in tokens.expiring(timedelta(days=14), now):
        state = "expired" if c.expires <= now else "expires"
        log.warning("API client %s: token %s at %s; rotate it", c.id, state, c.expires)


async def _dashboard(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    running: Running,
    producer: EventProducer,
) -> None:
    """The coordinator dashboard (its own listener, `dashboard.port`, under /tableau)."""
    from adapters.dashboard.service import run_dashboard

    dash = await stack.enter_async_context(run_dashboard(settings, running.bootstrap, producer))
    where = dash.url
    if dash.generated:
        login, password = dash.generated
        where += (
            f" (local account {login!r}, password {password!r} for this run only; "
            "configure [[dashboard.users]] to keep accounts)"
        )
    running.endpoints["dashboard"] = where
    running.ports["dashboard"] = dash.port


async def _observability(
    stack: contextlib.AsyncExitStack, settings: Settings, running: Running
) -> None:
    """This process's /metrics endpoint and its consumer-lag sampler."""
    from bus.observability import run_lag_sampler, serve_metrics

    o = settings.observability
    if o.metrics_enabled:
        try:
            port = await stack.enter_async_context(serve_metrics(o.metrics_host, o.metrics_port))
        except (OSError, SystemExit) as exc:  # uvicorn exits on a bind error
            # metrics are not worth refusing to carry care messages: say it loudly
            log.error(
                "metrics endpoint not started on %s:%d: %s", o.metrics_host, o.metrics_port, exc
            )
        else:
            running.endpoints["metrics"] = f"http://{o.metrics_host}:{port}/metrics"
            running.ports["metrics"] = port
    if running.groups and o.lag_interval_s > 0:
        stop = asyncio.Event()
        stack.callback(stop.set)
        _task(
            stack,
            run_lag_sampler(
                running.bootstrap, settings.kafka, running.groups, o.lag_interval_s, stop
            ),
            "consumer-lag",
        )

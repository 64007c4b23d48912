"""The e-parcours channel in the delivery harness, plus its heartbeat task.

Why a `DeliveryWorker` subclass: the harness owns retries (transient outcomes are
retried with backoff up to `eparcours.max_attempts`) and publishes delivery.sent /
delivery.failed and the dead letter; what it cannot know is that a final failure means
the *subscription* is broken. `EparcoursWorker.handle` adds exactly that: a work item
that ends failed puts its subscription in status `error` and raises the alert
(`SubscriptionService.set_error`); the heartbeat task's recovery probe brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.structs import ConsumerRecord

from adapters.delivery import DeliveryWorker, Outcome, RetryPolicy
from adapters.eparcours.guard import EndpointPolicy
from adapters.eparcours.sender import RestHookSender
from adapters.eparcours.service import SubscriptionService
from adapters.eparcours.store import SubscriptionStore
from bus.producer import EventProducer
from bus.settings import EparcoursSettings, Settings
from schemas.envelope import Envelope
from schemas.workitem import WorkItem

log = logging.getLogger("carebus.eparcours")


class EparcoursAdapter:
    """`ChannelAdapter` for care.delivery.eparcours: one work item = one event for one
    subscription (recipient id = subscription id)."""

    name = "eparcours"

    def __init__(self, service: SubscriptionService) -> None:
        self.service = service

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome:
        return await self.service.notify(item.recipient.id, item.id, bundle)


class EparcoursWorker(DeliveryWorker):
    """The harness, plus: a final failure at the endpoint puts the subscription in error
    (and alerts); an event that cannot be notified at all does not."""

    def __init__(
        self, service: SubscriptionService, producer: EventProducer, *, retry: RetryPolicy
    ) -> None:
        super().__init__(EparcoursAdapter(service), producer, retry=retry)
        self.service = service

    async def handle(self, env: Envelope, record: ConsumerRecord | None = None) -> Outcome:
        outcome = await super().handle(env, record)
        item = WorkItem.from_envelope(env)
        if self.service.endpoint_failed(item.id) and outcome.status == "failed":
            await self.service.set_error(
                item.recipient.id, f"delivery failed: {outcome.detail}", "delivery"
            )
        return outcome


def retry_policy(settings: EparcoursSettings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.max_attempts,
        base_s=settings.backoff_base_s,
        max_s=settings.backoff_max_s,
    )


def default_base_url(settings: Settings) -> str:
    """The FHIR base named in notifications: settings, else the HTTP API's address."""
    if settings.eparcours.base_url:
        return settings.eparcours.base_url.rstrip("/")
    return f"http://{settings.http.host}:{settings.http.port}/fhir"


async def build_service(
    settings: Settings,
    producer: EventProducer | None,
    *,
    bootstrap: str | None = None,
    base_url: str | None = None,
) -> SubscriptionService:
    """Store (rebuilt from care.subscriptions when `bootstrap` is given) + sender + service."""
    ep = settings.eparcours
    store = SubscriptionStore(producer, events_kept=ep.events_kept, numbers_kept=ep.numbers_kept)
    if bootstrap:
        await store.load(bootstrap, settings.kafka)
    sender = RestHookSender(
        EndpointPolicy.from_settings(ep), timeout_s=ep.timeout_s, ca_file=ep.ca_file
    )
    return SubscriptionService(
        store, sender, settings=ep, base_url=base_url or default_base_url(settings)
    )


async def run_heartbeats(service: SubscriptionService, stop: asyncio.Event) -> None:
    """Every `heartbeat_check_s`: due heartbeats and recovery probes, until `stop`."""
    while not stop.is_set():
        try:
            await service.heartbeat_once()
        except Exception:
            log.exception("heartbeat tick failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), service.settings.heartbeat_check_s)

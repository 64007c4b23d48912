"""What subscriptions do: created with a handshake, notified once per event with one
number, probed with heartbeats, put in `error` when their endpoint keeps failing.

Why one service shared by the API and the delivery worker: both change the same records
(status, numbering) and the store serialises those changes; keeping the behaviour here
leaves `api` with HTTP concerns and `deliver` with the harness wiring.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from prometheus_client import Counter

from adapters.bundle_view import BundleError, BundleView, to_utc
from adapters.delivery import Outcome
from adapters.eparcours.filters import EventFacts, matches
from adapters.eparcours.guard import EndpointPolicy
from adapters.eparcours.notify import EventNote, notification
from adapters.eparcours.registry import Status, SubscriptionRecord, transition
from adapters.eparcours.resource import from_fhir
from adapters.eparcours.sender import RestHookSender
from adapters.eparcours.store import SubscriptionStore
from adapters.eparcours.topics import topic_of
from bus.metrics import REGISTRY
from bus.settings import EparcoursSettings
from schemas.workitem import Recipient, RecipientKind

log = logging.getLogger("carebus.eparcours")

SUBSCRIPTION_ERRORS = Counter(
    "carebus_subscription_errors_total",
    "Subscriptions put in status error (handshake or delivery failures)",
    ["cause"],
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "carebus_subscription_notifications_total",
    "Notifications posted to rest-hook endpoints",
    ["type", "result"],
    registry=REGISTRY,
)


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SubscriptionService:
    def __init__(
        self,
        store: SubscriptionStore,
        sender: RestHookSender,
        *,
        settings: EparcoursSettings,
        base_url: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_error: Callable[[SubscriptionRecord, str], object] | None = None,
    ) -> None:
        self.store = store
        self.sender = sender
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.on_error = on_error  # the alert hook (the log line and metric are always there)
        self._last_contact: dict[str, float] = {}  # monotonic time of the last 2xx
        self._last_probe: dict[str, float] = {}
        self._endpoint_failed: set[str] = set()  # work items whose last POST failed

    @property
    def policy(self) -> EndpointPolicy:
        return self.sender.policy

    def now_instant(self) -> str:
        return _instant(self.clock())

    # --- life cycle ------------------------------------------------------------------
    async def create(self, resource: object, owner: str) -> SubscriptionRecord:
        """Validate (SubscriptionInvalid), persist as requested, handshake, persist result."""
        record, _ = from_fhir(
            resource,
            owner=owner,
            new_id=str(uuid.uuid4()),
            now=self.clock(),
            policy=self.policy,
            min_heartbeat_s=self.settings.min_heartbeat_s,
        )
        await self.store.save(record)
        return await self.handshake(record)

    async def handshake(self, record: SubscriptionRecord) -> SubscriptionRecord:
        bundle = notification(
            record,
            kind="handshake",
            base_url=self.base_url,
            timestamp=self.now_instant(),
            events_since=record.events,
        )
        result = await self.sender.post(record, bundle, timeout_s=self.settings.handshake_timeout_s)
        NOTIFICATIONS.labels("handshake", "ok" if result.ok else "failed").inc()
        if result.ok:
            self._last_contact[record.id] = time.monotonic()
            new = await self.store.update(
                record.id, lambda r: transition(r, Status.ACTIVE, now=self.now_instant())
            )
        else:
            new = await self.set_error(record.id, f"handshake failed: {result.detail}", "handshake")
        return new or record

    async def remove(self, sub_id: str) -> bool:
        self._last_contact.pop(sub_id, None)
        self._last_probe.pop(sub_id, None)
        return await self.store.delete(sub_id)

    async def set_error(self, sub_id: str, reason: str, cause: str) -> SubscriptionRecord | None:
        """Status error + the alert (log, metric, hook): the platform stopped answering."""
        current = self.store.get(sub_id)
        if current is None or current.status in (Status.ERROR, Status.OFF):
            return current
        new = await self.store.update(
            sub_id,
            lambda r: transition(r, Status.ERROR, now=self.now_instant(), error=reason[:500]),
        )
        SUBSCRIPTION_ERRORS.labels(cause).inc()
        log.error("ALERT subscription %s (%s) is now in error: %s", sub_id, current.owner, reason)
        if self.on_error is not None and new is not None:
            self.on_error(new, reason)
        return new

    # --- routing and delivery --------------------------------------------------------
    def _matching(self, facts: EventFacts) -> list[SubscriptionRecord]:
        """Subscriptions an event goes to: active, or in error (its events then get numbers
        and stay fetchable with $events), whose topic and filters match."""
        topic = topic_of(facts.event_type)
        if topic is None:
            return []
        return [
            r
            for r in self.store.all()
            if r.topic == topic.url
            and r.status in (Status.ACTIVE, Status.ERROR)
            and matches(r.filters, facts)
        ]

    def subscribers_for(self, bundle: dict) -> list[Recipient]:
        """The work-item recipients of an event Bundle (none when the patient opposes)."""
        try:
            facts = EventFacts.from_bundle(bundle)
            patient = BundleView(bundle).patient()
        except BundleError:
            return []
        if patient is not None and patient.sharing_opposition is True:
            return []
        return [
            Recipient(RecipientKind.SUBSCRIPTION, r.id, r.endpoint, "platform", r.owner)
            for r in self._matching(facts)
        ]

    def matching(
        self, event_type: str, parties: object, patient_ids: Sequence[str] = ()
    ) -> list[tuple[str, str]]:
        """`processors.routing.rules.Subscriptions`: (subscription id, endpoint) pairs from
        what routing knows of a case (`CaseParties`: patient postcode, hospital FINESS;
        `patient_ids` as "system|value" or bare values). Opposition is routing's call."""
        postcode = str(getattr(parties, "patient_postcode", "") or "")
        finess = str(getattr(parties, "hospital_finess", "") or "")
        ids = frozenset(
            (system, value) for system, _, value in (p.rpartition("|") for p in patient_ids)
        )
        facts = EventFacts(
            event_type=str(event_type),
            patient_ids=ids,
            postcodes=frozenset({postcode.replace(" ", "").upper()} - {""}),
            finess=frozenset({finess} - {""}),
        )
        return [(r.id, r.endpoint) for r in self._matching(facts)]

    async def notify(self, sub_id: str, item_id: str, bundle: dict) -> Outcome:
        """Deliver one event to one subscription; the number is fixed before the POST."""
        record = self.store.get(sub_id)
        if record is None or record.status is Status.OFF:
            return Outcome.skipped(f"subscription {sub_id} no longer exists")
        try:
            facts = EventFacts.from_bundle(bundle)
            patient = BundleView(bundle).patient()
        except BundleError as exc:
            return Outcome.permanent(f"not an event bundle: {exc}")
        if patient is not None and patient.sharing_opposition is True:
            return Outcome.skipped("the patient opposed sharing: no platform notification")
        topic = topic_of(facts.event_type)
        if topic is None or topic.url != record.topic or not matches(record.filters, facts):
            return Outcome.skipped(f"event {facts.event_type} does not match subscription {sub_id}")
        if record.end and to_utc(record.end) <= self.clock():
            return Outcome.skipped(f"subscription {sub_id} ended at {record.end}")
        record, number, _ = await self.store.assign(sub_id, item_id, self.now_instant())
        known = record.number_of(item_id)
        if known is not None and known.delivered:
            return Outcome.sent(f"event {number} already delivered to subscription {sub_id}")
        note = EventNote(number, self._occurred(bundle), bundle)
        self.store.remember(sub_id, note)
        if record.status is not Status.ACTIVE:
            return Outcome.permanent(
                f"subscription {sub_id} is {record.status}: event {number} kept for $events"
            )
        body = notification(
            record,
            kind="event-notification",
            base_url=self.base_url,
            timestamp=note.timestamp,
            events=[note],
            events_since=number,
        )
        result = await self.sender.post(record, body)
        NOTIFICATIONS.labels("event-notification", "ok" if result.ok else "failed").inc()
        if result.ok:
            self._endpoint_failed.discard(item_id)
            self.store.delivered(sub_id, item_id)
            self._last_contact[sub_id] = time.monotonic()
            return Outcome.sent(f"event {number}: {result.detail}")
        self._endpoint_failed.add(item_id)
        detail = f"event {number}: {result.detail}"
        return Outcome.transient(detail) if result.retryable else Outcome.permanent(detail)

    def _occurred(self, bundle: dict) -> str:
        """The event's own time (Bundle.timestamp): the same on every retry and restart,
        so a re-sent notification is byte-identical. Now, when the event has none."""
        try:
            return _instant(to_utc(BundleView(bundle).timestamp))
        except ValueError:
            return self.now_instant()

    def endpoint_failed(self, item_id: str) -> bool:
        """True (once) when the last attempt for this work item failed at the endpoint:
        what makes a final failure the subscription's fault rather than the event's."""
        if item_id in self._endpoint_failed:
            self._endpoint_failed.discard(item_id)
            return True
        return False

    # --- heartbeats and recovery -----------------------------------------------------
    async def heartbeat_once(self) -> int:
        """Send the heartbeats that are due, probe subscriptions in error; returns how many
        notifications were posted. A probe answered 2xx puts the subscription back to
        active (the platform then fetches what it missed with $events)."""
        sent = 0
        now = time.monotonic()
        for record in self.store.all():
            if record.status is Status.ACTIVE and record.heartbeat_s:
                last = self._last_contact.setdefault(record.id, now)
                if now - last < record.heartbeat_s:
                    continue
            elif record.status is Status.ERROR:
                last = self._last_probe.setdefault(record.id, now)
                if now - last < self.settings.recovery_probe_s:
                    continue
                self._last_probe[record.id] = now
            else:
                continue
            bundle = notification(
                record, kind="heartbeat", base_url=self.base_url, timestamp=self.now_instant()
            )
            result = await self.sender.post(record, bundle)
            NOTIFICATIONS.labels("heartbeat", "ok" if result.ok else "failed").inc()
            sent += 1
            if not result.ok:
                log.warning("heartbeat to subscription %s failed: %s", record.id, result.detail)
                continue
            self._last_contact[record.id] = time.monotonic()
            if record.status is Status.ERROR:
                await self.store.update(
                    record.id, lambda r: transition(r, Status.ACTIVE, now=self.now_instant())
                )
                log.info("subscription %s answered again: active", record.id)
        return sent

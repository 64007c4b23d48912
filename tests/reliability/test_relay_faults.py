"""Fault (c): the MSSanté SMTP relay is down, then defers (4xx), then comes back; and it
refuses one recipient for good (550).

The relay is a real aiosmtpd server over STARTTLS with mutual TLS (the embedded
mailbox's server, its handler switched by the test); the bus reaches it exactly as
configured in production: `mssante.host/port`, `mssante.ca_file`, client certificate and
key (`MssanteAdapter.from_settings`). Work items travel through the real broker and the
production delivery consumer.

Timeline: the relay delivers a first mail (a pooled connection is kept), then stops
(connection refused, the pooled connection dies) → answers 451 to every RCPT → stores
the mail but answers 452 after DATA (a lost reply: the bus must resend, the receiver
deduplicates on Message-ID) → passes. Expected (ARCHITECTURE "Delivery guarantees"):
every item delivered exactly once (one .eml per recipient and event, one Message-ID),
retries visible (attempt metric, attempt count in delivery.sent), no delivery.failed
since recovery happens within the retry budget; the recipient refused with 550 gets a
delivery.failed with the reason at once (not retried) and a dead letter, and the
coordinator alert it causes is routed (pure routing rule) and delivered.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from adapters.delivery import DeliveryWorker
from adapters.mssante.mail import message_id
from adapters.mssante.mailbox import LocalMailbox, MailboxHandler
from adapters.mssante.sender import MssanteAdapter
from adapters.mssante.tls import LocalPki, ensure_local_pki
from bus.producer import EventProducer
from bus.settings import MssanteSettings, Settings
from processors.facts import read_event
from processors.routing.rules import route
from schemas.cases import case_id
from schemas.envelope import Envelope
from schemas.topics import DEAD_LETTER, DELIVERY_MSSANTE, DELIVERY_STATUS
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem
from tests.reliability import harness as h
from tests.reliability import invariant as inv
from tests.reliability.outbound import (
    POLICY,
    attempts,
    consuming,
    new_topic,
    publish_items,
    statuses,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REFUSED = "parti.sans.adresse@ancien-cabinet.mssante.fr"
#: the budget: attempts, not seconds (backoff has full jitter, so time is random)


class SwitchedRelay(MailboxHandler):
    """The embedded mailbox's handler (TLS and client-certificate checks, durable
    Message-ID-deduplicated storage) with a mode the test switches:
    pass | rcpt-451 (every RCPT deferred) | data-452 (stored, then 452: a lost reply).
    REFUSED is refused with 550 in every mode but rcpt-451."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.mode = "pass"
        self.counts: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, options: list
    ) -> str:
        if self.mode == "rcpt-451":
            self._count("451")
            return "451 4.7.1 Greylisted, try again later"
        if address.lower() == REFUSED:
            self._count("550")
            return "550 5.1.1 Mailbox unknown"
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if self.mode == "data-452" and answer.startswith("250"):
            self._count("452")
            return "452 4.3.1 Insufficient system storage"
        self._count("250")
        return answer


def relay_settings(tmp: Path, port: int, pki: LocalPki) -> Settings:
    """A relay configured as an operator would: host/port, CA, client cert and key."""
    return Settings(
        data_dir=tmp / "bus",
        mssante=MssanteSettings(
            host="localhost",
            port=port,
            ca_file=pki.ca_cert,
            client_cert=pki.client_cert,
            client_key=pki.client_key,
            timeout_s=5,
        ),
    )


def items(n: int, address: str) -> list[WorkItem]:
    """Mails about n new referrals: n cases, which the delivery consumer may run in
    parallel (one case's items stay in order)."""
    out = []
    for _ in range(n):
        event_id, bundle = h.referral_bundles(uuid.uuid4().hex[:8])[0]
        env = Envelope(
            id=event_id,
            type="referral.requested",
            source="urn:carebus:producer:sdk",
            subject=case_id("referral.requested", bundle),
            data=orjson.dumps(bundle),
        )
        who = Recipient(RecipientKind.PRACTITIONER, "10012345673", address, "performer")
        out.append(WorkItem(env, Channel.MSSANTE, who))
    return out


async def test_relay_down_then_deferring_then_back_and_one_recipient_refused(
    catalog_applied: str, settings: Settings, tmp_path: Path
) -> None:
    kafka = settings.kafka
    pki = ensure_local_pki(tmp_path / "relay-pki")
    box = tmp_path / "relay"  # what the relay's recipients hold
    handler = SwitchedRelay(box)
    relay = LocalMailbox(box, pki=pki, handler=handler)
    await relay.start()
    cfg = relay_settings(tmp_path, relay.port, pki)
    topic = await new_topic(catalog_applied, kafka, DELIVERY_MSSANTE.name)
    since = await inv.end_offsets(catalog_applied, kafka, [DELIVERY_STATUS.name, DEAD_LETTER.name])
    adapter = MssanteAdapter.from_settings(cfg)
    retries0 = attempts("mssante", "retry")
    mails = lambda: len(inv.read_mailbox(box)[0])  # noqa: E731
    try:
        async with EventProducer(catalog_applied, kafka, timeout_s=10) as producer:
            worker = DeliveryWorker(adapter, producer, retry=POLICY)
            async with consuming(worker, catalog_applied, kafka, topic):
                sent = await publish_items(producer, topic, items(1, h.GP_MAIL))
                await wait_until(lambda: mails() == 1, 60, "first mail before the fault")
                # the relay files the mail before the client has read its 250 and put the
                # connection back in the pool: wait for that, do not race it
                await wait_until(
                    lambda: bool(adapter._idle), 10, "a pooled connection should be kept open"
                )

                await relay.stop()  # down: connection refused (and the pooled one is dead)
                batch = [*items(3, h.GP_MAIL), *items(1, REFUSED), *items(3, h.RT_MAIL)]
                sent += await publish_items(producer, topic, batch)
                await wait_until(
                    lambda: attempts("mssante", "retry") >= retries0 + 2, 30, "refused retries"
                )
                handler.mode = "rcpt-451"
                await relay.start()  # same port
                await wait_until(lambda: handler.counts.get("451", 0) >= 2, 30, "451 at RCPT")
                handler.mode = "data-452"
                await wait_until(lambda: handler.counts.get("452", 0) >= 2, 30, "452 at DATA")
                handler.mode = "pass"
                await wait_until(lambda: mails() >= 7, 60, "every deliverable item delivered")

                refused = next(i for i in sent if i.recipient.address == REFUSED)
                ids = {i.event.id for i in sent}
                seen: dict = {}
                for _ in range(100):
                    seen = await statuses(catalog_applied, kafka, ids, since)
                    if len(seen) == len(sent):
                        break
                    await asyncio.sleep(0.2)
                # the alert the processors would route for the delivery.failed: routed by
                # the pure rule with the case's parties, delivered through the same relay
                failed_recs = await inv.read_topics(
                    catalog_applied, kafka, since=since, topics=[DELIVERY_STATUS.name]
                )
                failed_env = next(
                    env
                    for r in failed_recs[DELIVERY_STATUS.name]
                    if (env := Envelope.decode(r.key, r.value, r.headers)).type == "delivery.failed"
                    and inv.failure_of(env).about_event == refused.event.id
                )
                decision = route(failed_env, read_event(refused.event).parties, h.lookup(cfg))
                assert [(w.recipient.address, w.recipient.role) for w in decision.items] == [
                    (h.COORDINATOR, "coordinator")
                ], decision
                await publish_items(producer, topic, decision.items)
                await wait_until(lambda: mails() >= 8, 30, "coordinator alert delivered")
        # a redelivery of everything (a consumer restart replaying its uncommitted tail)
        for item in [*sent, *decision.items]:
            if item is not refused:
                again = await adapter.deliver(item, orjson.loads(item.event.data))
                assert again.status == "sent" and again.detail.endswith("stored 0/1"), again
    finally:
        await adapter.aclose()
        await relay.stop()

    # statuses: every item sent except the refused one; retries visible
    assert {s for s, _, _ in seen.values()} <= {"delivery.sent", "delivery.failed"}, seen
    assert len(seen) == len(sent), seen
    kind, _, why = seen[refused.event.id]
    assert kind == "delivery.failed" and "550" in why, seen[refused.event.id]
    assert handler.counts.get("550", 0) == 1  # permanent: not retried after the 550
    others = {k: v for k, v in seen.items() if k != refused.event.id}
    assert all(v[0] == "delivery.sent" for v in others.values()), others
    # retries visible: each refused connection or 4xx is one more attempt in a status event
    retried = attempts("mssante", "retry") - retries0
    assert sum(t - 1 for _, t, _ in seen.values()) == retried >= 6, (retried, seen)
    assert handler.counts["451"] >= 2 and handler.counts["452"] >= 2, handler.counts

    # the invariant: exactly one effect per owed one, or a delivery.failed explaining it
    ids = {i.event.id for i in sent} | {i.id for i in sent}  # a dead letter is the work item
    bus = await inv.read_bus(catalog_applied, kafka, ids, since=since)
    assert any(
        d.reason.startswith("delivery failed") and "550" in d.reason for d in bus.dead_letters
    )
    effects, partial = inv.read_mailbox(box)
    expected = [
        inv.Expect(inv.MSSANTE, i.recipient.address, i.event.id, i.event.id, i.recipient.id)
        for i in sent
    ]
    observed = inv.Observed(
        effects=effects,
        failures=bus.failures,
        dead_letters=bus.dead_letters,
        partial_files=partial,
    )
    report = inv.check([], expected, observed, coordinator=h.COORDINATOR)
    assert report.ok, report.summary()
    assert report.delivered == len(sent) and report.failed == 1, report.summary()
    assert not report.failed_but_delivered, report.summary()
    # one mail per Message-ID, derived from the work item: what the receiver dedups on
    delivered = [i for i in [*sent, *decision.items] if i is not refused]
    assert sorted(e.dedup for e in effects) == sorted(message_id(i.id) for i in delivered)

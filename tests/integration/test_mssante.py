"""MSSanté mail port against real servers: aiosmtpd over mutual TLS, dovecot over IMAPS,
the real Kafka broker. Every check is made from the receiver's side: what the mailbox
stored, what the IMAP folder still holds, what the broker carries."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiosmtpd.smtp import SMTP, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from pydantic import SecretStr

from adapters.delivery import DeliveryWorker, RetryPolicy
from adapters.mssante.mail import message_id
from adapters.mssante.mailbox import LocalMailbox, MailboxHandler, list_messages, message_files
from adapters.mssante.receipts import ReceiptPoller
from adapters.mssante.sender import MssanteAdapter, SmtpTarget
from adapters.mssante.sent_index import SentIndex, SentRef
from adapters.mssante.tls import LocalPki, client_context, ensure_local_pki
from bus.producer import EventProducer
from bus.settings import Settings
from schemas.builders.common import EXT_ATTEMPT
from schemas.cases import case_id
from schemas.envelope import Envelope, header
from schemas.samples import sample_bundle
from schemas.topics import DEAD_LETTER, DELIVERY_MSSANTE, DELIVERY_STATUS
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem
from tests.integration.dovecot import DovecotServer, dovecot_server_fixture  # noqa: F401
from tests.mssante_reports import dsn, mdn

SENDER = "carebus@carebus.mssante.fr"
CARDIO = "anais.gerard-moreau@cardio-vichy.mssante.fr"
INS = "258030319004510"
FAST = RetryPolicy(max_attempts=4, base_s=0.01, max_s=0.05)


def work_item(address: str = CARDIO) -> tuple[WorkItem, dict]:
    event_id = str(uuid.uuid4())
    bundle = sample_bundle("referral.requested", event_id=event_id)
    env = Envelope(
        id=event_id,
        type="referral.requested",
        source="urn:carebus:producer:sdk",
        subject=case_id("referral.requested", bundle),
        data=orjson.dumps(bundle),
    )
    who = Recipient(RecipientKind.PRACTITIONER, "10012345673", address, "performer", "Dr Gérard")
    return WorkItem(env, Channel.MSSANTE, who, due="2025-03-17T11:30:00+01:00"), bundle


def adapter_for(
    port: int, pki: LocalPki, tmp: Path, *, cert: LocalPki | None = None, ca: Path | None = None,
    implicit: bool = False, reuse: bool = True,
) -> MssanteAdapter:  # fmt: skip
    mine = cert or pki
    ctx = client_context(ca or pki.ca_cert, mine.client_cert, mine.client_key)
    target = SmtpTarget("localhost", port, ctx, implicit_tls=implicit, timeout_s=5)
    return MssanteAdapter(target, sender=SENDER, reuse=reuse, index=SentIndex(tmp))


class CountingHandler(MailboxHandler):
    """The embedded mailbox's handler, answering `reply` to the first `fail_first` DATA."""

    def __init__(self, data_dir: Path, *, fail_first: int = 0, reply: str = "") -> None:
        super().__init__(data_dir)
        self.fail_first, self.reply, self.attempts = fail_first, reply, 0
        self.peers: set[object] = set()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        self.attempts += 1
        self.peers.add(session.peer)
        if self.attempts <= self.fail_first:
            return self.reply
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return ensure_local_pki(tmp_path_factory.mktemp("mss-pki"))


@pytest.fixture
async def producer(catalog_applied: str, settings: Settings) -> AsyncIterator[EventProducer]:
    async with EventProducer(catalog_applied, settings.kafka) as p:
        yield p


async def records(bootstrap: str, topic: str, ids: set[str], timeout: float = 20) -> dict:
    """Records of `topic` whose ce_id is in `ids` (first seen per id), read from the start."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    found: dict = {}
    try:
        end = asyncio.get_running_loop().time() + timeout
        while set(found) != ids and asyncio.get_running_loop().time() < end:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                for rec in batch:
                    ce_id = (header(rec.headers, "ce_id") or b"").decode()
                    if ce_id in ids:
                        found.setdefault(ce_id, rec)
    finally:
        await consumer.stop()
    return found


def status_id(item: WorkItem, etype: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{item.id}-{etype}"))


class TestMailPort:
    async def test_delivery_arrives_once_with_headers_and_xdm(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        item, bundle = work_item()
        async with LocalMailbox(tmp_path, pki=pki) as box:
            adapter = adapter_for(box.port, pki, tmp_path)
            out = await adapter.deliver(item, bundle)
            await adapter.aclose()
        assert out.status == "sent" and out.detail.startswith("250")
        (msg,) = list_messages(tmp_path, CARDIO)
        assert msg["Message-ID"] == message_id(item.id)
        assert msg["X-CareBus-Item"] == item.id and msg["X-CareBus-Event"] == item.event.id
        assert msg["Disposition-Notification-To"] == SENDER
        assert msg["X-MSS-INS"] in ("O", "N") and msg["X-CareBus-Case"] == item.event.subject
        assert "ESMTPS (TLSv1." in msg["Received"]
        xdm = next(p for p in msg.iter_attachments() if p.get_filename() == "IHE_XDM.ZIP")
        archive = zipfile.ZipFile(io.BytesIO(xdm.get_content()))
        assert {"README.TXT", "INDEX.HTM", "IHE_XDM/SUBSET01/METADATA.XML"} <= set(
            archive.namelist()
        )
        assert INS in archive.read("IHE_XDM/SUBSET01/METADATA.XML").decode()
        assert SentIndex(tmp_path).lookup(item.id) == SentRef.of(item)

    async def test_plaintext_mail_from_is_refused_with_530(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        async with LocalMailbox(tmp_path, pki=pki) as box:
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1", port=box.port, start_tls=False, timeout=5
            )
            await client.connect()
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.sendmail(SENDER, [CARDIO], b"Subject: clear\r\n\r\ntext\r\n")
            client.close()
        assert refused.value.code == 530
        assert message_files(tmp_path, CARDIO) == []

    async def test_adapter_never_falls_back_to_plaintext(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        seen: list[bytes] = []

        class Plain:
            async def handle_MAIL(self, server, session, envelope, address, options) -> str:  # type: ignore[no-untyped-def]
                seen.append(address.encode())
                envelope.mail_from = address
                return "250 OK"

            async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
                seen.append(envelope.content)
                return "250 OK"

        loop = asyncio.get_running_loop()
        handler = Plain()  # an SMTP server that offers no STARTTLS at all
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="localhost", loop=loop), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        try:
            item, bundle = work_item()
            out = await adapter_for(port, pki, tmp_path).deliver(item, bundle)
            implicit = await adapter_for(port, pki, tmp_path, implicit=True).deliver(item, bundle)
        finally:
            server.close()
        assert (out.status, out.retry) == ("failed", False) and "TLS" in out.detail
        assert implicit.status == "failed"
        assert seen == []  # not even MAIL FROM went out in clear

    async def test_unknown_client_certificate_is_rejected(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        stranger = ensure_local_pki(tmp_path / "stranger")
        item, bundle = work_item()
        async with LocalMailbox(tmp_path, pki=pki) as box:
            out = await adapter_for(box.port, pki, tmp_path, cert=stranger).deliver(item, bundle)
            no_cert = MssanteAdapter(
                SmtpTarget("localhost", box.port, client_context(pki.ca_cert), timeout_s=5),
                sender=SENDER,
            )
            none = await no_cert.deliver(item, bundle)
        # TLS 1.3: the server's alert is lost, the client sees a hang-up after the
        # handshake: retried (a restart looks the same), with a diagnostic naming the cert
        assert out.status == "failed" and "client certificate" in out.detail
        assert (none.status, none.retry) == ("failed", False) and "530" in none.detail
        assert message_files(tmp_path, CARDIO) == []

    async def test_untrusted_server_certificate_is_a_permanent_failure(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        other_ca = ensure_local_pki(tmp_path / "other").ca_cert
        item, bundle = work_item()
        async with LocalMailbox(tmp_path, pki=pki) as box:
            out = await adapter_for(box.port, pki, tmp_path, ca=other_ca).deliver(item, bundle)
        assert (out.status, out.retry) == ("failed", False)
        assert out.detail.startswith("TLS: server certificate not verified")
        assert message_files(tmp_path, CARDIO) == []

    async def test_implicit_tls_and_connection_reuse_survive_a_server_restart(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        handler = CountingHandler(tmp_path)
        box = LocalMailbox(tmp_path, pki=pki, implicit_tls=True, handler=handler)
        await box.start()
        adapter = adapter_for(box.port, pki, tmp_path, implicit=True)
        outs = [await adapter.deliver(*work_item()) for _ in range(3)]
        assert len(handler.peers) == 1  # one TLS session for three mails
        await box.stop()  # the pooled connection dies with the server
        await box.start()
        outs.append(await adapter.deliver(*work_item()))
        await adapter.aclose()
        await box.stop()
        assert [o.status for o in outs] == ["sent"] * 4
        assert len(message_files(tmp_path, CARDIO)) == 4

    async def test_oversized_mail_is_refused_permanently(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        item, bundle = work_item()
        async with LocalMailbox(tmp_path, pki=pki, max_bytes=2_000) as box:
            out = await adapter_for(box.port, pki, tmp_path).deliver(item, bundle)
        assert (out.status, out.retry) == ("failed", False) and "552" in out.detail
        assert message_files(tmp_path, CARDIO) == []

    async def test_recipient_without_address_is_permanent(
        self, pki: LocalPki, tmp_path: Path
    ) -> None:
        item, bundle = work_item(address="")
        out = await adapter_for(1, pki, tmp_path).deliver(item, bundle)
        assert (out.status, out.retry) == ("failed", False) and "no MSSanté address" in out.detail


@pytest.mark.kafka
class TestMailDeliveryWorker:
    async def test_4xx_is_retried_and_delivered_exactly_once(
        self, pki: LocalPki, tmp_path: Path, producer: EventProducer, catalog_applied: str
    ) -> None:
        handler = CountingHandler(tmp_path, fail_first=2, reply="451 4.3.0 Mailbox busy, try later")
        item, _ = work_item()
        async with LocalMailbox(tmp_path, pki=pki, handler=handler) as box:
            worker = DeliveryWorker(adapter_for(box.port, pki, tmp_path), producer, retry=FAST)
            out = await worker.handle(item.envelope())
            await worker.adapter.aclose()  # type: ignore[attr-defined]
        assert out.status == "sent" and handler.attempts == 3
        assert len(message_files(tmp_path, CARDIO)) == 1
        sent_id = status_id(item, "delivery.sent")
        rec = (await records(catalog_applied, DELIVERY_STATUS.name, {sent_id}))[sent_id]
        assert header(rec.headers, "ce_type") == b"delivery.sent"
        assert EXT_ATTEMPT.encode() in rec.value and b'"valuePositiveInt":3' in rec.value

    async def test_5xx_publishes_delivery_failed_and_dead_letters(
        self, pki: LocalPki, tmp_path: Path, producer: EventProducer, catalog_applied: str
    ) -> None:
        handler = CountingHandler(
            tmp_path, fail_first=99, reply="554 5.7.1 Message refused by policy"
        )
        item, _ = work_item()
        await producer.publish(DELIVERY_MSSANTE.name, item.envelope())
        (rec,) = (await records(catalog_applied, DELIVERY_MSSANTE.name, {item.id})).values()
        async with LocalMailbox(tmp_path, pki=pki, handler=handler) as box:
            worker = DeliveryWorker(adapter_for(box.port, pki, tmp_path), producer, retry=FAST)
            out = await worker.handle(Envelope.decode(rec.key, rec.value, rec.headers), rec)
        assert (out.status, out.retry) == ("failed", False) and "554" in out.detail
        assert handler.attempts == 1  # permanent: not retried
        failed_id = status_id(item, "delivery.failed")
        (status,) = (await records(catalog_applied, DELIVERY_STATUS.name, {failed_id})).values()
        assert header(status.headers, "ce_type") == b"delivery.failed"
        assert status.key == item.event.subject.encode()
        (dead,) = (await records(catalog_applied, DEAD_LETTER.name, {item.id})).values()
        assert b"554" in (header(dead.headers, "dlq_reason") or b"")
        assert dead.value == rec.value
        assert message_files(tmp_path, CARDIO) == []

    async def test_redelivery_of_the_same_item_is_stored_once(
        self, pki: LocalPki, tmp_path: Path, producer: EventProducer
    ) -> None:
        item, _ = work_item()
        async with LocalMailbox(tmp_path, pki=pki) as box:
            for reuse in (True, False):  # a redelivery after a restart, on a new connection
                adapter = adapter_for(box.port, pki, tmp_path, reuse=reuse)
                out = await DeliveryWorker(adapter, producer, retry=FAST).handle(item.envelope())
                await adapter.aclose()
                assert out.status == "sent"
        assert out.detail.endswith("stored 0/1")
        (msg,) = list_messages(tmp_path, CARDIO)
        assert msg["Message-ID"] == message_id(item.id)

    async def test_concurrent_worker_keeps_case_order_over_parallel_sessions(
        self,
        pki: LocalPki,
        tmp_path: Path,
        producer: EventProducer,
        catalog_applied: str,
        settings: Settings,
    ) -> None:
        """The worker's consumer with concurrency: several SMTP sessions at once, each
        case's mails stored in offset order, one slow mailbox not holding up the rest."""
        topic = f"t.mail.concurrent.{uuid.uuid4().hex[:8]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=catalog_applied)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        box_of = [f"dr.case{k}@cabinet-par.mssante.fr" for k in range(6)]
        handler = ParallelHandler(tmp_path, slow=box_of[0])
        cases = [f"ADR-PAR-{uuid.uuid4().hex[:6]}-{k}" for k in range(6)]
        items: dict[str, list[WorkItem]] = {}
        for _ in range(3):
            for k, case in enumerate(cases):
                item, _ = work_item(address=box_of[k])
                env = dataclasses.replace(
                    item.event, subject=f"referral/https://carebus.fr/fhir/sid/referral|{case}"
                )
                items.setdefault(case, []).append(WorkItem(env, item.channel, item.recipient))
        await producer.publish_many(
            [(topic, items[c][n].envelope()) for n in range(3) for c in cases]
        )
        async with LocalMailbox(tmp_path, pki=pki, handler=handler) as box:
            adapter = adapter_for(box.port, pki, tmp_path)
            worker = DeliveryWorker(adapter, producer, retry=FAST)
            consumer = worker.consumer(catalog_applied, settings.kafka, topic, concurrency=8)
            await consumer.start()
            try:
                end = asyncio.get_running_loop().time() + 30
                while consumer.processed < 18:
                    assert asyncio.get_running_loop().time() < end, consumer.processed
                    await consumer.poll_once()
            finally:
                await consumer.stop()
                await adapter.aclose()
        assert consumer.dead_lettered == 0
        assert handler.max_active >= 4, handler.max_active  # parallel SMTP transactions
        assert len(handler.peers) >= 4  # ... over distinct pooled connections
        for k, case in enumerate(cases):
            got = [m["Message-ID"] for m in list_messages(tmp_path, box_of[k])]
            assert got == [message_id(i.id) for i in items[case]], case
        slow_done = handler.done[box_of[0]]
        others_done = max(t for a, t in handler.done.items() if a != box_of[0])
        assert others_done < slow_done  # the slow mailbox's case did not hold up the rest


class ParallelHandler(MailboxHandler):
    """The embedded mailbox's handler, counting DATA transactions in progress; one
    mailbox answers slowly."""

    def __init__(self, data_dir: Path, *, slow: str) -> None:
        super().__init__(data_dir)
        self.slow = slow
        self.active = self.max_active = 0
        self.peers: set[object] = set()
        self.done: dict[str, float] = {}

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.peers.add(session.peer)
        try:
            await asyncio.sleep(0.4 if self.slow in envelope.rcpt_tos else 0.05)
            reply = await super().handle_DATA(server, session, envelope)
        finally:
            self.active -= 1
        for rcpt in envelope.rcpt_tos:
            self.done[rcpt] = asyncio.get_running_loop().time()
        return reply


@pytest.mark.kafka
class TestReceiptPoller:
    def poller(
        self,
        imap: DovecotServer,
        producer: EventProducer,
        index: SentIndex,
        cert: LocalPki | None = None,
    ) -> ReceiptPoller:
        mine = cert or imap.pki
        return ReceiptPoller(
            host=imap.host,
            port=imap.port,
            tls_context=client_context(imap.pki.ca_cert, mine.client_cert, mine.client_key),
            username=imap.user,
            password=SecretStr(imap.password),
            producer=producer,
            index=index,
            timeout_s=10,
        )

    async def test_mdn_and_dsn_become_status_events(
        self, dovecot_server: DovecotServer, producer: EventProducer, catalog_applied: str,
        pki: LocalPki, tmp_path: Path,
    ) -> None:  # fmt: skip
        imap, index = dovecot_server, SentIndex(tmp_path)
        read_item, _ = work_item()
        index.record(SentRef.of(read_item))  # what the sender recorded when it sent
        bounced, bundle = work_item("parti@ancien-cabinet.mssante.fr")  # not in the index
        quoted = adapter_for(1, pki, tmp_path / "elsewhere").build(bounced, bundle)
        headers = "\n".join(f"{k}: {v}" for k, v in quoted.items())
        tag = uuid.uuid4().hex[:8]
        receipt = mdn(
            message_id=f"<mdn-{tag}@cardio>",
            original_message_id=message_id(read_item.id),
            final_recipient=CARDIO,
        )
        imap.deliver(receipt)
        imap.deliver(
            dsn(
                message_id=f"<dsn-{tag}@relay>",
                original_headers=headers,
                final_recipient=bounced.recipient.address,
            )
        )
        imap.deliver(b"From: dr@x.fr\r\nSubject: RE: avis\r\nMessage-ID: <r@x>\r\n\r\nMerci.\r\n")
        before = len(imap.stored())

        first = await self.poller(imap, producer, index).poll_once()
        assert sorted(e.type for e in first.published) == ["delivery.failed", "delivery.read"]
        assert first.skipped == 1
        assert len(imap.stored()) == before - 2  # the two receipts are expunged, the reply stays
        by_type = {e.type: e for e in first.published}
        got = await records(catalog_applied, DELIVERY_STATUS.name, {e.id for e in first.published})
        for env in first.published:
            back = Envelope.decode(got[env.id].key, got[env.id].value, got[env.id].headers)
            assert back.subject == env.subject
        assert by_type["delivery.read"].causation_id == read_item.event.id
        assert by_type["delivery.failed"].causation_id == bounced.event.id
        assert b"5.1.1" in by_type["delivery.failed"].data
        assert by_type["delivery.failed"].subject == bounced.event.subject

        again = await self.poller(imap, producer, index).poll_once()
        assert (again.published, again.skipped) == ([], 0)  # nothing re-read
        imap.deliver(receipt)  # the same receipt again: the same event, deduped downstream
        dup = await self.poller(imap, producer, index).poll_once()
        assert [e.id for e in dup.published] == [by_type["delivery.read"].id]

    async def test_unknown_client_certificate_cannot_read_the_mailbox(
        self, dovecot_server: DovecotServer, producer: EventProducer, tmp_path: Path
    ) -> None:
        imap = dovecot_server
        stranger = ensure_local_pki(tmp_path / "stranger")
        imap.deliver(mdn(message_id="<m-x@c>", original_message_id="<a@b>", final_recipient=CARDIO))
        before = len(imap.stored())
        with pytest.raises(Exception):  # noqa: B017 - refused at TLS or at LOGIN, either is right
            await self.poller(imap, producer, SentIndex(tmp_path), cert=stranger).poll_once()
        assert len(imap.stored()) == before

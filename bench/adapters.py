"""Outbound adapter benchmarks (issue 5): what each delivery channel sustains on loopback.

Measured through the adapters' own `deliver(item, bundle)`, the call `DeliveryWorker`
makes, so a figure includes everything the bus does per delivery (mail with its XDM
archive, ITI-65 transaction, notification Bundle and HMAC) but not the Kafka consumer
around it (that is the broker section's business):

- MSSanté mails/s over STARTTLS with a client certificate (mutual TLS) to the embedded
  `LocalMailbox`, with connection reuse and with one connection per mail (the TLS
  handshake is the cost reuse exists to avoid), sequentially and with a few in flight;
  with a broker, also the MSSanté delivery worker end to end (its Kafka consumer, the
  mail, the status event, the commit), one item at a time and with `WIDE` in flight;
- ITI-65 documents/s to the embedded document store: new documents, then the same work
  items again (conditional-create hits: what a redelivery costs);
- e-parcours notifications/s to a local webhook receiver through an active
  subscription (full-resource content, signed). With a broker, also with the event
  numbering persisted to a compacted topic (acks=all) before each POST, as production
  does; without one, the numbering stays in memory.

Why the receivers run in a child process (`python -m bench.adapters serve DIR`): the
mailbox, the store and the webhook are servers the bus talks to, not part of the bus.
Sharing the bus's event loop would charge their TLS, fsyncs and SQLite to the adapter and
serialise client and server on one core; a separate process gives each its own, as in
production. Every run is checked from the receiver's side (stored mails, documents in
the database, POSTs received): a bench that counted failures as throughput would lie.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from adapters.delivery import DeliveryWorker, Outcome
from adapters.dmp.client import DmpAdapter
from adapters.dmp.store_db import DocumentDB
from adapters.eparcours.deliver import EparcoursAdapter
from adapters.eparcours.guard import EndpointPolicy
from adapters.eparcours.registry import Status
from adapters.eparcours.resource import EXT_CONTENT
from adapters.eparcours.sender import RestHookSender
from adapters.eparcours.service import SubscriptionService
from adapters.eparcours.store import SubscriptionStore
from adapters.eparcours.topics import BY_ID
from adapters.mssante.mailbox import message_files
from adapters.mssante.sender import MssanteAdapter, SmtpTarget
from adapters.mssante.sent_index import SentIndex
from adapters.mssante.tls import LocalPki, client_context, ensure_local_pki
from bench.stats import Figure, micro, summarise
from bus.producer import EventProducer
from bus.settings import DmpSettings, EparcoursSettings, KafkaSettings
from schemas.builders import build_discharge_completed
from schemas.cases import case_id
from schemas.envelope import Envelope
from schemas.samples import sample_bundle, stay_info
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

MAILS = 200  # per run and mode
DOCUMENTS = 200
NOTIFICATIONS = 500
#: with numbering on Kafka each notification waits for one acks=all write: fewer, so
#: the section stays near its time budget
DURABLE_NOTIFICATIONS = 150
WORKER_MAILS = 240  # per run and mode of the delivery-worker figure (80 cases x 3)
IN_FLIGHT = 4  # the "small concurrency": a worker with a few deliveries outstanding
WIDE = 8  # the delivery workers' default concurrency (mssante/dmp.concurrency)
SENDER = "carebus@carebus.mssante.fr"
#: several mailboxes, as routing fans one event out to several professionals (the
#: mailbox serialises writes per address, one address would measure that lock)
MAILBOXES = tuple(f"dr.bench-{i}@cabinet-bench.mssante.fr" for i in range(8))
STORE_FILE = Path("dmp") / "store.sqlite3"
INS = "258030319004510"

Job = tuple[WorkItem, dict]
Deliver = Callable[[WorkItem, dict], Awaitable[Outcome]]


# --- the receivers (child process) ------------------------------------------------------
async def serve_receivers(data_dir: Path) -> None:
    """Run mailbox, document store and webhook until stdin closes; print the ports as one
    JSON line at start and the webhook's POST count as another at the end."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from adapters.dmp.store import create_store_app
    from adapters.mssante.mailbox import LocalMailbox
    from bus.asgi import serve

    posts = 0

    async def hook(request: Request) -> Response:
        nonlocal posts
        await request.body()
        posts += 1
        return Response(status_code=200)

    webhook = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    store = create_store_app(data_dir / STORE_FILE)  # creates its directory
    mailbox = LocalMailbox(data_dir, pki=ensure_local_pki(data_dir))
    try:
        async with (
            mailbox,
            serve(store, "127.0.0.1", 0) as store_port,
            serve(webhook, "127.0.0.1", 0) as hook_port,
        ):
            ports = {"smtp": mailbox.port, "store": store_port, "hook": hook_port}
            print(json.dumps(ports), flush=True)
            await asyncio.to_thread(sys.stdin.read)  # the parent closes stdin to stop us
            print(json.dumps({"hook_posts": posts}), flush=True)
    finally:
        store.state.db.close()


@dataclass
class Receivers:
    smtp: int
    store: int
    hook: int
    final: dict  # filled when the child has stopped


@contextlib.asynccontextmanager
async def receivers(data_dir: Path) -> AsyncIterator[Receivers]:
    """The child process serving the three receivers, stopped (stdin closed) on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.adapters",
        "serve",
        str(data_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("adapter bench receivers did not start (see stderr)")
        ports = json.loads(line)
        rx = Receivers(ports["smtp"], ports["store"], ports["hook"], {})
        yield rx
        proc.stdin.close()
        tail = await asyncio.wait_for(proc.stdout.read(), 30)
        for raw in tail.decode().splitlines():
            rx.final.update(json.loads(raw))
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, BrokenPipeError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# --- work items ---------------------------------------------------------------------
def _envelope(event_type: str, bundle: dict, event_id: str) -> Envelope:
    return Envelope(
        id=event_id,
        type=event_type,
        source="urn:carebus:bench",
        subject=case_id(event_type, bundle),
        data=orjson.dumps(bundle),
    )


def mail_jobs(n: int) -> list[Job]:
    """Referral requests (letter attached, XDM archive built) to several practitioners;
    fresh event ids, so every Message-ID is new and the mailbox stores every mail."""
    jobs: list[Job] = []
    for i in range(n):
        event_id = str(uuid.uuid4())
        bundle = sample_bundle("referral.requested", event_id=event_id)
        address = MAILBOXES[i % len(MAILBOXES)]
        who = Recipient(RecipientKind.PRACTITIONER, f"1001234{i:04d}", address, "performer")
        env = _envelope("referral.requested", bundle, event_id)
        jobs.append((WorkItem(env, Channel.MSSANTE, who, due="2025-03-17T11:30:00+01:00"), bundle))
    return jobs


def record_jobs(n: int) -> list[Job]:
    """Discharges each carrying its own letter (its own document id, hence its own
    masterIdentifier): every work item files a new document."""
    info = stay_info()
    assert info.letter is not None
    jobs: list[Job] = []
    for _ in range(n):
        event_id = str(uuid.uuid4())
        letter = replace(info.letter, id=str(uuid.uuid4()))
        bundle = build_discharge_completed(replace(info, letter=letter), event_id=event_id)
        env = _envelope("discharge.completed", bundle, event_id)
        jobs.append((WorkItem(env, Channel.DMP, Recipient(RecipientKind.RECORD, INS)), bundle))
    return jobs


def notification_jobs(n: int, sub_id: str) -> list[Job]:
    """Stay events (the subscription's topic) for one subscription."""
    kinds = ("discharge.planned", "discharge.completed", "admission.notified")
    jobs: list[Job] = []
    for i in range(n):
        event_id = str(uuid.uuid4())
        kind = kinds[i % len(kinds)]
        bundle = sample_bundle(kind, event_id=event_id)
        who = Recipient(RecipientKind.SUBSCRIPTION, sub_id)
        jobs.append((WorkItem(_envelope(kind, bundle, event_id), Channel.EPARCOURS, who), bundle))
    return jobs


# --- measurement --------------------------------------------------------------------
async def drive(deliver: Deliver, jobs: Sequence[Job], in_flight: int) -> tuple[float, list]:
    """(seconds, outcomes) of delivering every job with at most `in_flight` outstanding:
    `in_flight` workers draining one iterator, like a consumer with a bounded window."""
    pending = iter(jobs)
    outcomes: list[Outcome] = []

    async def worker() -> None:
        for item, bundle in pending:
            outcomes.append(await deliver(item, bundle))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0, outcomes


def expect(outcomes: list[Outcome], what: str, detail_prefix: str = "") -> None:
    """Refuse to report a rate made of failures."""
    bad = [o for o in outcomes if o.status != "sent" or not o.detail.startswith(detail_prefix)]
    if bad:
        raise RuntimeError(f"{what}: {len(bad)}/{len(outcomes)} not as expected, e.g. {bad[0]}")


def _modes() -> tuple[tuple[str, int], ...]:
    return (("sequential", 1), (f"{IN_FLIGHT} in flight", IN_FLIGHT), (f"{WIDE} in flight", WIDE))


async def mail_figures(rx: Receivers, data_dir: Path, pki: LocalPki, runs: int) -> list[Figure]:
    ctx = client_context(pki.ca_cert, pki.client_cert, pki.client_key)
    # the server certificate names 127.0.0.1: hostname checking stays on, no DNS detour
    target = SmtpTarget("127.0.0.1", rx.smtp, ctx, timeout_s=15)
    index = SentIndex(data_dir)
    rates: dict[str, list[float]] = {}
    sent = 0
    for _ in range(runs):
        for reuse, conn in ((True, "reused connections"), (False, "new connection per mail")):
            for mode, in_flight in _modes():
                jobs = mail_jobs(MAILS)
                adapter = MssanteAdapter(
                    target, sender=SENDER, reuse=reuse, pool_size=in_flight, index=index
                )
                try:
                    seconds, outcomes = await drive(adapter.deliver, jobs, in_flight)
                finally:
                    await adapter.aclose()
                expect(outcomes, f"mail ({conn}, {mode})", "250")
                sent += len(jobs)
                rates.setdefault(f"MSSanté mail STARTTLS+mTLS, {conn}, {mode}", []).append(
                    len(jobs) / seconds
                )
    stored = sum(len(message_files(data_dir, a)) for a in MAILBOXES)
    if stored != sent:
        raise RuntimeError(f"mailbox holds {stored} mails, {sent} were sent")
    figures = [summarise(name, "mails/s", v) for name, v in rates.items()]
    # what a mail costs before the wire, to read the rates above: on loopback the TLS
    # handshake saved by reuse competes with this CPU, not with network latency
    builder = MssanteAdapter(target, sender=SENDER)
    item, bundle = mail_jobs(1)[0]
    cpu = micro(lambda: builder.build(item, bundle).as_bytes(), runs=runs, budget_s=0.3)
    figures.append(
        summarise(
            "MSSanté mail build + flatten (MIME, IHE_XDM.ZIP), CPU",
            "ms/mail",
            [v / 1000 for v in cpu],
        )
    )
    return figures


class _Sandboxed(EventProducer):
    """Everything the worker writes (status events, dead letters) goes to the bench's
    throwaway topic, never to the real care.delivery.status or dead-letter topics."""

    def __init__(self, bootstrap: str, kafka: KafkaSettings, sink: str) -> None:
        super().__init__(bootstrap, kafka)
        self.sink = sink

    async def send_raw(self, topic: str, key, value, headers):  # type: ignore[no-untyped-def]
        return await super().send_raw(self.sink, key, value, headers)


class _Timed:
    """The adapter, plus when the first delivery started and the last one ended."""

    def __init__(self, adapter: MssanteAdapter) -> None:
        self.adapter, self.name = adapter, adapter.name
        self.first = self.last = 0.0

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome:
        self.first = self.first or time.perf_counter()
        outcome = await self.adapter.deliver(item, bundle)
        self.last = time.perf_counter()
        return outcome


@contextlib.asynccontextmanager
async def throwaway_topics(
    bootstrap: str, kafka: KafkaSettings, count: int, partitions: int = 6
) -> AsyncIterator[list[str]]:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    names = [f"bench.delivery.{uuid.uuid4().hex[:8]}" for _ in range(count)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    await admin.start()
    try:
        rf = kafka.replication_factor
        await admin.create_topics([NewTopic(n, partitions, rf) for n in names])
        try:
            yield names
        finally:
            await admin.delete_topics(names)
    finally:
        await admin.close()


async def worker_figures(
    rx: Receivers, data_dir: Path, pki: LocalPki, bootstrap: str, kafka: KafkaSettings, runs: int
) -> list[Figure]:
    """The MSSanté delivery worker end to end: work items on a 6-partition topic (3 mails
    per case, as an A01 owes), drained by `DeliveryWorker`'s consumer (dedup, status
    event acks=all per mail, commit after each batch) with concurrency 1 and `WIDE`."""
    ctx = client_context(pki.ca_cert, pki.client_cert, pki.client_key)
    target = SmtpTarget("127.0.0.1", rx.smtp, ctx, timeout_s=15)
    index = SentIndex(data_dir)
    modes = (("one at a time", 1), (f"concurrency {WIDE}", WIDE))
    rates: dict[str, list[float]] = {}
    before = sum(len(message_files(data_dir, a)) for a in MAILBOXES)
    sent = 0
    async with throwaway_topics(bootstrap, kafka, 1 + runs * len(modes)) as topics:
        sink, todo = topics[0], iter(topics[1:])
        async with _Sandboxed(bootstrap, kafka, sink) as producer:
            for _ in range(runs):
                for mode, concurrency in modes:
                    topic, jobs = next(todo), mail_jobs(WORKER_MAILS)
                    envs = []
                    for i, (item, _) in enumerate(jobs):
                        case = f"referral/https://carebus.fr/fhir/sid/referral|ADR-BENCH-{i // 3}"
                        env = replace(item.event, subject=case)
                        envs.append(WorkItem(env, item.channel, item.recipient, item.due))
                    await producer.publish_many([(topic, w.envelope()) for w in envs])
                    timed = _Timed(MssanteAdapter(target, sender=SENDER, index=index))
                    consumer = DeliveryWorker(timed, producer).consumer(  # type: ignore[arg-type]
                        bootstrap,
                        kafka,
                        topic,
                        concurrency=concurrency,
                        group=f"bench-{topic}",
                    )
                    await consumer.start()
                    try:
                        end = time.monotonic() + 600
                        while consumer.processed < len(envs) and time.monotonic() < end:
                            await consumer.poll_once()
                    finally:
                        await consumer.stop()
                        await timed.adapter.aclose()
                    if consumer.processed != len(envs) or consumer.dead_lettered:
                        raise RuntimeError(f"worker ({mode}): {consumer.processed} processed")
                    sent += len(envs)
                    name = f"MSSanté delivery worker (consumer + mail + status), {mode}"
                    rates.setdefault(name, []).append(len(envs) / (timed.last - timed.first))
    stored = sum(len(message_files(data_dir, a)) for a in MAILBOXES) - before
    if stored != sent:
        raise RuntimeError(f"mailbox got {stored} new mails from the worker, {sent} were sent")
    return [summarise(name, "mails/s", v) for name, v in rates.items()]


async def record_figures(rx: Receivers, runs: int) -> tuple[list[Figure], int]:
    """ITI-65 rates, and how many documents the store must now hold."""
    adapter = DmpAdapter(f"http://127.0.0.1:{rx.store}", settings=DmpSettings(timeout_s=15))
    rates: dict[str, list[float]] = {}
    created = 0
    try:
        for _ in range(runs):
            for mode, in_flight in _modes():
                jobs = record_jobs(DOCUMENTS)
                seconds, outcomes = await drive(adapter.deliver, jobs, in_flight)
                expect(outcomes, f"ITI-65 new documents ({mode})", "filed")
                created += len(jobs)
                rates.setdefault(f"DMP ITI-65 new documents, {mode}", []).append(
                    len(jobs) / seconds
                )
                if in_flight == 1:  # redelivery of the same work items: nothing new
                    seconds, outcomes = await drive(adapter.deliver, jobs, 1)
                    expect(outcomes, "ITI-65 conditional-create hits", "already filed")
                    rates.setdefault(
                        "DMP ITI-65 same items again (conditional-create hits), sequential", []
                    ).append(len(jobs) / seconds)
    finally:
        await adapter.aclose()
    return [summarise(name, "docs/s", v) for name, v in rates.items()], created


def _subscription(endpoint: str) -> dict:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "bench: stays of the territory",
        "criteria": BY_ID["stay"].url,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": "full-resource"}]},
        },
    }


async def notification_figures(
    rx: Receivers, runs: int, producer: EventProducer | None, topic: str, n: int
) -> tuple[list[Figure], int]:
    """Webhook rates through one active subscription, and how many POSTs that made
    (handshake included). `producer`: persist numbering to `topic` like production."""
    ep = EparcoursSettings(
        allowed_hosts=["127.0.0.1"],
        allow_http=True,
        allowed_networks=["127.0.0.0/8"],
        timeout_s=15,
    )
    store = SubscriptionStore(producer, topic=topic, numbers_kept=ep.numbers_kept)
    sender = RestHookSender(EndpointPolicy.from_settings(ep), timeout_s=ep.timeout_s)
    service = SubscriptionService(store, sender, settings=ep, base_url="http://127.0.0.1/fhir")
    adapter = EparcoursAdapter(service)
    durability = "numbering on Kafka (acks=all)" if producer else "numbering in memory"
    rates: dict[str, list[float]] = {}
    posts = 0
    try:
        sub = await service.create(_subscription(f"http://127.0.0.1:{rx.hook}/hook"), "bench")
        posts += 1
        if sub.status is not Status.ACTIVE:
            raise RuntimeError(f"bench subscription not active: {sub.status} {sub.error}")
        for _ in range(runs):
            for mode, in_flight in _modes():
                jobs = notification_jobs(n, sub.id)
                seconds, outcomes = await drive(adapter.deliver, jobs, in_flight)
                expect(outcomes, f"notifications ({mode})", "event ")
                posts += len(jobs)
                name = f"e-parcours webhook full-resource, {durability}, {mode}"
                rates.setdefault(name, []).append(len(jobs) / seconds)
    finally:
        await sender.aclose()
    return [summarise(name, "notifs/s", v) for name, v in rates.items()], posts


@contextlib.asynccontextmanager
async def bench_topic(bootstrap: str, kafka: KafkaSettings) -> AsyncIterator[str]:
    """A throwaway compacted topic, deleted afterwards: the bench never writes into a real
    care.subscriptions (CAREBUS_KAFKA__BOOTSTRAP may point at a shared broker)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"bench.subscriptions.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    await admin.start()
    try:
        topic = NewTopic(
            name, 1, kafka.replication_factor, topic_configs={"cleanup.policy": "compact"}
        )
        await admin.create_topics([topic])
        try:
            yield name
        finally:
            await admin.delete_topics([name])
    finally:
        await admin.close()


async def run(
    runs: int = 3, *, bootstrap: str | None = None, kafka: KafkaSettings | None = None
) -> list[Figure]:
    """Every adapter figure (median of `runs`, min/max), in a temporary directory.

    `bootstrap` (the bench's broker) adds the e-parcours figures with durable numbering.
    """
    import tempfile

    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="carebus-bench-adapters-") as tmp:
        data_dir = Path(tmp)
        pki = await asyncio.to_thread(ensure_local_pki, data_dir)  # child reuses it
        async with receivers(data_dir) as rx:
            figures += await mail_figures(rx, data_dir, pki, runs)
            if bootstrap:
                figures += await worker_figures(
                    rx, data_dir, pki, bootstrap, kafka or KafkaSettings(), runs
                )
            record, created = await record_figures(rx, runs)
            figures += record
            notes, posts = await notification_figures(rx, runs, None, "unused", NOTIFICATIONS)
            figures += notes
            if bootstrap:
                kafka = kafka or KafkaSettings()
                async with (
                    bench_topic(bootstrap, kafka) as topic,
                    EventProducer(bootstrap, kafka) as producer,
                ):
                    durable, more = await notification_figures(
                        rx, runs, producer, topic, DURABLE_NOTIFICATIONS
                    )
                figures += durable
                posts += more
        if rx.final.get("hook_posts") != posts:
            raise RuntimeError(f"webhook received {rx.final.get('hook_posts')}, sent {posts}")
        db = DocumentDB(data_dir / STORE_FILE)
        try:
            filed = db.count("DocumentReference")
        finally:
            db.close()
        if filed != created:
            raise RuntimeError(f"store holds {filed} documents, {created} were filed")
    return figures


def main() -> None:
    """`python -m bench.adapters serve DIR` (the receivers) or `… run [RUNS]` (alone)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        asyncio.run(serve_receivers(Path(sys.argv[2])))
        return
    runs = int(sys.argv[2]) if len(sys.argv) >= 3 else 3
    for fig in asyncio.run(run(runs)):
        print(" | ".join(fig.row()))


if __name__ == "__main__":
    main()

"""The faust-streaming application: one agent that routes events and runs their SLA.

Routing and SLA read the same events; one agent parses each Bundle once for both and
pays faust's per-event cost once (they were two agents: twice the parsing, and the
routing throughput was a third of what it is now).

Decisions live in pure code (processors.routing.rules, processors.sla.machine); this
module only binds them to topics and tables.

Ack/commit policy (faust, at-least-once — `exactly_once` is not used: it is unreliable
in faust-streaming): events are taken in batches (up to 500 or 20 ms) and acked when
the batch is done, i.e. after every work item / notice they caused was acknowledged by
the broker (our EventProducer
waits for acks=all); faust commits acked offsets. A crash replays the unacked tail:
work-item ids and notice ids are derived from the event, so replays are idempotent,
and the SLA state dedups event ids itself. A failing event is caught, dead-lettered
with its reason and acked: it never stalls its partition.

Deadlines: the SLA table (changelog-backed) is the truth; each worker keeps a
DeadlineQueue of the cases it holds, rebuilt from the table on recovery. A worker's
timer turns due entries into *ticks* on care.sla.ticks (keyed by case, so a tick reaches
the partition owner); the agent fires a deadline only if it is still pending in the
table, so a tick for a cancelled, fired or moved case does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import faust
from faust.streams import _current_event as _CURRENT_EVENT
from prometheus_client import Counter, Gauge, Histogram

from adapters.bundle_view import extension
from bus import tracing
from bus.deadletter import dead_letter_of, is_replayed
from bus.metrics import REGISTRY
from bus.settings import KafkaSettings, Settings
from processors.context import (
    Processors,
    with_consent,
)
from processors.facts import Read, read_event
from processors.notices import notice_envelope
from processors.routing.parties import CaseParties
from processors.routing.rules import Decision, route
from processors.sla.machine import Notice, on_due, on_event
from processors.sla.retention import stale, stamp
from processors.sla.scheduler import requeue
from processors.sla.state import CaseState
from processors.sweep import COMMANDS, Sweep
from processors.ticker import Ticker
from schemas.builders.common import EXT_RECIPIENT_ID
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.topics import (
    DELIVERY_STATUS,
    EXPERTISE_EVENTS,
    REFERRAL_EVENTS,
    SLA_EVENTS,
    SLA_TICKS,
    STAY_EVENTS,
    TopicSpec,
)

log = logging.getLogger("carebus.processors")

#: the care-event topics routed and tracked by the SLA machine
INBOUND_TOPICS = frozenset({REFERRAL_EVENTS.name, STAY_EVENTS.name, EXPERTISE_EVENTS.name})
#: everything the processors group consumes: a tool that positions the group (tests,
#: a territory's first start on an old cluster) must cover exactly these
SOURCE_TOPICS = (*sorted(INBOUND_TOPICS), DELIVERY_STATUS.name, SLA_TICKS.name)

FIRED = Counter(
    "carebus_sla_notices_total", "SLA notices emitted", ["event_type"], registry=REGISTRY
)
PENDING = Gauge(
    "carebus_sla_pending_deadlines", "Deadlines pending in this worker's queue", registry=REGISTRY
)
LATENESS = Histogram(
    "carebus_sla_firing_lateness_seconds",
    "Firing time minus due time",
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30, 300),
)
POISON = Counter(
    "carebus_processor_dead_letters_total",
    "Events a processor dead-lettered",
    ["agent"],
    registry=REGISTRY,
)


def internal_topics(app_id: str) -> list[TopicSpec]:
    """The faust changelog topics, declared by us with the right partition count before
    faust starts: created lazily by faust, a changelog can briefly look mismatched with
    its source topics and the first events of a partition would be refused."""
    return [
        TopicSpec(
            f"{app_id}-{table}-changelog",
            f"SLA table {table} (faust changelog)",
            key="case id",
            partitions=SLA_TICKS.partitions,
            cleanup_policy="compact",
            retention_ms=-1,
        )
        for table in ("sla-cases", "sla-parties")
    ]


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The same connection security as `KafkaSettings.client_options()` (aiokafka), in
    faust's terms: SASL (PLAIN, SCRAM-SHA-256/512) with or without TLS, or TLS alone
    (mutual TLS when a client certificate is configured)."""
    opts: dict[str, Any] = {"broker_client_id": kafka.client_id}
    protocol = kafka.security_protocol
    if protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=kafka.ssl_context() if protocol == "SASL_SSL" else None,
        )
    elif protocol == "SSL":
        opts["broker_credentials"] = faust.SSLCredentials(kafka.ssl_context())
    return opts


def _faust_app(settings: Settings, bootstrap: str, app_id: str) -> faust.App:
    return faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in bootstrap.split(",") if b.strip()],
        **faust_broker_options(settings.kafka),
        store="memory://",
        web_enabled=False,
        producer_acks=-1,
        processing_guarantee="at_least_once",
        topic_replication_factor=settings.kafka.replication_factor,
        topic_partitions=REFERRAL_EVENTS.partitions,
        table_standby_replicas=0,
        datadir=str(settings.data_dir / "processors"),
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        broker_session_timeout=settings.processors.session_timeout_s,
        broker_heartbeat_interval=settings.processors.heartbeat_interval_s,
        stream_wait_empty=False,
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        loop=asyncio.get_running_loop(),
    )


def create_app(
    settings: Settings, bootstrap: str, ctx: Processors, app_id: str = "carebus-processors"
) -> faust.App:
    app = _faust_app(settings, bootstrap, app_id)
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    sources = app.topic(*SOURCE_TOPICS, **raw)
    ticks = app.topic(SLA_TICKS.name, **raw)
    cases = app.Table("sla-cases", partitions=SLA_TICKS.partitions, key_type=str, value_type=bytes)
    parties = app.Table(
        "sla-parties", partitions=SLA_TICKS.partitions, key_type=str, value_type=bytes
    )
    ticker = Ticker(ctx, ticks)

    async def poison(agent: str, msg: Any, exc: Exception) -> None:
        POISON.labels(agent).inc()
        out = dead_letter_of(
            msg, reason=f"{type(exc).__name__}: {exc}", group=f"{app_id}:{agent}", attempts=1
        )
        await ctx.producer.send_raw(out.topic, out.key, out.value, out.headers)
        log.error(
            "%s dead-lettered %s[%d]@%d: %s: %s",
            agent,
            msg.topic,
            msg.partition,
            msg.offset,
            type(exc).__name__,
            str(exc)[:300],
        )

    async def guarded(agent: str, msg: Any, work: Callable[[], Any]) -> None:
        """Run one event's work: retry what may be transient, dead-letter the rest."""
        for attempt in range(1, 4):
            try:
                await work()
                return
            except (ValueError, KeyError, TypeError) as exc:  # malformed: retrying cannot help
                failure: Exception = exc
                break
            except Exception as exc:  # noqa: BLE001 - e.g. broker hiccup: retry, then DLQ
                failure = exc
                if attempt < 3:
                    await asyncio.sleep(0.2 * 2**attempt)
        await poison(agent, msg, failure)

    @app.agent(sources, name="process")
    async def process_agent(stream: faust.Stream) -> None:
        # One agent for routing and SLA: each inbound Bundle is parsed once for both (two
        # agents parsed it twice and paid faust's per-event cost twice). A batch is
        # decided first, SLA work runs event by event (guarded: retried, then
        # dead-lettered), then all the batch's work items go in one pipelined publish
        # (one acks=all round trip per batch); a batch that cannot be written is retried
        # event by event, then dead-lettered. Offsets are acked when the batch is done.
        async for events in stream.take_events(500, within=0.02):
            routed: list[tuple[Any, Envelope, Decision]] = []
            for event in events:
                # take_events hands over a batch after iterating it: make this event the
                # current one *in this task's context*, which is what faust tables read to
                # write the changelog to the event's partition. Never the stream's
                # `current_event` attribute: take_events' background filler reads it to
                # collect the next event, and overwriting it lost events.
                _CURRENT_EVENT.set(weakref.ref(event))
                msg = event.message
                if msg.topic == SLA_TICKS.name:
                    tracing.use(None)
                    await guarded("sla", msg, lambda m=msg: on_tick(m.key.decode(), m.value))
                    continue
                try:
                    env = Envelope.decode(msg.key, msg.value, msg.headers or [])
                    tracing.use(env.traceparent)  # its log lines carry its trace
                    read = read_event(env) if msg.topic in INBOUND_TOPICS else None
                    decision = decide(env, read) if read is not None else None
                except (ValueError, KeyError, TypeError) as exc:
                    await poison("route", msg, exc)
                    continue
                if decision is not None:
                    routed.append((msg, env, decision))
                await guarded("sla", msg, lambda e=env, r=read: on_case_event(e, r))
            try:
                await ctx.publish_decisions([(d, env) for _, env, d in routed])
            except Exception:  # noqa: BLE001 - fall back to one event at a time
                for msg, env, decision in routed:
                    await guarded(
                        "route", msg, lambda e=env, d=decision: ctx.publish_decision(d, e)
                    )
            for _, env, _ in routed:
                ctx.dedup.mark(env.id)
            tracing.use(None)

    def decide(env: Envelope, read: Read) -> Decision | None:
        if ctx.dedup.seen(env.id) and not is_replayed(env.extra_headers):
            return None
        return route(
            env,
            with_consent(read, ctx.consents),
            ctx.lookup,
            documents=read.documents,
            subscriptions=ctx.subscriptions,
        )

    async def emit(
        notices: Sequence[Notice], case_parties: CaseParties, cause: Envelope | None
    ) -> None:
        for notice in notices:
            env = notice_envelope(notice, cause)
            await ctx.producer.publish(SLA_EVENTS.name, env)
            FIRED.labels(notice.event_type.value).inc()
            notify: tuple[str, ...] = tuple(notice.notify)
            if notice.recipient:
                # an ack-reminder is for one recipient: whatever role the case gave them
                party = next((p for p in case_parties.parties if p.rpps == notice.recipient), None)
                notify = (party.role,) if party is not None else ()
            decision = route(
                env,
                case_parties,
                ctx.lookup,
                notify=notify,
                due=notice.deadline.isoformat() if notice.deadline else "",
            )
            if notice.recipient:
                decision.items = [i for i in decision.items if i.recipient.id == notice.recipient]
            await ctx.publish_decision(decision, env)

    def schedule(case_id: str, fx_schedule: Sequence, fx_cancel: Sequence) -> None:
        for d in fx_cancel:
            ctx.queue.cancel(case_id, d.token)
        for d in fx_schedule:
            ctx.queue.schedule(case_id, d.fire_at, d.token)
        PENDING.set(len(ctx.queue))

    async def on_tick(case_id: str, value: bytes) -> None:
        if value in COMMANDS.values():
            sweep.apply(case_id, value)
            return
        token = int(value)
        try:
            await fire_tick(case_id, token)
        finally:
            ticker.landed(case_id, token)

    async def fire_tick(case_id: str, token: int) -> None:
        raw_state = cases.get(case_id)
        if raw_state is None:
            return
        state = CaseState.from_bytes(raw_state)
        now = ctx.clock()
        fired = next((d for d in state.pending if d.token == token), None)
        new, notices, again = on_due(state, token, now)
        if notices:
            case_parties = _parties(parties.get(case_id))
            if fired is not None:  # Notice.deadline is the request's due date, not this
                LATENESS.observe(max(0.0, (now - fired.fire_at).total_seconds()))
            await emit(notices, case_parties, None)  # emitted BEFORE the table write
        for d in again:
            ctx.queue.schedule(case_id, d.fire_at, d.token)
        if new is not state:
            cases[case_id] = new.to_bytes()

    async def on_case_event(env: Envelope, read: Read | None = None) -> None:
        et = EventType(env.type)
        if et is EventType.DELIVERY_FAILED:
            read = read or read_event(env)
            case_parties = _parties(parties.get(env.subject))
            if not _from_coordinator(read):
                await ctx.publish_decision(route(env, case_parties, ctx.lookup), env)
            return
        if et.family == "bus" and et is not EventType.DELIVERY_READ:
            return
        read = read or read_event(env)
        if et.inbound:
            # every inbound event dates the case (its retention clock), coarsely: the
            # parties are rewritten for the date only when it is stale (sla/retention.py)
            known = _parties(parties.get(env.subject))
            merged = known.merged(read.parties)
            now = ctx.clock()
            if merged != known or stale(known.touched, now, ctx.policies.retention):
                parties[env.subject] = replace(merged, touched=stamp(now)).to_bytes()
        raw_state = cases.get(env.subject)
        state = CaseState.from_bytes(raw_state) if raw_state else None
        new, fx = on_event(state, et, read.facts, ctx.clock(), ctx.policies)
        if fx.duplicate or new is None:
            return
        schedule(env.subject, fx.schedule, fx.cancel)
        if fx.notices:
            await emit(fx.notices, _parties(parties.get(env.subject)), env)
        if fx.answered_late:
            log.info("late answer on %s (%s)", env.subject, env.type)
        cases[env.subject] = new.to_bytes()

    @cases.on_recover
    async def rebuild_queue() -> None:
        started = time.perf_counter()
        count = 0
        for i, raw in enumerate(list(cases.values())):
            if raw:
                count += requeue(ctx.queue, (CaseState.from_bytes(raw),))
            if i % 5000 == 4999:  # ~0.1 s slices: heartbeats go on during a long rebuild
                await asyncio.sleep(0)
        PENDING.set(len(ctx.queue))
        ticker.reset()  # ticks of a previous assignment: the requeue re-arms them
        log.info(
            "SLA: %d pending deadlines requeued in %.2fs", count, time.perf_counter() - started
        )

    sweep = Sweep(ctx, cases, parties, ticks)

    @app.timer(ctx.sweep_interval_s)
    async def forget_finished_cases() -> None:
        await sweep.run()

    @app.timer(ctx.tick_interval_s)
    async def fire_due() -> None:
        if await ticker.fire_due():
            PENDING.set(len(ctx.queue))

    return app


def _parties(raw: bytes | None) -> CaseParties:
    return CaseParties.from_bytes(raw) if raw else CaseParties()


def _from_coordinator(read: Read) -> bool:
    """A failed alert to the coordinator must not alert the coordinator again (no loop)."""
    ext = extension(read.view.focus, EXT_RECIPIENT_ID) or {}
    return str(ext.get("valueString", "")).startswith("territory/")

"""The write path shared by every inbound adapter (FHIR HTTP, HL7 MLLP, `carebus send`).

An input is either accepted (written to its event topic, acks=all, before the sender
hears 'yes') or refused (its original bytes and the reason written to
care.rejected-input, before the sender hears 'no'). If the broker cannot take either
write, the sender is told to retry (BrokerUnavailable → HTTP 503 / HL7 AE) and keeps
its message: nothing acknowledged is lost, nothing refused is silently dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from bus import metrics, tracing
from bus.deadletter import rejected_input
from bus.dedup import Deduplicator
from bus.producer import EventProducer
from bus.settings import IngressSettings, KafkaSettings
from schemas.clock_rules import message_time_issue
from schemas.codes import EventType
from schemas.envelope import H_INGRESS_TIME, Envelope, now_iso
from schemas.outcome import Issue, IssueCode
from schemas.task_states import ReferralStates, TransitionRefused
from schemas.topics import REFERRAL_EVENTS, topic_for
from schemas.validate import ValidatedMessage

log = logging.getLogger("carebus.ingress")


@dataclass(frozen=True, slots=True)
class Accepted:
    event_id: str
    topic: str
    duplicate: bool  # a retransmission: acknowledged again, not written twice


class Ingress:
    """Accept or refuse inbound messages, durably, for one process."""

    def __init__(
        self,
        producer: EventProducer,
        *,
        dedup_size: int = 100_000,
        rules: IngressSettings | None = None,
    ) -> None:
        """`rules` None: no clock rule (replays and operator sends take old messages)."""
        self.producer = producer
        self.rules = rules
        self._acked = Deduplicator(dedup_size)  # event ids already acknowledged here
        # content digest per acknowledged event id: a reused id with other content is
        # refused instead of being acknowledged as a retransmission and dropped
        self._digests: OrderedDict[str, bytes] = OrderedDict()
        self._digests_max = dedup_size
        self.referrals = ReferralStates(max_closed=dedup_size)  # closed ones: bounded

    def check_reuse(self, msg: ValidatedMessage) -> Issue | None:
        """A Bundle.id (event id) already accepted here with different content.

        Same content (a retransmission, even re-serialised or re-stamped) is fine and
        acknowledged again; other content under the same id would otherwise be
        acknowledged and silently dropped by every deduplicating consumer.
        """
        known = self._digests.get(msg.event_id)
        if known is None or known == _content_digest(msg):
            return None
        return Issue(
            IssueCode.DUPLICATE,
            f"event id {msg.event_id} was already accepted with different content; "
            "a new message needs a new id (FHIR Bundle.id / HL7 MSH-10)",
            "Bundle.id",
        )

    def check_clock(
        self, msg: ValidatedMessage, now: datetime | None = None, where: str = "Bundle.timestamp"
    ) -> Issue | None:
        """A message dated too far ahead of the bus clock, or too old (`[ingress]`)."""
        if self.rules is None or not msg.timestamp or self._acked.seen(msg.event_id):
            return None  # a retransmission of an accepted message is acknowledged again
        age = self.rules.max_message_age_days
        return message_time_issue(
            msg.timestamp,
            now or datetime.now(UTC),
            max_skew=timedelta(seconds=self.rules.max_clock_skew_s),
            max_age=timedelta(days=age) if age > 0 else None,
            where=where,
        )

    def check_referral(self, msg: ValidatedMessage) -> TransitionRefused | None:
        """An illegal referral move (HTTP 409) as far as this ingress has seen the case."""
        if msg.event_type.family != "referral":
            return None
        if self._acked.seen(msg.event_id):
            return None  # a retransmission of something accepted is not a new move
        return self.referrals.check(msg.case_id, msg.event_type)

    async def accept(
        self,
        msg: ValidatedMessage,
        *,
        channel: str,
        source: str = "",
        traceparent: str | None = None,
    ) -> Accepted:
        """Write a validated message to its topic; raises BrokerUnavailable.

        The event continues the caller's W3C `traceparent` when it sent a valid one
        (HTTP), else starts a trace (MLLP); it carries the accept time in
        `carebus_ingress_time` (end-to-end latency is measured from it).
        """
        topic = topic_for(msg.event_type)
        if self._acked.seen(msg.event_id):
            metrics.DUPLICATES.labels(channel).inc()
            return Accepted(msg.event_id, topic, duplicate=True)
        env = Envelope(
            id=msg.event_id,
            type=msg.event_type.value,
            source=source or msg.source,
            subject=msg.case_id,
            data=msg.raw,
            time=msg.timestamp or _now(),
            traceparent=tracing.continue_or_start(traceparent),
            extra_headers=((H_INGRESS_TIME, now_iso().encode()),),
        )
        tracing.use(env.traceparent)  # this request's log lines carry its trace
        try:
            await self.producer.publish(topic, env)
        except Exception:
            metrics.UNAVAILABLE.labels(channel).inc()
            raise
        self._acked.mark(msg.event_id)
        self._digests[msg.event_id] = _content_digest(msg)
        while len(self._digests) > self._digests_max:
            self._digests.popitem(last=False)
        if msg.event_type.family == "referral":
            self.referrals.apply(msg.case_id, msg.event_type)
        metrics.RECEIVED.labels(channel, msg.event_type.value).inc()
        log.info(
            "accepted %s %s case=%s via %s",
            msg.event_type.value,
            msg.event_id,
            msg.case_id,
            channel,
        )
        return Accepted(msg.event_id, topic, duplicate=False)

    async def reject(
        self,
        raw: bytes,
        *,
        channel: str,
        sender: str,
        issues: Iterable[Issue],
        content_type: str,
        reply_id: str = "",
    ) -> None:
        """Keep a refused input with its reason; raises BrokerUnavailable."""
        issues = list(issues)
        out = rejected_input(
            raw=raw,
            channel=channel,
            sender=sender,
            issues=issues,
            content_type=content_type,
            reply_id=reply_id,
        )
        try:
            await self.producer.send_raw(out.topic, out.key, out.value, out.headers)
        except Exception:
            metrics.UNAVAILABLE.labels(channel).inc()
            raise
        code = str(issues[0].code) if issues else "unknown"
        metrics.REJECTED.labels(channel, code).inc()
        log.warning("rejected input from %s via %s: %s", sender, channel, code)


def _content_digest(msg: ValidatedMessage) -> bytes:
    """What a retransmission keeps: the bundle without its send time, keys sorted."""
    body = {k: v for k, v in msg.bundle.items() if k not in ("timestamp", "meta")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def follow_referrals(
    ingress: Ingress, bootstrap: str, kafka: KafkaSettings, stop: asyncio.Event
) -> None:
    """Keep `ingress.referrals` in step with the referral topic (every ingress instance
    sees the moves the others accepted), so a 409 is answered from the real history.

    Reads from the beginning with no consumer group (nothing to commit: the state is
    rebuilt at each start); Task statuses are read from headers + the bundle's focus.
    """
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        REFERRAL_EVENTS.name,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka.client_options(),
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for records in batch.values():
                for rec in records:
                    try:
                        env = Envelope.decode(rec.key, rec.value, rec.headers)
                        ingress.referrals.apply(env.subject, EventType(env.type))
                    except (ValueError, KeyError):
                        continue  # not a referral event: the processors dead-letter it
    finally:
        await consumer.stop()

"""The end-to-end invariant of the delivery guarantees (ARCHITECTURE "Delivery guarantees").

Given what the senders sent and heard back, and what the receivers observed, check:
- every acknowledged input (HL7 `AA`, HTTP 2xx) is on its event topic, and produced exactly
  one effect per expected recipient and channel (a mail in the recipient's mailbox, a
  document in the record, a notification at the platform), or else an explicit
  `delivery.failed` event naming that recipient;
- every refused input (HL7 `AR`, HTTP 4xx) got an answer and a `care.rejected-input`
  record carrying its bytes;
- nothing else happened: no mail, document or notification about anything but the
  inputs (or the coordinator alerts that `delivery.failed` events cause), no duplicate
  effect (distinct Message-ID / masterIdentifier / event number for the same thing), no
  half-written file, no dead letter without a delivery failure to explain it.

`check()` is the pure comparison (tests/unit/test_invariant.py). The readers below it
gather the observations from the real receivers: the embedded mailbox on disk, the
document store's ITI-67 search, a recording webhook server, and the bus topics.
A transiently refused input (`AE` / 503) requires nothing, but when its event did reach
the topic anyway (at-least-once) its effects are expected like an acknowledged one's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

import orjson

MSSANTE, DMP, EPARCOURS = "mssante", "dmp", "eparcours"
#: channels whose receiver deduplicates redeliveries itself (same event number = one effect)
RECEIVER_DEDUPS = frozenset({EPARCOURS})


# --- what was sent ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """One input as the sender saw it. `marker` is a string found in its raw bytes (HL7
    MSH-10, Bundle id) so its rejected-input record can be found; `answer` is the ACK
    code (AA/AE/AR/CA/CE/CR) or the HTTP status; `event_id` the id the bus gave it."""

    marker: str
    answer: str
    event_id: str = ""
    via: str = ""  # mllp | http

    @property
    def acknowledged(self) -> bool:
        return self.answer in ("AA", "CA") or self.answer.startswith("2")

    @property
    def refused(self) -> bool:
        """Refused for good (the sender must fix it), as opposed to 'retry later'."""
        return self.answer in ("AR", "CR") or (
            self.answer.startswith("4") and self.answer not in ("401", "403", "408", "429")
        )

    @property
    def transient(self) -> bool:
        return not self.acknowledged and not self.refused


# --- what should and did happen ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expect:
    """One effect the bus owes: `key` identifies it at the receiver (the event id for a
    mail, the document's hash for the record, the MessageHeader id for a platform)."""

    channel: str
    recipient: str  # mail address (lower case), "dmp", subscription id
    key: str
    about_event: str  # the event it comes from (to match a delivery.failed)
    recipient_id: str = ""  # RPPS / territory id / subscription id (delivery.failed names it)


@dataclass(frozen=True, slots=True)
class Effect:
    """One thing a receiver holds. `dedup` is what the receiver would deduplicate on
    (Message-ID, masterIdentifier, subscription event number); `where` is for messages."""

    channel: str
    recipient: str
    key: str
    dedup: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery.failed event from care.delivery.status."""

    event_id: str
    about_event: str
    channel: str
    address: str
    recipient_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A care.rejected-input record (its value is the original bytes)."""

    value: bytes
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: str
    reason: str
    topic: str = ""


@dataclass
class Observed:
    effects: list[Effect] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    stored_events: set[str] = field(default_factory=set)  # input event ids on their topics
    partial_files: list[str] = field(default_factory=list)  # half-written files anywhere


@dataclass
class Report:
    lost_at_ingress: list[Sent] = field(default_factory=list)
    missing: list[Expect] = field(default_factory=list)
    duplicates: list[tuple[tuple[str, str, str], list[Effect]]] = field(default_factory=list)
    unexpected: list[Effect] = field(default_factory=list)
    refused_unrecorded: list[Sent] = field(default_factory=list)
    unanswered: list[Sent] = field(default_factory=list)
    partial_files: list[str] = field(default_factory=list)
    unexplained_dead_letters: list[DeadLetter] = field(default_factory=list)
    # informative, not violations
    delivered: int = 0
    failed: int = 0
    failed_but_delivered: list[Expect] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost_at_ingress
            or self.missing
            or self.duplicates
            or self.unexpected
            or self.refused_unrecorded
            or self.unanswered
            or self.partial_files
            or self.unexplained_dead_letters
        )

    def summary(self, limit: int = 5) -> str:
        parts = [f"delivered={self.delivered} failed={self.failed}"]
        for name in (
            "lost_at_ingress",
            "missing",
            "duplicates",
            "unexpected",
            "refused_unrecorded",
            "unanswered",
            "partial_files",
            "unexplained_dead_letters",
            "failed_but_delivered",
        ):
            items = getattr(self, name)
            if items:
                parts.append(f"{name} ({len(items)}): {items[:limit]!r}")
        return "\n".join(parts)


#: dead letters every failed delivery / unresolved recipient leaves on purpose
EXPLAINED_DLQ = ("delivery failed", "recipient unresolved")


def check(
    sent: Sequence[Sent],
    expected: Iterable[Expect],
    observed: Observed,
    *,
    coordinator: str | None = None,
) -> Report:
    """Compare. `expected` covers every input event that reached its topic; a
    delivery.failed about a non-coordinator recipient additionally owes one alert mail to
    `coordinator` (its key is the delivery.failed event id), when given."""
    report = Report()
    answered = {s.marker for s in sent if s.answer}
    for s in sent:
        if not s.answer and s.marker not in answered:
            report.unanswered.append(s)  # no attempt of this input ever got an answer
        if s.acknowledged and s.event_id not in observed.stored_events:
            report.lost_at_ingress.append(s)
        if s.refused and not any(s.marker.encode() in r.value for r in observed.rejected):
            report.refused_unrecorded.append(s)
    owed = list(expected)
    failed_for = {(f.about_event, f.address.lower()) for f in observed.failures} | {
        (f.about_event, f.recipient_id) for f in observed.failures
    }
    if coordinator:
        for f in observed.failures:
            if not f.recipient_id.startswith("territory/") and f.about_event:
                owed.append(Expect(MSSANTE, coordinator.lower(), f.event_id, f.event_id))
    groups: dict[tuple[str, str, str], list[Effect]] = defaultdict(list)
    for e in observed.effects:
        groups[(e.channel, e.recipient.lower(), e.key)].append(e)
    wanted: set[tuple[str, str, str]] = set()
    for x in owed:
        k = (x.channel, x.recipient.lower(), x.key)
        if k in wanted:
            continue  # the same effect owed twice (e.g. two failures of one alert) is one
        wanted.add(k)
        got = groups.get(k, [])
        is_failed = (x.about_event, x.recipient.lower()) in failed_for or (
            x.recipient_id and (x.about_event, x.recipient_id) in failed_for
        )
        if got:
            report.delivered += 1
            if is_failed:
                report.failed_but_delivered.append(x)
        elif is_failed:
            report.failed += 1
        else:
            report.missing.append(x)
    for k, effects in groups.items():
        if k not in wanted:
            report.unexpected.extend(effects)
            continue
        distinct = {e.dedup for e in effects}
        if len(distinct) > 1 or (k[0] not in RECEIVER_DEDUPS and len(effects) > 1):
            report.duplicates.append((k, effects))
    report.partial_files = list(observed.partial_files)
    report.unexplained_dead_letters = [
        d for d in observed.dead_letters if not d.reason.startswith(EXPLAINED_DLQ)
    ]
    return report


# --- expected effects, from the pure routing code ----------------------------------------


def expected_for(
    envelopes: Iterable[object], lookup: object, subscriptions: object | None = None
) -> list[Expect]:
    """What `processors/routing/rules.py` route() owes for each stored input event, as the
    route agent calls it (the parties the event names, the documents it carries)."""
    from adapters.bundle_view import BundleView
    from adapters.dmp.mhd import documents_to_file
    from processors.facts import read_event
    from processors.routing.rules import route
    from schemas.workitem import Channel

    out: list[Expect] = []
    for env in envelopes:
        read = read_event(env)  # type: ignore[arg-type]
        decision = route(
            env,  # type: ignore[arg-type]
            read.parties,
            lookup,  # type: ignore[arg-type]
            documents=read.documents,
            subscriptions=subscriptions,  # type: ignore[arg-type]
        )
        eid = env.id  # type: ignore[attr-defined]
        for item in decision.items:
            r = item.recipient
            if item.channel is Channel.MSSANTE:
                out.append(Expect(MSSANTE, r.address.lower(), eid, eid, r.id))
            elif item.channel is Channel.DMP:
                for doc in documents_to_file(read.view):
                    out.append(Expect(DMP, "dmp", doc.sha1_b64, eid, r.id))
            else:
                header = BundleView(orjson.loads(env.data)).header  # type: ignore[attr-defined]
                out.append(Expect(EPARCOURS, r.id, str(header.get("id", "")), eid, r.id))
        for miss in decision.unresolved:
            out.append(Expect(MSSANTE, f"unresolved:{miss.who}", eid, eid, miss.who))
    return out


# --- readers: what the receivers hold -----------------------------------------------------


def read_mailbox(data_dir: Path) -> tuple[list[Effect], list[str]]:
    """Every .eml of the embedded mailbox (`<data_dir>/mailbox/<address>/`), as effects
    keyed by X-CareBus-Event, plus any temporary file left behind (a half-written mail)."""
    root = Path(data_dir) / "mailbox"
    effects: list[Effect] = []
    partial: list[str] = []
    if not root.is_dir():
        return effects, partial
    parser = BytesHeaderParser(policy=policy.compat32)
    for box in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(box.iterdir()):
            if path.name.startswith(".tmp-"):
                partial.append(str(path))
                continue
            if path.suffix != ".eml" or path.name.startswith("."):
                continue
            with path.open("rb") as fh:
                head = fh.read(64_000).split(b"\r\n\r\n", 1)[0]
            h = parser.parsebytes(head)
            effects.append(
                Effect(
                    MSSANTE,
                    box.name,
                    str(h.get("X-CareBus-Event", "")).strip(),
                    " ".join(str(h.get("Message-ID", "")).split()),
                    str(path),
                )
            )
    return effects, partial


async def read_store(base_url: str, patient_ins: Iterable[str], token: str = "") -> list[Effect]:
    """The record's DocumentReferences for these patients (ITI-67), keyed by the attachment
    hash, deduplicated on the masterIdentifier."""
    import httpx

    ins_system = "urn:oid:1.2.250.1.213.1.4.8"
    headers = {"accept": "application/fhir+json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    out: list[Effect] = []
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=30) as client:
        for ins in sorted(set(patient_ins)):
            url: str | None = f"/DocumentReference?patient.identifier={ins_system}|{ins}&_count=500"
            while url:
                r = await client.get(url, headers=headers)
                r.raise_for_status()
                bundle = r.json()
                for entry in bundle.get("entry", []) or []:
                    res = entry.get("resource", {})
                    for content in res.get("content", []) or []:
                        att = content.get("attachment", {})
                        out.append(
                            Effect(
                                DMP,
                                "dmp",
                                str(att.get("hash", "")),
                                str((res.get("masterIdentifier") or {}).get("value", "")),
                                str(res.get("id", "")),
                            )
                        )
                nxt = [
                    x["url"] for x in bundle.get("link", []) or [] if x.get("relation") == "next"
                ]
                url = nxt[0] if nxt else None
    return out


def notification_effects(notifications: Iterable[tuple[str, dict]]) -> list[Effect]:
    """Effects of recorded rest-hook notifications: (subscription id, MessageHeader id of the
    event) deduplicated on the event number, from full-resource Bundles."""
    out: list[Effect] = []
    for sub_id, bundle in notifications:
        entries = bundle.get("entry", []) or []
        status = entries[0].get("resource", {}) if entries else {}
        params = {p.get("name"): p for p in status.get("parameter", []) or []}
        if params.get("type", {}).get("valueCode") != "event-notification":
            continue
        numbers = [
            next(
                (
                    q.get("valueString")
                    for q in p.get("part", [])
                    if q.get("name") == "event-number"
                ),
                "",
            )
            for p in status.get("parameter", []) or []
            if p.get("name") == "notification-event"
        ]
        headers = [
            e["resource"].get("id", "")
            for e in entries[1:]
            if e.get("resource", {}).get("resourceType") == "MessageHeader"
        ]
        for number, header in zip(numbers, headers, strict=False):
            out.append(Effect(EPARCOURS, sub_id, header, str(number)))
    return out


def _ext(resource: Mapping, suffix: str) -> dict:
    for ext in resource.get("extension", []) or []:
        if str(ext.get("url", "")).endswith(suffix):
            return ext
    return {}


def failure_of(env: object) -> Failure:
    """A delivery.failed envelope, as the invariant reads it."""
    from adapters.bundle_view import BundleView

    view = BundleView(orjson.loads(env.data))  # type: ignore[attr-defined]
    focus = view.focus
    related = _ext(focus, "/related-event").get("valueIdentifier", {}) or {}
    return Failure(
        event_id=env.id,  # type: ignore[attr-defined]
        about_event=str(related.get("value", "")),
        channel=str(_ext(focus, "/delivery-channel").get("valueCode", "")),
        address=str(_ext(focus, "/delivery-address").get("valueString", "")),
        recipient_id=str(_ext(focus, "/delivery-recipient-id").get("valueString", "")),
    )


async def read_topics(
    bootstrap: str,
    kafka: object,
    *,
    since: Mapping[str, Mapping[int, int]] | None = None,
    topics: Sequence[str] = (),
) -> dict[str, list]:
    """Every record of `topics` from `since` offsets (default: the beginning) up to the
    end offsets at call time, with no consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        **kafka.client_options(),  # type: ignore[attr-defined]
    )
    await consumer.start()
    out: dict[str, list] = {t: [] for t in topics}
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            start = (since or {}).get(tp.topic, {}).get(tp.partition)
            if start is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, start)
        todo = {tp for tp in tps if ends[tp] > (await consumer.position(tp))}
        deadline = asyncio.get_running_loop().time() + 60
        while todo and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=5000)
            for tp, records in batch.items():
                out[tp.topic].extend(r for r in records if r.offset < ends[tp])
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return out


async def _partitions(consumer: object, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()  # type: ignore[attr-defined]
        parts = consumer.partitions_for_topic(topic)  # type: ignore[attr-defined]
        if parts:
            return parts
        await asyncio.sleep(0.1)
    return set()


async def end_offsets(bootstrap: str, kafka: object, topics: Sequence[str]) -> dict:
    """{topic: {partition: end offset}}: read only what a test produced, on a shared broker."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, **kafka.client_options()
    )  # type: ignore[attr-defined]
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await _partitions(consumer, t)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    out: dict[str, dict[int, int]] = defaultdict(dict)
    for tp, off in ends.items():
        out[tp.topic][tp.partition] = off
    return dict(out)


@dataclass
class BusView:
    """What the bus topics say about a test's inputs."""

    envelopes: list  # the input events found on their topics
    failures: list[Failure]
    rejected: list[Rejected]
    dead_letters: list[DeadLetter]


async def read_bus(
    bootstrap: str,
    kafka: object,
    event_ids: Iterable[str],
    *,
    since: Mapping[str, Mapping[int, int]] | None = None,
) -> BusView:
    """Input events (by id) from the event topics, delivery.failed events about them (or
    about the alerts they caused), rejected inputs and dead letters since `since`."""
    from schemas.envelope import Envelope
    from schemas.topics import (
        DEAD_LETTER,
        DELIVERY_STATUS,
        EXPERTISE_EVENTS,
        REFERRAL_EVENTS,
        REJECTED_INPUT,
        STAY_EVENTS,
    )

    wanted = set(event_ids)
    event_topics = [REFERRAL_EVENTS.name, STAY_EVENTS.name, EXPERTISE_EVENTS.name]
    topics = [*event_topics, DELIVERY_STATUS.name, REJECTED_INPUT.name, DEAD_LETTER.name]
    recs = await read_topics(bootstrap, kafka, since=since, topics=topics)
    envelopes: dict[str, object] = {}
    for t in event_topics:
        for r in recs[t]:
            with contextlib.suppress(Exception):
                env = Envelope.decode(r.key, r.value, r.headers)
                if env.id in wanted and env.id not in envelopes:
                    envelopes[env.id] = env
    failures: dict[str, Failure] = {}
    for r in recs[DELIVERY_STATUS.name]:
        with contextlib.suppress(Exception):
            env = Envelope.decode(r.key, r.value, r.headers)
            if env.type == "delivery.failed":
                failures.setdefault(env.id, failure_of(env))
    # keep the failures about our inputs, and those about the alerts they caused
    mine = {f.event_id: f for f in failures.values() if f.about_event in wanted}
    mine |= {f.event_id: f for f in failures.values() if f.about_event in mine}
    rejected = [
        Rejected(r.value or b"", _header(r.headers, "rejected_reason"))
        for r in recs[REJECTED_INPUT.name]
    ]
    known = wanted | set(mine)
    dead = []
    for r in recs[DEAD_LETTER.name]:
        ce_id = _header(r.headers, "ce_id")
        if ce_id in known:
            dead.append(
                DeadLetter(ce_id, _header(r.headers, "dlq_reason"), _header(r.headers, "dlq_topic"))
            )
    return BusView(list(envelopes.values()), list(mine.values()), rejected, dead)


def _header(headers: Iterable[tuple[str, bytes]] | None, name: str) -> str:
    for n, v in headers or []:
        if n == name:
            return v.decode("utf-8", "replace")
    return ""

"""What the coordinator dashboard shows, folded from the bus's records. Pure, no I/O.

`Projection.apply(record)` takes one Kafka record of the topics in `TOPICS` (in any
interleaving across topics, in order within a partition) and updates:

- one `CaseView` per case (referral, stay, tele-expertise): business state, priority,
  the professionals and the establishment involved, a timeline (events, work items per
  recipient and channel, deliveries sent / failed / read, reminders and escalations),
  and a replica of the case's SLA state computed by the SLA machine itself
  (`processors.sla.machine.on_event` / `on_due` with the territory's policies), so the
  next deadline shown is the one the processors keep, not a second implementation;
- the delivery failures, the dead letters (with whether they were replayed since) and
  the rejected inputs, newest first.

`case_row(view, now)` then says, at a given time, what is due next, whether the case is
late or escalated; `Projection.open_rows(now)` lists open cases with late and escalated
ones first. The clock is always a parameter.

Data minimisation: the patient is never read. A case is shown by its business identifier
(referral / stay / expertise number); people are the professionals named in the events.
Memory is bounded (`max_cases`, `max_timeline`, `max_items`): closed cases are forgotten
first, then the least recently updated ones.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict, deque
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from adapters.bundle_view import BundleView
from adapters.dashboard.views import (
    CHANNEL_LABEL,
    DELIVERY_EVENTS,
    NOTICE_EVENTS,
    PRIORITY_LABEL,
    ROLE_LABEL,
    STATE_LABEL,
    TERMINAL_EVENTS,
    WHO,
    CaseRow,
    CaseView,
    DeadLetterView,
    FailureView,
    Record,
    RejectedView,
    TimelineEntry,
    case_row,
    communication_text,
    concept_text,
    ext_value,
    paris,
    parse_time,
    row_order,
)
from bus.deadletter import REPLAYED, header_text
from processors.facts import read_event
from processors.sla.machine import on_due, on_event
from processors.sla.policy import SlaPolicies
from schemas.builders.common import EXT_ADDRESS, EXT_ATTEMPT, EXT_CHANNEL, EXT_RECIPIENT_ID
from schemas.cases import parse_case_id
from schemas.codes import EVENT_DISPLAY, EXT_DEADLINE, EventType
from schemas.envelope import Envelope, EnvelopeError
from schemas.topics import (
    DEAD_LETTER,
    DELIVERY_DMP,
    DELIVERY_EPARCOURS,
    DELIVERY_MSSANTE,
    DELIVERY_STATUS,
    EXPERTISE_EVENTS,
    REFERRAL_EVENTS,
    REJECTED_INPUT,
    SLA_EVENTS,
    STAY_EVENTS,
)
from schemas.workitem import WorkItem

PARIS = ZoneInfo("Europe/Paris")
E = EventType

#: what the dashboard reads, from the beginning of each partition
TOPICS: tuple[str, ...] = (
    REFERRAL_EVENTS.name,
    STAY_EVENTS.name,
    EXPERTISE_EVENTS.name,
    SLA_EVENTS.name,
    DELIVERY_STATUS.name,
    DELIVERY_MSSANTE.name,
    DELIVERY_DMP.name,
    DELIVERY_EPARCOURS.name,
    DEAD_LETTER.name,
    REJECTED_INPUT.name,
)
_WORK_TOPICS = frozenset({DELIVERY_MSSANTE.name, DELIVERY_DMP.name, DELIVERY_EPARCOURS.name})
#: the SLA machine derives a notice's id from (case, timer token): the same rule lets the
#: replica know which of its pending deadlines a notice on care.sla.events fired
_NOTICE_NS = uuid.uuid5(uuid.NAMESPACE_URL, "https://carebus.fr/fhir/sid/event/sla")


class Projection:
    """The dashboard's state; `version` grows with every record that changed it."""

    def __init__(
        self,
        policies: SlaPolicies,
        *,
        max_cases: int = 5000,
        max_timeline: int = 200,
        max_items: int = 500,
    ) -> None:
        self.policies = policies
        self.max_cases, self.max_timeline, self.max_items = max_cases, max_timeline, max_items
        self.cases: OrderedDict[str, CaseView] = OrderedDict()  # least recently updated first
        self.failures: deque[FailureView] = deque(maxlen=max_items)  # newest first
        self.dead_letters: OrderedDict[tuple[int, int], DeadLetterView] = OrderedDict()
        self.rejected: deque[RejectedView] = deque(maxlen=max_items)  # newest first
        self._replayed: OrderedDict[str, datetime] = OrderedDict()  # event id → when
        self.version = 0
        self.records = 0
        self.unreadable = 0  # records that are not CareBus events (counted, not shown)

    # --- reading ---------------------------------------------------------------------
    def open_rows(self, now: datetime) -> list[CaseRow]:
        rows = [case_row(v, now) for v in self.cases.values() if not v.closed]
        return sorted(rows, key=row_order)

    def case(self, case_id: str) -> CaseView | None:
        return self.cases.get(case_id)

    def dead_letter(self, partition: int, offset: int) -> DeadLetterView | None:
        return self.dead_letters.get((partition, offset))

    def failure_list(self) -> list[FailureView]:
        """Delivery failures, newest first, recipients by name when known."""
        out = []
        for f in self.failures:
            view = self.cases.get(f.case_id)
            name = view.display(f.recipient_id, f.recipient) if view else f.recipient
            out.append(replace(f, recipient=name))
        return out

    def dead_letter_list(self) -> list[DeadLetterView]:
        return list(reversed(self.dead_letters.values()))

    # --- folding ---------------------------------------------------------------------
    def apply(self, rec: Record) -> bool:
        """Fold one record in; False when it was not readable (counted in `unreadable`)."""
        self.records += 1
        try:
            if rec.topic == DEAD_LETTER.name:
                self._dead_letter(rec)
            elif rec.topic == REJECTED_INPUT.name:
                self._rejected(rec)
            else:
                self._event(rec)
        except (EnvelopeError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            self.unreadable += 1
            return False
        self.version += 1
        return True

    def _case(self, case_id: str, at: datetime) -> CaseView:
        view = self.cases.get(case_id)
        if view is None:
            family, _, value = parse_case_id(case_id)
            view = CaseView(case_id, family, value, self.max_timeline, updated_at=at)
            self.cases[case_id] = view
            self._evict()
        else:
            self.cases.move_to_end(case_id)
            view.updated_at = max(view.updated_at, at)
        return view

    def _evict(self) -> None:
        while len(self.cases) > self.max_cases:
            victim = next((k for k, v in self.cases.items() if v.closed), None)
            if victim is None:
                victim = next(iter(self.cases))
            del self.cases[victim]

    def _event(self, rec: Record) -> None:
        env = Envelope.decode(rec.key, rec.value, rec.headers)
        replayed = any(n == REPLAYED for n, _ in rec.headers)
        if replayed:
            self._mark_replayed(env.id, rec.at)
        if rec.topic in _WORK_TOPICS:
            self._work_item(env, rec, replayed)
            return
        et = EventType(env.type)
        if et.inbound:
            self._case_event(env, et, replayed, rec.at)
        elif et in NOTICE_EVENTS:
            self._notice(env, et, rec.at, replayed)
        elif et in DELIVERY_EVENTS:
            self._delivery(env, et, rec.at, replayed)

    def _first_time(self, view: CaseView, key: str, replayed: bool, at: datetime) -> bool:
        """True the first time a record is seen for this case; a replay is noted once."""
        if key not in view._seen:
            view._seen.add(key)
            if len(view._seen) > 4 * self.max_timeline:
                view._seen.clear()  # a bound; a very old duplicate may show twice
            return True
        if replayed:
            view.add(TimelineEntry(at, "event", "Rejoué par un opérateur", key, "info"))
        return False

    def _case_event(self, env: Envelope, et: EventType, replayed: bool, rec_at: datetime) -> None:
        read = read_event(env)
        at = read.facts.time
        view = self._case(env.subject, at)
        if not self._first_time(view, env.id, replayed, rec_at):
            return
        for party in read.parties.parties:
            names = view.people.setdefault(party.role, [])
            if party.display and party.display not in names:
                names.append(party.display)
        focus = read.view.focus
        if et.family == "stay":
            org = read.view.organization(read.view.resolve(focus.get("serviceProvider")))
            if org is not None and org.name:
                view.establishment = org.name
        if read.facts.priority:
            view.priority = read.facts.priority
        view.last_event = et
        view.state = STATE_LABEL.get(et, EVENT_DISPLAY.get(et, et.value))
        if et is E.DISCHARGE_PLANNED and read.facts.planned_at is not None:
            view.state = f"Sortie prévue le {paris(read.facts.planned_at)}"
        view.closed = et in TERMINAL_EVENTS
        if et in (E.ADMISSION_NOTIFIED, E.DISCHARGE_PLANNED, E.DISCHARGE_REVERTED):
            view.followup_due = False
        new, fx = on_event(view.sla, et, read.facts, at, self.policies)
        if new is not None:
            view.sla = new
        if fx.answered_late:
            view.answered_late = True
        view.add(
            TimelineEntry(
                at,
                "event",
                EVENT_DISPLAY.get(et, et.value),
                self._detail(view, et, read.view, fx.answered_late),
                "ok" if et in TERMINAL_EVENTS else "info",
            )
        )

    def _detail(self, view: CaseView, et: EventType, bundle: BundleView, late: bool) -> str:
        parts: list[str] = []
        if et in (E.REFERRAL_REQUESTED, E.EXPERTISE_REQUESTED):
            if view.priority:
                parts.append(f"priorité {PRIORITY_LABEL.get(view.priority, view.priority)}")
            who = view.person("requester")
            to = view.person("performer")
            if who or to:
                parts.append(f"{who or '?'} → {to or '?'}")
        reason = bundle.focus.get("statusReason")
        if et in (E.REFERRAL_REJECTED, E.REFERRAL_CANCELLED) and isinstance(reason, dict):
            parts.append(concept_text(reason.get("text")))
        if late:
            parts.append("réponse après l'échéance")
        return " ; ".join(p for p in parts if p)

    def _notice(self, env: Envelope, et: EventType, at: datetime, replayed: bool) -> None:
        view = self._case(env.subject, at)
        if not self._first_time(view, env.id, replayed, at):
            return
        bundle = BundleView(orjson.loads(env.data))
        if et is E.SLA_ESCALATED:
            view.escalated = True
        elif et is E.SLA_BREACHED:
            view.breached = True
        elif et is E.DISCHARGE_LATE_NOTICE:
            view.late_notice = True
        elif et is E.DISCHARGE_FOLLOWUP_DUE:
            view.followup_due = True
            view.state = "Suivi J+7 à faire"
        st = view.sla
        if st is not None:  # the deadline this notice fired is no longer pending
            for d in st.pending:
                if str(uuid.uuid5(_NOTICE_NS, f"{st.case_id}|{d.token}")) == env.id:
                    view.sla, _, _ = on_due(st, d.token, max(at, d.fire_at))
                    break
        tone = (
            "alert" if et in (E.SLA_ESCALATED, E.SLA_BREACHED, E.DISCHARGE_LATE_NOTICE) else "warn"
        )
        deadline = ext_value(bundle, EXT_DEADLINE)
        detail = communication_text(bundle)
        if deadline and not detail:
            detail = f"échéance {paris(parse_time(deadline, at))}"
        view.add(TimelineEntry(at, "notice", EVENT_DISPLAY.get(et, et.value), detail, tone))

    def _work_item(self, env: Envelope, rec: Record, replayed: bool) -> None:
        item = WorkItem.from_envelope(env)
        at = rec.at
        view = self._case(env.subject, at)
        if not self._first_time(view, env.id, replayed, at):
            return
        r = item.recipient
        who = r.display or r.address or r.id
        view.recipients[r.id] = who
        role = ROLE_LABEL.get(r.role, r.role or r.kind.value)
        channel = CHANNEL_LABEL.get(item.channel.value, item.channel.value)
        try:
            what = EVENT_DISPLAY[EventType(env.type)]
        except ValueError:
            what = env.type
        detail = f"{what}, par {channel}, à {who} ({role})"
        if item.due:
            detail += f" ; réponse attendue avant le {paris(parse_time(item.due, at))}"
        view.add(TimelineEntry(at, "work-item", "À remettre", detail, "info"))

    def _delivery(self, env: Envelope, et: EventType, at: datetime, replayed: bool) -> None:
        view = self._case(env.subject, at)
        if not self._first_time(view, env.id, replayed, at):
            return
        bundle = BundleView(orjson.loads(env.data))
        channel = ext_value(bundle, EXT_CHANNEL)
        rid = ext_value(bundle, EXT_RECIPIENT_ID)
        address = ext_value(bundle, EXT_ADDRESS)
        who = {"who": rid, "who_fallback": address or rid}
        label = CHANNEL_LABEL.get(channel, channel)
        attempts = ext_value(bundle, EXT_ATTEMPT)
        text = communication_text(bundle)
        if et is E.DELIVERY_SENT:
            view.add(TimelineEntry(at, "sent", "Remis", f"{label} → {WHO}", "ok", **who))
        elif et is E.DELIVERY_READ:
            view.add(TimelineEntry(at, "read", "Lu", f"{label} → {WHO}", "ok", **who))
            new, _ = on_event(view.sla, et, read_event(env).facts, at, self.policies)
            if new is not None:
                view.sla = new
        else:
            view.failures += 1
            detail = f"{label} → {WHO} : {text}"
            view.add(TimelineEntry(at, "failed", "Échec de remise", detail, "alert", **who))
            self.failures.appendleft(
                FailureView(
                    at,
                    view.case_id,
                    view.reference,
                    label,
                    address or rid or "?",
                    text,
                    int(attempts) if attempts.isdigit() else None,
                    rid,
                )
            )

    def _dead_letter(self, rec: Record) -> None:
        h = rec.headers
        event_id = header_text(h, "ce_id")
        case_id = header_text(h, "ce_subject") or (rec.key or b"").decode(errors="replace")
        origin_p, origin_o = header_text(h, "dlq_partition"), header_text(h, "dlq_offset")
        dl = DeadLetterView(
            partition=rec.partition,
            offset=rec.offset,
            at=parse_time(header_text(h, "dlq_time"), rec.at),
            origin_topic=header_text(h, "dlq_topic"),
            origin=f"{origin_p}@{origin_o}" if origin_o not in ("", "-1") else "",
            reason=header_text(h, "dlq_reason"),
            group=header_text(h, "dlq_group"),
            attempts=header_text(h, "dlq_attempts"),
            event_type=header_text(h, "ce_type"),
            event_id=event_id,
            case_id=case_id,
            replayed_at=self._replayed.get(event_id) if event_id else None,
        )
        if dl.replayed_at is not None and dl.replayed_at < dl.at:
            dl.replayed_at = None  # an earlier replay, of an earlier dead letter
        self.dead_letters[(rec.partition, rec.offset)] = dl
        while len(self.dead_letters) > self.max_items:
            self.dead_letters.popitem(last=False)
        view = self.cases.get(case_id)
        if view is not None:
            view.add(
                TimelineEntry(
                    dl.at, "dead-letter", "Mis de côté (lettre morte)", dl.reason[:300], "alert"
                )
            )

    def _mark_replayed(self, event_id: str, at: datetime) -> None:
        self._replayed[event_id] = at
        while len(self._replayed) > self.max_items:
            self._replayed.popitem(last=False)
        for dl in self.dead_letters.values():
            if dl.event_id == event_id and dl.at <= at:
                dl.replayed_at = at

    def _rejected(self, rec: Record) -> None:
        h = rec.headers
        self.rejected.appendleft(
            RejectedView(
                at=parse_time(header_text(h, "rejected_time"), rec.at),
                channel=header_text(h, "rejected_channel"),
                sender=header_text(h, "rejected_sender"),
                reason=header_text(h, "rejected_reason"),
                codes=header_text(h, "rejected_codes"),
            )
        )

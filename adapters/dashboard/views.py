"""The dashboard's view models and French labels: what a page shows of a case, a failure,
a dead letter or a rejected input, and the clock-dependent row of an open case. Pure.

`Projection` (adapters.dashboard.projection) builds these from the bus's records;
`case_row(view, now)` says, at a given time, what is due next and whether the case is
late or escalated, and `row_order` puts late and escalated cases first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from adapters.bundle_view import BundleView, extension, parse_fhir_datetime
from processors.sla.state import CaseState, Deadline
from schemas.codes import EVENT_DISPLAY, EventType

PARIS = ZoneInfo("Europe/Paris")
E = EventType

FAMILY_LABEL = {"referral": "Adressage", "stay": "Séjour", "expertise": "Téléexpertise"}
CHANNEL_LABEL = {"mssante": "MSSanté", "dmp": "DMP", "eparcours": "e-parcours"}
ROLE_LABEL = {
    "requester": "demandeur",
    "performer": "destinataire",
    "gp": "médecin traitant",
    "care-team": "équipe de soins",
    "coordinator": "coordination",
    "record": "dossier partagé",
    "subscription": "plateforme",
}
PRIORITY_LABEL = {
    "routine": "normale",
    "urgent": "urgente",
    "asap": "très urgente",
    "stat": "immédiate",
}
DEADLINE_LABEL = {
    "reminder": "Relance",
    "escalation": "Escalade",
    "breach": "Délai dépassé",
    "followup": "Suivi J+7",
    "ack-reminder": "Relance de lecture",
    "late-notice": "Sortie tardive",
}
STATE_LABEL: dict[EventType, str] = {
    E.REFERRAL_REQUESTED: "En attente de réponse",
    E.REFERRAL_ACCEPTED: "Acceptée, en cours",
    E.REFERRAL_REJECTED: "Refusée",
    E.REFERRAL_CANCELLED: "Annulée",
    E.REFERRAL_COMPLETED: "Terminée",
    E.ADMISSION_NOTIFIED: "Hospitalisé",
    E.ADMISSION_CANCELLED: "Admission annulée",
    E.DISCHARGE_PLANNED: "Sortie prévue",
    E.DISCHARGE_CANCELLED: "Hospitalisé (sortie prévue annulée)",
    E.DISCHARGE_COMPLETED: "Sorti, suivi J+7 en attente",
    E.DISCHARGE_REVERTED: "Hospitalisé (sortie annulée)",
    E.EXPERTISE_REQUESTED: "En attente de l'expert",
    E.EXPERTISE_ANSWERED: "Répondue",
    E.EXPERTISE_DECLINED: "Déclinée",
}
#: the business end of a case: it leaves the list of open cases
TERMINAL_EVENTS = frozenset(
    {
        E.REFERRAL_REJECTED,
        E.REFERRAL_CANCELLED,
        E.REFERRAL_COMPLETED,
        E.ADMISSION_CANCELLED,
        E.EXPERTISE_ANSWERED,
        E.EXPERTISE_DECLINED,
    }
)
NOTICE_EVENTS = frozenset(
    {
        E.SLA_REMINDER,
        E.SLA_ESCALATED,
        E.SLA_BREACHED,
        E.DISCHARGE_LATE_NOTICE,
        E.DISCHARGE_FOLLOWUP_DUE,
    }
)
DELIVERY_EVENTS = frozenset({E.DELIVERY_SENT, E.DELIVERY_FAILED, E.DELIVERY_READ})
_FAR = datetime.max.replace(tzinfo=UTC)
WHO = "\x00"  # placeholder of a recipient's display name in a timeline detail


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed Kafka record, as plain values (what `feed.py` hands over)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    kind: str  # event | work-item | sent | failed | read | notice | dead-letter
    title: str
    detail: str = ""
    tone: str = "info"  # info | ok | warn | alert
    #: a recipient id whose display name replaces `WHO` in `detail` when the timeline is
    #: read (a status may be read before the work item that names its recipient)
    who: str = ""
    who_fallback: str = ""


@dataclass(slots=True)
class CaseView:
    case_id: str
    family: str
    reference: str  # the business identifier value (ADR-…, stay number, TLX-…)
    max_timeline: int = 200
    state: str = "—"
    last_event: EventType | None = None
    closed: bool = False
    priority: str | None = None
    establishment: str = ""
    people: dict[str, list[str]] = field(default_factory=dict)  # role → display names
    recipients: dict[str, str] = field(default_factory=dict)  # recipient id → display
    sla: CaseState | None = None
    escalated: bool = False
    breached: bool = False
    late_notice: bool = False
    followup_due: bool = False
    answered_late: bool = False
    failures: int = 0
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    timeline: deque[TimelineEntry] = field(default_factory=deque)
    _seen: set[str] = field(default_factory=set)

    def add(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        while len(self.timeline) > self.max_timeline:
            self.timeline.popleft()

    def entries(self) -> list[TimelineEntry]:
        """The timeline, oldest first (records of different topics arrive interleaved)."""
        return [
            replace(e, detail=e.detail.replace(WHO, self.display(e.who, e.who_fallback)))
            if e.who
            else e
            for e in sorted(self.timeline, key=lambda e: e.at)
        ]

    def display(self, recipient_id: str, fallback: str = "") -> str:
        """A recipient's name as the work items gave it, else the fallback (address)."""
        return self.recipients.get(recipient_id) or fallback or recipient_id or "?"

    @property
    def kind_label(self) -> str:
        return FAMILY_LABEL.get(self.family, self.family)

    def person(self, role: str) -> str:
        return ", ".join(self.people.get(role, ()))


@dataclass(slots=True)
class FailureView:
    at: datetime
    case_id: str
    reference: str
    channel: str
    recipient: str  # the address, until the recipient's name is known
    detail: str
    attempts: int | None
    recipient_id: str = ""


@dataclass(slots=True)
class DeadLetterView:
    partition: int
    offset: int
    at: datetime
    origin_topic: str
    origin: str  # "partition@offset" it came from ("" when it never was on a topic)
    reason: str
    group: str
    attempts: str
    event_type: str
    event_id: str
    case_id: str
    replayed_at: datetime | None = None

    @property
    def event_label(self) -> str:
        try:
            return EVENT_DISPLAY[EventType(self.event_type)]
        except ValueError:
            return self.event_type or "enregistrement illisible"


@dataclass(slots=True)
class RejectedView:
    at: datetime
    channel: str
    sender: str
    reason: str
    codes: str


@dataclass(frozen=True, slots=True)
class CaseRow:
    """A case as the list shows it at `now`."""

    view: CaseView
    due_at: datetime | None  # when the answer is due (requests)
    next_at: datetime | None  # the next pending deadline still to come
    next_label: str
    late: bool
    escalated: bool
    attention: bool  # something for the coordinator to look at (late notice, J+7, failure)

    @property
    def urgent(self) -> bool:
        return self.late or self.escalated


def case_row(view: CaseView, now: datetime) -> CaseRow:
    """Due date, next deadline and flags of a case at `now`, from its SLA replica."""
    st = view.sla
    due = st.due_at if st is not None and st.status == "open" else None
    pending: list[Deadline] = sorted(st.pending, key=lambda d: d.fire_at) if st else []
    # a deadline still pending after its time has not fired yet (processors behind or
    # stopped): shown first, as overdue, since it is what the coordinator should chase
    coming = next((d for d in pending if d.fire_at <= now), None) or next(
        (d for d in pending if d.fire_at > now), None
    )
    late = (due is not None and now > due) or view.breached
    attention = view.late_notice or view.followup_due or view.failures > 0
    label = DEADLINE_LABEL.get(coming.kind, coming.kind) if coming else ""
    if coming is not None and coming.fire_at <= now:
        label += " (pas encore partie)"
    return CaseRow(
        view=view,
        due_at=due,
        next_at=coming.fire_at if coming else None,
        next_label=label,
        late=late,
        escalated=view.escalated,
        attention=attention,
    )


def row_order(row: CaseRow) -> tuple:
    """Escalated, then late, then needing attention; soonest deadline first within each."""
    when = row.due_at or row.next_at or _FAR
    return (not row.urgent, not row.escalated, not row.attention, when, row.view.case_id)


def concept_text(obj: object) -> str:
    return obj if isinstance(obj, str) else ""


def communication_text(view: BundleView) -> str:
    for part in view.focus.get("payload", []) or []:
        if isinstance(part, dict) and isinstance(part.get("contentString"), str):
            return part["contentString"]
    return ""


def ext_value(view: BundleView, url: str) -> str:
    ext = extension(view.focus, url) or {}
    for key in ("valueString", "valueCode", "valueDateTime"):
        if isinstance(ext.get(key), str):
            return ext[key]
    if isinstance(ext.get("valuePositiveInt"), int):
        return str(ext["valuePositiveInt"])
    return ""


def parse_time(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        return parse_fhir_datetime(text).astimezone(UTC)
    except (ValueError, TypeError):
        return default


def paris(at: datetime | None) -> str:
    """French wall-clock time, as the page shows it."""
    return at.astimezone(PARIS).strftime("%d/%m/%Y %H:%M") if at else "—"


def since(at: datetime, now: datetime) -> str:
    """ "il y a 3 h", "dans 2 j": how far a time is from now, in French."""
    delta = at - now
    future = delta > timedelta(0)
    seconds = abs(delta.total_seconds())
    if seconds < 60:
        amount = "moins d'une minute"
    elif seconds < 3600:
        amount = f"{int(seconds // 60)} min"
    elif seconds < 86400 * 2:
        amount = f"{int(seconds // 3600)} h"
    else:
        amount = f"{int(seconds // 86400)} j"
    return f"dans {amount}" if future else f"il y a {amount}"

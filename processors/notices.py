"""What the bus says when a deadline fires: the notice event (FHIR) and its French text.

Pure. The notice's id comes from the SLA machine (derived from case + timer token), so a
re-fired notice after a crash is the same event and is deduplicated downstream.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import orjson

from processors.sla.machine import Notice
from schemas.cases import case_ref
from schemas.codes import EventType
from schemas.envelope import Envelope, new_traceparent
from schemas.events import build_event
from schemas.model import BusNoticeInfo

PARIS = ZoneInfo("Europe/Paris")
BUS_SOURCE = "urn:carebus:bus"

_FAMILY_NOUN = {
    "referral": "la demande d'adressage",
    "expertise": "la demande de téléexpertise",
    "stay": "le séjour",
}


def french_time(at: datetime | None) -> str:
    return at.astimezone(PARIS).strftime("%d/%m/%Y à %H:%M") if at else "—"


def notice_text(notice: Notice) -> str:
    family = notice.case_id.split("/", 1)[0]
    what = _FAMILY_NOUN.get(family, "le dossier")
    when = french_time(notice.deadline)
    match notice.kind:
        case "reminder":
            return f"Relance : {what} attend une réponse (échéance le {when})."
        case "escalation":
            return (
                f"Escalade : {what} est resté(e) sans réponse après l'échéance du {when}. "
                "Le coordinateur de la CPTS est informé ; merci de répondre ou de "
                "réorienter le patient."
            )
        case "breach":
            return f"Délai dépassé : {what} n'a pas reçu de réponse (échéance le {when})."
        case "late-notice":
            return (
                f"Sortie annoncée moins de 48 h avant la date prévue ({when}) : "
                "organiser le retour à domicile sans délai."
            )
        case "followup":
            return (
                "Suivi à J+7 de la sortie : vérifier que les actions prévues ont eu lieu "
                "(passages infirmiers, pansements, rendez-vous de suivi)."
            )
        case "ack-reminder":
            return f"Relance : l'annonce de sortie (prévue le {when}) n'a pas encore été lue."
    return f"Échéance atteinte pour {what} ({when})."


def notice_envelope(notice: Notice, cause: Envelope | None) -> Envelope:
    """The bus event for a notice, linked to the case (and to its cause when known)."""
    info = BusNoticeInfo(
        about=case_ref(notice.case_id),
        text=notice_text(notice),
        deadline=notice.deadline,
        about_event=notice.caused_by,
    )
    bundle = build_event(
        EventType(notice.event_type), info, event_id=notice.event_id, timestamp=datetime.now(UTC)
    )
    data = orjson.dumps(bundle)
    if cause is not None:
        return cause.caused(
            id=notice.event_id, type=notice.event_type.value, source=BUS_SOURCE, data=data
        )
    return Envelope(
        id=notice.event_id,
        type=notice.event_type.value,
        source=BUS_SOURCE,
        subject=notice.case_id,
        data=data,
        traceparent=new_traceparent(),
    )

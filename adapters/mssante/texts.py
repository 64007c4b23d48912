"""French wording of CareBus mails: what happened, and what the recipient must do.

A professional gives a notification about ten seconds. So each event says, in one
sentence each: what happened (with the facts from the bundle: dates, reason, question)
and what is expected of the reader. Kept apart from the MIME plumbing so the wording
can be reviewed by clinicians without reading code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from adapters.bundle_view import (
    PARIS,
    BundleView,
    OrgView,
    PatientView,
    PersonView,
    extension,
    parse_fhir_datetime,
)
from schemas.codes import EVENT_DISPLAY, EXT_PLANNED_DISCHARGE, EventType

#: longest free text (reason, question, answer) quoted in a mail body
MAX_QUOTE = 600


def quote(text: str, limit: int = MAX_QUOTE) -> str:
    """Producer free text on one paragraph, shortened: the letter itself is attached."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def when(value: str | datetime | None) -> str:
    """ "17/03/2025 à 11:30" in Paris time ("" when unknown or unreadable)."""
    if not value:
        return ""
    try:
        moment = parse_fhir_datetime(value) if isinstance(value, str) else value
    except ValueError:
        return ""
    local = moment.astimezone(PARIS) if moment.tzinfo else moment
    return local.strftime("%d/%m/%Y à %H:%M")


def party_name(party: PersonView | OrgView | None, default: str = "L'émetteur") -> str:
    if isinstance(party, PersonView):
        org = (
            f" ({party.organization.name})"
            if party.organization and party.organization.name
            else ""
        )
        return f"{party.display}{org}"
    if isinstance(party, OrgView) and party.name:
        return party.name
    return default


def _text(value: object) -> str:
    if isinstance(value, dict):
        return str(value.get("text") or "")
    return value if isinstance(value, str) else ""


def _payload_text(res: dict) -> str:
    for part in res.get("payload") or []:
        if isinstance(part, dict) and isinstance(part.get("contentString"), str):
            return part["contentString"]
    return ""


def _stay(view: BundleView) -> tuple[str, str, str, str]:
    """(hospital, unit, start, end) of the focus Encounter."""
    enc = view.focus
    hospital = view.organization(view.resolve(enc.get("serviceProvider")))
    loc = (enc.get("location") or [{}])[0]
    unit = _text(loc.get("location", {}).get("display")) if isinstance(loc, dict) else ""
    period = enc.get("period") if isinstance(enc.get("period"), dict) else {}
    return (
        hospital.name if hospital and hospital.name else "l'établissement",
        unit,
        when(period.get("start")),
        when(period.get("end")),
    )


def _patient_words(view: BundleView) -> tuple[str, str]:
    """("la patiente", "e") or ("le patient", ""): French agrees with the patient."""
    patient = view.patient()
    return ("la patiente", "e") if patient and patient.gender == "female" else ("le patient", "")


def clinical_facts(event: EventType, view: BundleView) -> tuple[str, str]:
    """(what happened, what is expected) for an event about a patient."""
    who = party_name(view.sender)
    pt, e = _patient_words(view)
    Pt = pt.capitalize()
    focus = view.focus
    reason = quote(_text(focus.get("statusReason")))
    if event.family == "consent":  # not routed to mail today; worded for completeness
        denied = (focus.get("provision") or {}).get("type") == "deny"
        return (
            f"{who} a enregistré "
            + ("l'opposition" if denied else "la levée de l'opposition")
            + f" de {pt} au partage de ses données (DMP, plateformes régionales).",
            "respecter ce choix pour les partages à venir",
        )
    if event.family == "referral":
        sr = view.resolve(focus.get("focus")) or {}
        service = _text(sr.get("code")) or "une consultation"
        motive = quote(_text(focus.get("description")) or _text((sr.get("reasonCode") or [""])[0]))
        table = {
            EventType.REFERRAL_REQUESTED: (
                f"{who} vous adresse {pt} ({service}). Motif : {motive}",
                "accepter ou refuser la demande d'adressage",
            ),
            EventType.REFERRAL_ACCEPTED: (
                f"{who} a accepté la demande d'adressage ({service}).",
                "aucune action : le compte rendu vous parviendra après la consultation",
            ),
            EventType.REFERRAL_REJECTED: (
                f"{who} a refusé la demande d'adressage. Motif : {reason or 'non précisé'}",
                f"orienter {pt} vers un autre professionnel",
            ),
            EventType.REFERRAL_CANCELLED: (
                f"La demande d'adressage est annulée par {who}. Motif : {reason or 'non précisé'}",
                "ne pas donner suite et libérer le rendez-vous éventuellement réservé",
            ),
            EventType.REFERRAL_COMPLETED: (
                f"{who} vous transmet le compte rendu de consultation (pièce jointe).",
                "prendre connaissance du compte rendu et adapter le suivi",
            ),
        }
        return table[event]
    if event.family == "stay":
        hospital, unit, start, end = _stay(view)
        where = f"{hospital}" + (f", {unit}" if unit else "")
        planned_ext = extension(focus, EXT_PLANNED_DISCHARGE)
        planned = when(planned_ext.get("valueDateTime")) if planned_ext else ""
        table = {
            EventType.ADMISSION_NOTIFIED: (
                f"{Pt} est hospitalisé{e} depuis le {start or 'ce jour'} ({where}).",
                "pour information ; la sortie vous sera annoncée",
            ),
            EventType.ADMISSION_CANCELLED: (
                f"L'admission annoncée par {hospital} est annulée.",
                "pour information, aucune action",
            ),
            EventType.DISCHARGE_PLANNED: (
                f"Sortie prévue le {planned or 'prochainement'} ({where}).",
                "préparer le retour à domicile (passages infirmiers, rendez-vous de suivi)",
            ),
            EventType.DISCHARGE_CANCELLED: (
                f"La sortie prévue ({where}) est annulée : {pt} reste hospitalisé{e}.",
                "suspendre l'organisation du retour à domicile",
            ),
            EventType.DISCHARGE_COMPLETED: (
                f"{Pt} est sorti{e} le {end or 'ce jour'} ({where}). "
                "La lettre de liaison est jointe lorsqu'elle est disponible.",
                "prendre connaissance de la lettre de liaison et assurer le suivi (point à J+7)",
            ),
            EventType.DISCHARGE_REVERTED: (
                f"La sortie annoncée par {hospital} est annulée : {pt} est toujours "
                f"hospitalisé{e}.",
                "suspendre le suivi post-sortie prévu",
            ),
        }
        return table[event]
    table = {
        EventType.EXPERTISE_REQUESTED: (
            f"{who} sollicite votre avis de téléexpertise. "
            f"Question : {quote(_payload_text(focus))}",
            "répondre, décliner ou demander des compléments",
        ),
        EventType.EXPERTISE_ANSWERED: (
            f"{who} a répondu à votre demande de téléexpertise : "
            f"{quote(_payload_text(focus)) or 'voir le compte rendu joint'}",
            "prendre connaissance de l'avis",
        ),
        EventType.EXPERTISE_DECLINED: (
            f"{who} a décliné la demande de téléexpertise. Motif : {reason or 'non précisé'}",
            "solliciter un autre expert",
        ),
    }
    return table[event]


NOTICE_EXPECTED: dict[EventType, str] = {
    EventType.SLA_REMINDER: "répondre à la demande en attente",
    EventType.SLA_ESCALATED: "reprendre la demande restée sans réponse malgré la relance",
    EventType.SLA_BREACHED: "rappeler le patient et l'orienter (soins non programmés)",
    EventType.DISCHARGE_LATE_NOTICE: "organiser le retour à domicile en priorité",
    EventType.DISCHARGE_FOLLOWUP_DUE: (
        "vérifier que les actions prévues après la sortie ont eu lieu"
    ),
    EventType.DELIVERY_FAILED: (
        "transmettre l'information par un autre moyen (téléphone, autre messagerie)"
    ),
    EventType.DELIVERY_SENT: "pour information, aucune action",
    EventType.DELIVERY_READ: "pour information, aucune action",
}


def notice_text(view: BundleView) -> str:
    """The notice's own sentence (Communication.payload), written by the bus."""
    return quote(_payload_text(view.focus)) or "Alerte sans détail."


def _born(patient: PatientView) -> str:
    word = {"female": "née", "male": "né"}.get(patient.gender, "né(e)")
    if not patient.birth_date:
        return ""
    y, _, rest = patient.birth_date.partition("-")
    m, _, d = rest.partition("-")
    return f", {word} le {d}/{m}/{y}" if d else f", {word} en {y}"


def clinical_body(
    event: EventType,
    view: BundleView,
    *,
    recipient: str,
    urgent: bool,
    case_ref: str,
    due: str,
    attachments: Sequence[tuple[str, str]],
    archive: str | None,
    item_id: str,
) -> list[str]:
    """The lines of a clinical mail: who sends, which patient, what happened, what is
    expected by when, the attachments ((title, file name) pairs, then `archive`)."""
    patient = view.patient()
    what, expected = clinical_facts(event, view)
    lines = [
        f"Bonjour {recipient},".replace(" ,", ","),
        "",
        f"{EVENT_DISPLAY[event]}{' (URGENT)' if urgent else ''} — message de "
        f"{party_name(view.sender)} transmis par CareBus.",
        "",
    ]
    if patient is not None:
        ins = f" — INS {patient.ins}" if patient.ins else " — INS non transmise"
        label = "Patiente" if patient.gender == "female" else "Patient"
        lines.append(f"{label} : {patient.display}{_born(patient)}{ins}")
    lines += [f"Dossier : {case_ref}", "", what, ""]
    lines.append(f"Attendu de votre part : {expected}" + (f", avant le {due}" if due else "") + ".")
    if attachments:
        lines += ["", "Pièces jointes :"]
        lines += [f" - {title} ({name})" for title, name in attachments]
        if archive is not None:
            lines.append(
                f" - {archive} : les mêmes documents avec leurs métadonnées "
                "(INS, type, auteur) pour intégration dans votre logiciel."
            )
    lines += [
        "",
        "-- ",
        "Message envoyé par CareBus (coordination des soins) pour le compte de "
        "l'émetteur. Un accusé de lecture est demandé.",
        f"Réf. technique : {item_id}",
    ]
    return lines


def notice_body(
    event: EventType, view: BundleView, *, case_ref: str, deadline: str, item_id: str
) -> list[str]:
    """The lines of a bus notice: the bus's sentence, the case, the deadline, the action."""
    expected = NOTICE_EXPECTED.get(event, "pour information")
    return [
        "Bonjour,",
        "",
        f"{EVENT_DISPLAY[event]} — alerte CareBus.",
        "",
        notice_text(view),
        "",
        f"Dossier : {case_ref}",
        f"Attendu : {expected}" + (f", avant le {deadline}" if deadline else "") + ".",
        "",
        "-- ",
        "Alerte automatique CareBus. Le détail du dossier est dans votre logiciel ou le "
        "tableau de bord de la coordination.",
        f"Réf. technique : {item_id}",
    ]

"""The demo's day of a territory: HL7 ADT messages and FHIR messages with today's dates.

Everything here is fictitious (test NIRs with valid keys, invented RPPS/FINESS from the
sample directory in deploy/samples/). Pure: builds bytes and dicts, sends nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from schemas.codes import DocType, EventType
from schemas.events import build_event
from schemas.model import DocumentInfo, PatientInfo
from schemas.rules import nir_key
from schemas.sample_data import GP, HOSPITAL, PATIENT
from schemas.samples import expertise_info, referral_info, stay_info

PARIS = ZoneInfo("Europe/Paris")
CHBA_IPP_OID = "1.2.250.1.211.10.200.2"
CHBA_NDA_OID = "1.2.250.1.211.12.1.2"


def _nir(body13: str) -> str:
    return f"{body13}{nir_key(body13):02d}"


SECOND_PATIENT = PatientInfo(
    family="Dupuis",
    given="Marcel",
    birth_date=datetime(1941, 11, 2).date(),
    gender="male",
    ins=_nir("1411103190123"),
    postcode="03200",
)


def hl7_ts(at: datetime) -> str:
    return at.astimezone(PARIS).strftime("%Y%m%d%H%M%S")


def adt(
    trigger: str,
    control: str,
    *,
    patient: PatientInfo,
    visit: str,
    now: datetime,
    planned: datetime | None = None,
    discharged: datetime | None = None,
) -> bytes:
    """An IHE PAM France ADT message (UTF-8) from the sample hospital."""
    msh = (
        f"MSH|^~\\&|SIH-PAM|{HOSPITAL.finess}^1.2.250.1.71.4.2.2^ISO|CAREBUS|CPTS-BA|"
        f"{hl7_ts(now)}||ADT^{trigger}^ADT_{trigger}|{control}|P|2.5^FRA^2.10|||||FRA|"
        "UNICODE UTF-8|FRE"
    )
    evn = f"EVN||{hl7_ts(now)}|{hl7_ts(planned) if planned else ''}|||{hl7_ts(now)}"
    sex = "F" if patient.gender == "female" else "M"
    pid = (
        f"PID|||{patient.ins}^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS~"
        f"IPP-{visit}^^^CHBA&{CHBA_IPP_OID}&ISO^PI||{patient.family.upper()}^"
        f"{patient.given}^^^^^L||{patient.birth_date:%Y%m%d}|{sex}|||"
        f"3 rue des Tilleuls^^Moulins^^{patient.postcode}^FRA^H|||||||||||||||||||||VALI"
    )
    admitted = now - timedelta(days=3)
    pv1 = (
        f"PV1|1|I|CARDIO^204^1^CHBA|||||||CAR|||||||||{visit}^^^CHBA&{CHBA_NDA_OID}&ISO^AN"
        f"{'|' * 17}{'01' if discharged else ''}{'|' * 8}{hl7_ts(admitted)}|"
        f"{hl7_ts(discharged) if discharged else ''}"
    )
    pv2 = f"PV2|||||||||{hl7_ts(planned)}" if planned else "PV2||"
    action = {"A11": "CANCEL", "A13": "CANCEL", "A25": "CANCEL"}.get(trigger, "INSERT")
    zbe = (
        f"ZBE|MVT-{control}^CHBA^{CHBA_IPP_OID}^ISO|{hl7_ts(now)}||{action}|N||"
        "Cardiologie^^^^^CHBA^UF^^^4012||S"
    )
    rol = (
        f"ROL||UC|ODRP|{GP.rpps}^{GP.family.upper()}^{GP.given}^^^Dr^^^"
        "ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO^D^^^RPPS|20200101"
    )
    return "\r".join([msh, evn, pid, pv1, pv2, zbe, rol]).encode() + b"\r"


def invalid_hl7(control: str, now: datetime) -> bytes:
    """An A16 without any planned discharge date (PV2-9 and EVN-3 empty): must get AR."""
    msg = adt("A16", control, patient=PATIENT, visit="DEMO-NODATE", now=now)
    return msg


def letter(kind: DocType, title: str, text: str, doc_id: str, now: datetime) -> DocumentInfo:
    return DocumentInfo(
        doc_type=kind,
        title=title,
        content=text.encode(),
        content_type="text/plain; charset=utf-8",
        id=doc_id,
        created=now,
    )


def discharge_completed(visit: str, now: datetime, doc_id: str) -> dict:
    """A FHIR-speaking hospital's discharge with the lettre de liaison."""
    body = (
        "Lettre de liaison à la sortie\n\nMadame Hélène Lefèvre, hospitalisée en "
        "cardiologie pour décompensation cardiaque, sort ce jour à domicile.\n"
        "Traitement de sortie : furosémide 40 mg/j, bisoprolol 2,5 mg/j.\n"
        "Suivi : IDE à domicile 3 fois par semaine (pesée, surveillance des oedèmes), "
        "consultation de cardiologie à 1 mois, bilan biologique à J+7.\n"
    )
    info = dataclasses.replace(
        stay_info(),
        visit_number=visit,
        visit_system=f"urn:oid:{CHBA_NDA_OID}",
        admitted_at=now - timedelta(days=3),
        planned_discharge=None,
        discharged_at=now,
        letter=letter(DocType.DISCHARGE_LETTER, "Lettre de liaison de sortie", body, doc_id, now),
    )
    return build_event(EventType.DISCHARGE_COMPLETED, info, timestamp=now)


def referral(
    et: EventType, referral_id: str, now: datetime, *, priority: str, report_id: str | None = None
) -> dict:
    info = dataclasses.replace(
        referral_info(), referral_id=referral_id, priority=priority, authored_on=now
    )
    if et is EventType.REFERRAL_COMPLETED and report_id:
        report = letter(
            DocType.CONSULTATION_REPORT,
            "Compte rendu de consultation de cardiologie",
            "Compte rendu : échocardiographie normale, FEVG 60 %. Pas de "
            "modification du traitement. Revoir dans un an.\n",
            report_id,
            now,
        )
        info = dataclasses.replace(info, report=report)
    if et is EventType.REFERRAL_REJECTED:
        info = dataclasses.replace(info, status_reason="Pas de créneau avant 3 mois")
    return build_event(et, info, timestamp=now)


def expertise(et: EventType, expertise_id: str, now: datetime) -> dict:
    info = dataclasses.replace(expertise_info(), expertise_id=expertise_id, authored_on=now)
    if et is EventType.EXPERTISE_ANSWERED:
        info = dataclasses.replace(
            info,
            answer="Aspect de kératose séborrhéique, pas d'argument pour un mélanome. "
            "Surveillance simple.",
        )
    return build_event(et, info, timestamp=now)

"""XDS metadata codes shared by the two document channels (MSSanté XDM and DMP MHD).

The same letter must carry the same classCode, formatCode, facility and practice
setting whether it travels as ebRIM (`adapters.mssante.ebrim`) or as an MHD
DocumentReference (`adapters.dmp.mhd`): each `Code` holds the ebRIM codingScheme (an
OID) and the FHIR system URL of the same terminology.

Sources (looked up, not guessed):
- TRE_A03-ClasseDocument 1.2.250.1.213.1.1.4.1 and the classes "10 Compte rendu",
  "11 Synthèse": ANS JDV_J57-ClassCode-DMP (IG terminologies de santé); the FHIR
  system URL from the ANS PDSm examples. The LOINC → class table ASS_X04 was not in
  the stored sources: `CLASS_OF_TYPE` maps our five types onto the two verified classes.
- TRE_R02-SecteurActivite 1.2.250.1.71.4.2.4 (SA01 établissement public de santé,
  SA07 cabinet individuel) and TRE_A01-CadreExercice 1.2.250.1.213.1.1.4.9
  (ETABLISSEMENT, AMBULATOIRE): Mediboard XDS mapping, ANS PDSm DocumentReference
  profile, CPS card data samples.
- formatCode for unstructured text / PDF (ASS_A12: text/plain →
  urn:ihe:iti:xds-sd:text:2008, application/pdf → urn:ihe:iti:xds-sd:pdf:2008, scheme
  1.3.6.1.4.1.19376.1.2.3; FHIR system http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode).
- confidentiality N (2.16.840.1.113883.5.25, v3-Confidentiality).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from schemas.codes import DocType

#: CareBus's default XDS sourceId: a UUID-derived OID (2.25.x, ITU-T X.667). A deployment
#: with an OID of its own (registered with the ANS) passes it as `source_id`.
CAREBUS_SOURCE_OID = f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'https://carebus.fr/xds/source').int}"

_NOS = "https://mos.esante.gouv.fr/NOS"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded XDS value: code, ebRIM codingScheme (OID), display, FHIR system URL."""

    code: str
    scheme: str
    display: str
    system: str = ""

    def coding(self) -> dict:
        """The FHIR Coding of this code."""
        return {"system": self.system, "code": self.code, "display": self.display}


_A03 = ("1.2.250.1.213.1.1.4.1", f"{_NOS}/TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument")
_R02 = ("1.2.250.1.71.4.2.4", f"{_NOS}/TRE_R02-SecteurActivite/FHIR/TRE-R02-SecteurActivite")
_A01 = ("1.2.250.1.213.1.1.4.9", f"{_NOS}/TRE_A01-CadreExercice/FHIR/TRE-A01-CadreExercice")
_FMT = ("1.3.6.1.4.1.19376.1.2.3", "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode")

CLASS_REPORT = Code("10", _A03[0], "Compte rendu", _A03[1])
CLASS_SYNTHESIS = Code("11", _A03[0], "Synthèse", _A03[1])
CLASS_OF_TYPE: dict[str, Code] = {
    DocType.CONSULTATION_REPORT: CLASS_REPORT,
    DocType.TELEMEDICINE_REPORT: CLASS_REPORT,
    DocType.DISCHARGE_LETTER: CLASS_SYNTHESIS,
    DocType.REFERRAL_LETTER: CLASS_SYNTHESIS,
    DocType.TELEMEDICINE_REQUEST: CLASS_SYNTHESIS,
}
CONFIDENTIALITY_NORMAL = Code(
    "N",
    "2.16.840.1.113883.5.25",
    "Normal",
    "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
)
FACILITY_HOSPITAL = Code("SA01", _R02[0], "Etablissement public de santé", _R02[1])
FACILITY_PRACTICE = Code("SA07", _R02[0], "Cabinet individuel", _R02[1])
PRACTICE_HOSPITAL = Code("ETABLISSEMENT", _A01[0], "Etablissement de santé", _A01[1])
PRACTICE_AMBULATORY = Code("AMBULATOIRE", _A01[0], "Ambulatoire", _A01[1])
FORMAT_OF_MIME: dict[str, Code] = {
    "text/plain": Code(
        "urn:ihe:iti:xds-sd:text:2008",
        _FMT[0],
        "Document à corps non structuré en texte brut",
        _FMT[1],
    ),
    "application/pdf": Code(
        "urn:ihe:iti:xds-sd:pdf:2008", _FMT[0], "Document à corps non structuré en Pdf/A-1", _FMT[1]
    ),
}
FORMAT_DEFAULT = Code(
    "urn:ihe:iti:xds:2017:mimeTypeSufficient", _FMT[0], "Format décrit par le type MIME", _FMT[1]
)


def class_code(doc_type: str) -> Code:
    return CLASS_OF_TYPE.get(doc_type, CLASS_SYNTHESIS)


def format_code(mime_type: str) -> Code:
    return FORMAT_OF_MIME.get(mime_type, FORMAT_DEFAULT)


def setting_codes(in_facility: bool) -> tuple[Code, Code]:
    """(healthcareFacilityTypeCode, practiceSettingCode): a document authored inside a
    FINESS-identified facility is hospital care, otherwise office-based care."""
    if in_facility:
        return FACILITY_HOSPITAL, PRACTICE_HOSPITAL
    return FACILITY_PRACTICE, PRACTICE_AMBULATORY


def oid_of(unique_id: str, *, fallback: str) -> str:
    """An XDS uniqueId (OID) for a FHIR unique id: urn:oid:X → X, urn:uuid:U → 2.25.<U as
    integer> (ITU-T X.667), so the same document keeps the same id in MSSanté and DMP."""
    if unique_id.startswith("urn:oid:"):
        return unique_id[8:]
    try:
        return f"2.25.{uuid.UUID(unique_id.removeprefix('urn:uuid:')).int}"
    except ValueError:
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, unique_id or fallback).int}"

"""Import from the Annuaire Santé FHIR API: Practitioner, PractitionerRole, Organization.

Follows the ANS "Annuaire Santé" FHIR IG (as-dp-* profiles): idNatPs "8" + RPPS on
Practitioner (urn:oid:1.2.250.1.71.4.2.1, plus the plain https://rpps.esante.gouv.fr
system), idNatStruct "1" + FINESS on Organization (urn:oid:1.2.250.1.71.4.2.2, plus the
plain FINESS systems), the profession (NOS TRE_G15) and the practice on PractitionerRole,
and MSSanté mailboxes as e-mail ContactPoints typed by the FR Core extension.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from processors.directory.model import (
    InvalidEntry,
    Organization,
    Professional,
    valid_finess,
    valid_rpps,
)
from processors.directory.results import Collector, ImportIssue, ImportResult
from schemas.codes import FINESS, RPPS

#: plain (unprefixed) identifier systems seen in the Annuaire Santé / FR Core examples
RPPS_PLAIN = frozenset({"https://rpps.esante.gouv.fr"})
FINESS_PLAIN = frozenset({"https://finess.esante.gouv.fr", "http://finess.sante.gouv.fr"})
#: FR Core extension typing an e-mail ContactPoint (TRE_R256-TypeMessagerie: MSSANTE…)
EMAIL_TYPE_EXT = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-contact-point-email-type"
G15_SYSTEMS = ("G15-ProfessionSante", "urn:oid:1.2.250.1.71.1.2.7")  # NOS profession table
_T = TypeVar("_T")


def from_fhir_bundle(data: bytes) -> ImportResult:
    """Practitioner (RPPS), PractitionerRole (profession, practice, MSSanté mailbox) and
    Organization (FINESS) resources of a FHIR R4 Bundle shaped like the Annuaire Santé
    FHIR API answers (searchset with _include/_revinclude, or a collection)."""
    out = Collector()
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return ImportResult((), (ImportIssue("Bundle", f"not JSON: {exc}"),))
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        return ImportResult((), (ImportIssue("Bundle", "not a FHIR Bundle (resourceType)"),))
    items = doc.get("entry")
    items = [] if items is None else items  # an empty searchset has no entry
    if not isinstance(items, list):
        return ImportResult((), (ImportIssue("Bundle.entry", "must be an array"),))
    index: dict[str, int] = {}
    resources: dict[int, tuple[str, dict[str, Any]]] = {}
    for i, item in enumerate(items):
        res = item.get("resource") if isinstance(item, dict) else None
        if not isinstance(res, dict):
            out.error(f"Bundle.entry[{i}]", "no resource")
            continue
        rtype, rid = res.get("resourceType"), res.get("id")
        resources[i] = (f"Bundle.entry[{i}] ({rtype}/{rid})", res)
        if rid:
            index[f"{rtype}/{rid}"] = i
        if isinstance(item.get("fullUrl"), str):
            index[item["fullUrl"]] = i

    orgs: dict[int, tuple[str | None, str | None]] = {}  # entry → (FINESS, postcode)
    for i, (where, res) in resources.items():
        if res.get("resourceType") == "Organization":
            found = _guarded(where, out, _organization, where, res, out)
            if found is not None:
                orgs[i] = found
    roles: dict[int, list[_Role]] = {}
    used: set[int] = set()  # organisations some role practises in
    for where, res in resources.values():
        if res.get("resourceType") == "PractitionerRole" and res.get("active") is not False:
            role = _guarded(where, out, _role, where, res, index, orgs, out, used)
            if role is not None:
                roles.setdefault(role.practitioner, []).append(role)
    refused = {e.location for e in out.errors}
    for i, (where, res) in resources.items():
        if res.get("resourceType") == "Practitioner":
            _guarded(where, out, _practitioner, where, res, roles.get(i, []), out)
        elif i in orgs and orgs[i][0] is None and i not in used and where not in refused:
            # a practice without FINESS (a GP's cabinet) only locates its practitioners
            out.warnings.append(ImportIssue(where, "no FINESS identifier: not imported"))
    return out.result()


def _guarded(where: str, out: Collector, fn: Callable[..., _T], *args: Any) -> _T | None:
    """Run one resource's mapping; a resource whose JSON does not have the FHIR shape
    (an object where a list is due…) becomes an error for it, not a crash of the import."""
    try:
        return fn(*args)
    except (AttributeError, TypeError, KeyError) as exc:
        out.error(where, f"malformed resource: {exc}")
        return None


@dataclass(frozen=True, slots=True)
class _Role:
    practitioner: int  # bundle entry of the Practitioner
    profession: str | None
    specialty: str | None
    mailbox: str | None
    finess: str | None
    postcode: str | None


_NO_ROLE = _Role(-1, None, None, None, None, None)


def _identifiers(res: dict[str, Any]) -> list[tuple[str, str]]:
    ids = res.get("identifier") or []
    return [
        (str(i.get("system", "")), str(i.get("value", "")).strip())
        for i in ids
        if isinstance(i, dict)
    ]


def _finess_of(idents: Iterable[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(FINESS, problem): idNatStruct "1" + FINESS, or a plain FINESS system. Other
    idNatStruct prefixes ("3" + SIRET, "4" + RPPS rang…) are not FINESS, not errors."""
    for system, value in idents:
        if system == FINESS and value.startswith("1"):
            if valid_finess(value[1:]):
                return value[1:], None
            return None, f"idNatStruct {value!r} is not '1' + 9-character FINESS"
        if system in FINESS_PLAIN:
            if valid_finess(value):
                return value, None
            return None, f"FINESS must be 9 characters, got {value!r}"
    return None, None


def _organization(where: str, res: dict[str, Any], out: Collector) -> tuple[str | None, str | None]:
    postcode = _postcode(where, res.get("address"), out)
    finess, problem = _finess_of(_identifiers(res))
    if problem:
        out.error(where, problem)
    if finess is None:
        return None, postcode
    try:
        org = Organization(
            finess=finess,
            name=str(res.get("name") or ""),
            mailbox=_mailbox(res.get("telecom")),
            postcode=postcode,
        )
    except InvalidEntry as exc:
        out.error(where, str(exc))
        return finess, postcode
    out.add(where, org)
    return finess, postcode


def _resolve(ref: Any, index: dict[str, int]) -> int | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    text = ref["reference"].split("/_history/")[0]
    if text in index:
        return index[text]
    tail = "/".join(text.rstrip("/").split("/")[-2:])  # absolute URL → "Type/id"
    return index.get(tail)


def _role(
    where: str,
    res: dict[str, Any],
    index: dict[str, int],
    orgs: dict[int, tuple[str | None, str | None]],
    out: Collector,
    used: set[int],
) -> _Role | None:
    target = _resolve(res.get("practitioner"), index)
    if target is None:
        ref = (res.get("practitioner") or {}).get("reference", "nothing")
        out.error(f"{where}.practitioner", f"{ref} is not a Practitioner of the bundle")
        return None
    finess = postcode = None
    org_ref = res.get("organization")
    if isinstance(org_ref, dict):
        org_at = _resolve(org_ref, index)
        if org_at in orgs:
            used.add(org_at)
            finess, postcode = orgs[org_at]
        elif isinstance(org_ref.get("identifier"), dict):  # logical reference by FINESS
            finess = _finess_of(_identifiers({"identifier": [org_ref["identifier"]]}))[0]
        if org_at not in orgs and finess is None:
            out.warnings.append(
                ImportIssue(
                    f"{where}.organization",
                    f"{org_ref.get('reference')} not in the bundle: practice FINESS unknown",
                )
            )
    specialty = None
    for concept in res.get("specialty") or []:
        specialty = specialty or _concept_text(concept)
    return _Role(
        practitioner=target,
        profession=_profession(res.get("code") or []),
        specialty=specialty,
        mailbox=_mailbox(res.get("telecom")),
        finess=finess,
        postcode=postcode,
    )


def _practitioner(where: str, res: dict[str, Any], roles: list[_Role], out: Collector) -> None:
    rpps = _rpps_of(where, _identifiers(res), out)
    if rpps is None:
        return
    family, given = _name(res.get("name"))
    quals = [q.get("code") for q in res.get("qualification") or [] if isinstance(q, dict)]
    # one practice per professional: the first active role with a mailbox, else the first
    role = next((r for r in roles if r.mailbox), roles[0] if roles else _NO_ROLE)
    try:
        entry = Professional(
            rpps=rpps,
            family=family,
            given=given,
            profession=role.profession or _profession(quals),
            specialty=role.specialty,
            mailbox=role.mailbox or _mailbox(res.get("telecom")),
            finess=role.finess,
            postcode=role.postcode or _postcode(where, res.get("address"), out),
        )
    except InvalidEntry as exc:
        out.error(where, str(exc))
        return
    out.add(where, entry)


def _rpps_of(where: str, idents: list[tuple[str, str]], out: Collector) -> str | None:
    found: set[str] = set()
    adeli = False
    for system, value in idents:
        if system == RPPS:  # idNatPs: "8" + RPPS, or "0" + ADELI
            if value.startswith("8") and valid_rpps(value[1:]):
                found.add(value[1:])
            elif value.startswith("0"):
                adeli = True
            else:
                out.error(where, f"idNatPs {value!r} is neither '8' + 11-digit RPPS nor ADELI")
                return None
        elif system in RPPS_PLAIN:
            if not valid_rpps(value):
                out.error(where, f"RPPS must be 11 digits, got {value!r}")
                return None
            found.add(value)
    if len(found) > 1:
        out.error(where, f"conflicting RPPS identifiers {sorted(found)}")
        return None
    if found:
        return found.pop()
    if adeli:
        out.warnings.append(ImportIssue(where, "ADELI-only professional (no RPPS): skipped"))
    else:
        out.error(where, f"no RPPS identifier ({RPPS} '8'+RPPS or https://rpps.esante.gouv.fr)")
    return None


def _name(names: Any) -> tuple[str, str]:
    if not isinstance(names, list) or not names:
        return "", ""
    usable = [n for n in names if isinstance(n, dict)]
    best = next((n for n in usable if n.get("use") == "usual"), None)
    best = best or next((n for n in usable if n.get("use") == "official"), None)
    best = best or (usable[0] if usable else {})
    given = " ".join(str(g) for g in best.get("given") or [])
    return str(best.get("family") or ""), given


def _profession(concepts: list[Any]) -> str | None:
    for concept in concepts:
        for coding in concept.get("coding") or [] if isinstance(concept, dict) else []:
            system = str(coding.get("system", ""))
            if any(s in system for s in G15_SYSTEMS) and coding.get("code"):
                return str(coding["code"])
    return None


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding["code"])
    return None


def _mailbox(telecoms: Any) -> str | None:
    """The MSSanté address: only MSSANTE-typed e-mails when the resource types its e-mails
    (the FR Core extension), any e-mail when it types none (older or simpler exports)."""
    emails = [
        t
        for t in telecoms or []
        if isinstance(t, dict)
        and t.get("system") == "email"
        and t.get("value")
        and t.get("use") != "old"
        and not (t.get("period") or {}).get("end")
    ]
    typed = [(t, _email_type(t)) for t in emails]
    if any(kind is not None for _, kind in typed):
        mss = [t for t, kind in typed if kind == "MSSANTE"]
        return str(mss[0]["value"]).strip() if mss else None
    return str(emails[0]["value"]).strip() if emails else None


def _email_type(telecom: dict[str, Any]) -> str | None:
    for ext in telecom.get("extension") or []:
        if str(ext.get("url", "")).split("|")[0] == EMAIL_TYPE_EXT:
            return str((ext.get("valueCoding") or {}).get("code") or "")
    return None


def _postcode(where: str, addresses: Any, out: Collector) -> str | None:
    for addr in addresses or []:
        code = "".join(str((addr or {}).get("postalCode") or "").split())
        if code:
            if len(code) == 5 and code.isdigit():
                return code
            out.warnings.append(ImportIssue(where, f"postcode {code!r} ignored (not 5 digits)"))
    return None

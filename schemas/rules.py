"""CareBus rules that FHIR structural validation does not check.

fhir.resources proves the JSON has the shape of R4 resources; it does not know that a
French practitioner is identified by RPPS, that an INS carries a control key, that
`Task.status` is bound to a value set, or that `referral.accepted` must carry an accepted
Task. Those are the rules here. They run on the plain dict, before (and much faster
than) the structural validation, and must never raise on malformed input: every access
is type-checked, every finding is an `Issue` with a FHIRPath-like expression.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from schemas.codes import (
    EXT_SHARING_OPPOSITION,
    FINESS,
    INS_NIR,
    INS_NIR_TEST,
    INS_SYSTEMS,
    LOINC,
    RPPS,
    DocType,
    EventType,
)
from schemas.outcome import Issue, IssueCode

if TYPE_CHECKING:
    from schemas.events import EventSpec

TASK_STATUS = frozenset(
    "draft requested received accepted rejected ready cancelled in-progress on-hold failed "
    "completed entered-in-error".split()
)
REQUEST_INTENT = frozenset(
    "proposal plan directive order original-order reflex-order filler-order instance-order "
    "option".split()
)
TASK_INTENT = frozenset({"unknown"}) | (REQUEST_INTENT - {"directive"})
REQUEST_PRIORITY = frozenset({"routine", "urgent", "asap", "stat"})
GENDER = frozenset({"male", "female", "other", "unknown"})
ENCOUNTER_STATUS = frozenset(
    "planned arrived triaged in-progress onleave finished cancelled entered-in-error "
    "unknown".split()
)
EVENT_STATUS = frozenset(
    "preparation in-progress not-done on-hold stopped completed entered-in-error unknown".split()
)
REQUEST_STATUS = frozenset(
    "draft active on-hold revoked completed entered-in-error unknown".split()
)
DOCREF_STATUS = frozenset({"current", "superseded", "entered-in-error"})
DOC_TYPES = frozenset(d.value for d in DocType)

_RPPS_VALUE = re.compile(r"8\d{11}")
_FINESS_VALUE = re.compile(r"1[0-9A-Z]{9}")
_NIR = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")


def nir_key(nir13: str) -> int:
    """Control key of the first 13 chars of a NIR: 97 - (n mod 97), Corsica 2A→19, 2B→18."""
    digits = nir13.replace("2A", "19", 1) if nir13[5:7] == "2A" else nir13
    digits = digits.replace("2B", "18", 1) if nir13[5:7] == "2B" else digits
    return 97 - int(digits) % 97


def nir_is_valid(value: str) -> bool:
    """True for a 15-char NIR whose last two digits are its control key."""
    return bool(_NIR.fullmatch(value)) and nir_key(value[:13]) == int(value[13:])


def is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def is_one_of(value: object, allowed: frozenset[str] | dict[str, object]) -> bool:
    """Membership that never raises: JSON arrays/objects are unhashable, and a mutated
    message must get an Issue, not a TypeError."""
    return isinstance(value, str) and value in allowed


def as_list(value: object) -> list:
    return value if isinstance(value, list) else []


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def first(value: object) -> object:
    """First item of a JSON array, None when it is not a non-empty array."""
    return value[0] if isinstance(value, list) and value else None


@dataclass(slots=True)
class RuleContext:
    """One message under validation: its entries indexed, and the issues found so far."""

    event: EventType
    spec: EventSpec
    bundle: dict
    resources: list[dict | None]
    by_ref: dict[str, int]
    issues: list[Issue] = field(default_factory=list)
    focus: int | None = None
    sender: int | None = None

    def at(self, index: int) -> str:
        return f"Bundle.entry[{index}].resource"

    def fail(self, code: IssueCode, expression: str, diagnostics: str) -> None:
        self.issues.append(Issue(code, diagnostics, expression))

    def resolve(self, reference: object) -> int | None:
        return self.by_ref.get(reference) if isinstance(reference, str) else None

    def type_of(self, index: int | None) -> str | None:
        res = self.resources[index] if index is not None else None
        return res.get("resourceType") if res else None

    def indexes(self, resource_type: str) -> list[int]:
        return [
            i for i, r in enumerate(self.resources) if r and r.get("resourceType") == resource_type
        ]


def _code(ctx: RuleContext, res: dict, at: str, name: str, allowed: frozenset[str]) -> None:
    value = res.get(name)
    if value is not None and not is_one_of(value, allowed):
        ctx.fail(
            IssueCode.CODE_INVALID,
            f"{at}.{name}",
            f"{res.get('resourceType')}.{name} {value!r} is not in its value set "
            f"({', '.join(sorted(allowed))})",
        )


def _patient(ctx: RuleContext, i: int, res: dict) -> None:
    at = ctx.at(i)
    ids = as_list(res.get("identifier"))
    usable, ins_seen = False, False
    for j, ident in enumerate(ids):
        ident = as_dict(ident)
        system, value = ident.get("system"), ident.get("value")
        if is_one_of(system, INS_SYSTEMS):
            ins_seen = True
            if not isinstance(value, str) or len(value) != 15:
                ctx.fail(IssueCode.VALUE, f"{at}.identifier[{j}].value", "an INS is 15 characters")
            elif system in (INS_NIR, INS_NIR_TEST) and not nir_is_valid(value):
                ctx.fail(
                    IssueCode.VALUE,
                    f"{at}.identifier[{j}].value",
                    "INS-NIR control key mismatch: the last two digits must be 97 - (first 13 "
                    "digits mod 97), Corsica 2A/2B counted as 19/18",
                )
            else:
                usable = True
        elif is_text(system) and is_text(value):
            usable = True
    if not usable and not ins_seen:
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.identifier",
            f"Patient needs an INS identifier (system {INS_NIR}) or a local identifier "
            "with a system and a value",
        )
    _code(ctx, res, at, "gender", GENDER)
    _birth_date(ctx, res.get("birthDate"), at)
    for j, ext in enumerate(as_list(res.get("extension"))):
        ext = as_dict(ext)
        if ext.get("url") == EXT_SHARING_OPPOSITION and not isinstance(
            ext.get("valueBoolean"), bool
        ):
            ctx.fail(
                IssueCode.VALUE,
                f"{at}.extension[{j}].valueBoolean",
                "sharing opposition is a valueBoolean",
            )


def _birth_date(ctx: RuleContext, value: object, at: str) -> None:
    """A birth date after tomorrow (any time zone's today) is a keying error: with it the
    INS traits no longer match the national teleservice and the patient is misfiled."""
    if not isinstance(value, str) or len(value) != 10:
        return  # partial dates (1950, 1950-03) are legal; the format is judged elsewhere
    try:
        born = date.fromisoformat(value)
    except ValueError:
        return
    if born > date.today() + timedelta(days=1):
        ctx.fail(IssueCode.VALUE, f"{at}.birthDate", f"birth date {value} is in the future")


def _national_id(
    ctx: RuleContext, i: int, res: dict, system: str, pattern: re.Pattern[str], what: str
) -> None:
    at = ctx.at(i)
    ids = [(j, as_dict(x)) for j, x in enumerate(as_list(res.get("identifier")))]
    mine = [(j, x) for j, x in ids if x.get("system") == system]
    kind = res.get("resourceType")
    if not ids:
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.identifier",
            f"{kind} must have a {what} identifier (system {system})",
        )
    elif not mine:
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.identifier[0].system",
            f"{kind} must have a {what} identifier (system {system}); "
            f"found system {ids[0][1].get('system')!r}",
        )
    for j, ident in mine:
        value = ident.get("value")
        if not isinstance(value, str) or not pattern.fullmatch(value):
            ctx.fail(
                IssueCode.VALUE,
                f"{at}.identifier[{j}].value",
                f"a {what} identifier value is {pattern.pattern!r}, got {value!r}",
            )


def _practitioner(ctx: RuleContext, i: int, res: dict) -> None:
    _national_id(ctx, i, res, RPPS, _RPPS_VALUE, 'RPPS ("8" + 11 digits)')


def _organization(ctx: RuleContext, i: int, res: dict) -> None:
    _national_id(ctx, i, res, FINESS, _FINESS_VALUE, 'FINESS ("1" + 9 characters)')


def _role(ctx: RuleContext, i: int, res: dict) -> None:
    for j, tel in enumerate(as_list(res.get("telecom"))):
        tel = as_dict(tel)
        if tel.get("system") == "email" and "@" not in str(tel.get("value", "")):
            ctx.fail(
                IssueCode.VALUE,
                f"{ctx.at(i)}.telecom[{j}].value",
                "an email ContactPoint needs an address",
            )


def _document(ctx: RuleContext, i: int, res: dict) -> None:
    at = ctx.at(i)
    _code(ctx, res, at, "status", DOCREF_STATUS)
    codings = [
        (k, as_dict(c)) for k, c in enumerate(as_list(as_dict(res.get("type")).get("coding")))
    ]
    loinc = [(k, c) for k, c in codings if c.get("system") == LOINC]
    if not loinc:
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.type",
            f"DocumentReference.type needs a LOINC coding ({', '.join(DOC_TYPES)})",
        )
    elif not any(is_one_of(c.get("code"), DOC_TYPES) for _, c in loinc):
        k = loinc[0][0]
        ctx.fail(
            IssueCode.CODE_INVALID,
            f"{at}.type.coding[{k}].code",
            f"document type must be one of {', '.join(sorted(DOC_TYPES))}",
        )
    content = as_list(res.get("content"))
    if not content:
        ctx.fail(IssueCode.REQUIRED, f"{at}.content", "DocumentReference.content is required")
    for k, item in enumerate(content):
        _attachment(ctx, as_dict(as_dict(item).get("attachment")), f"{at}.content[{k}].attachment")


def _attachment(ctx: RuleContext, att: dict, at: str) -> None:
    data = att.get("data")
    if data is None:
        return
    if not is_text(att.get("contentType")):
        ctx.fail(
            IssueCode.REQUIRED,
            f"{at}.contentType",
            "an attachment with data needs a contentType (att-1)",
        )
    try:
        raw = (
            base64.b64decode("".join(data.split()), validate=True)
            if isinstance(data, str)
            else None
        )
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        ctx.fail(IssueCode.VALUE, f"{at}.data", "attachment data is not valid base64")
        return
    size = att.get("size")
    if size is not None and size != len(raw):
        ctx.fail(
            IssueCode.VALUE,
            f"{at}.size",
            f"attachment size {size!r} does not match the data ({len(raw)} bytes)",
        )
    digest = att.get("hash")
    sha1 = hashlib.sha1(raw, usedforsecurity=False).digest()  # FHIR Attachment.hash is SHA-1
    if digest is not None and digest != base64.b64encode(sha1).decode():
        ctx.fail(
            IssueCode.VALUE, f"{at}.hash", "attachment hash is not the base64 SHA-1 of the data"
        )


def _bindings(*pairs: tuple[str, frozenset[str]]) -> Callable[[RuleContext, int, dict], None]:
    def check(ctx: RuleContext, i: int, res: dict) -> None:
        for name, allowed in pairs:
            _code(ctx, res, ctx.at(i), name, allowed)

    return check


RESOURCE_RULES: dict[str, Callable[[RuleContext, int, dict], None]] = {
    "Patient": _patient,
    "Practitioner": _practitioner,
    "Organization": _organization,
    "PractitionerRole": _role,
    "DocumentReference": _document,
    "Task": _bindings(
        ("status", TASK_STATUS), ("intent", TASK_INTENT), ("priority", REQUEST_PRIORITY)
    ),
    "ServiceRequest": _bindings(
        ("status", REQUEST_STATUS), ("intent", REQUEST_INTENT), ("priority", REQUEST_PRIORITY)
    ),
    "Encounter": _bindings(("status", ENCOUNTER_STATUS)),
    "Communication": _bindings(("status", EVENT_STATUS), ("priority", REQUEST_PRIORITY)),
    "CommunicationRequest": _bindings(("status", REQUEST_STATUS), ("priority", REQUEST_PRIORITY)),
}

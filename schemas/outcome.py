"""Precise, machine-readable refusals: every rejected input says which field broke which rule.

The same `Issue` travels to an HTTP caller (as a FHIR OperationOutcome), to an HL7 sender
(as an ERR segment) and to the rejected-input topic (as a header), so it is a plain value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class IssueCode(StrEnum):
    """FHIR `issue-type` codes used by CareBus (subset of the R4 value set)."""

    STRUCTURE = "structure"  # not parseable / wrong shape
    REQUIRED = "required"  # a required element is missing
    VALUE = "value"  # an element has a wrong value
    INVARIANT = "invariant"  # a business rule is broken
    CODE_INVALID = "code-invalid"  # a code is not in its binding
    NOT_SUPPORTED = "not-supported"  # e.g. unknown event type
    TOO_LONG = "too-long"  # size limit
    BUSINESS_RULE = "business-rule"  # e.g. illegal state transition
    CONFLICT = "conflict"
    SECURITY = "security"
    FORBIDDEN = "forbidden"
    TRANSIENT = "transient"  # broker unavailable: retry later
    DUPLICATE = "duplicate"
    PROCESSING = "processing"
    INFORMATIONAL = "informational"  # with severity information: an acknowledgement


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in an input.

    `expression` is a FHIRPath-like location (`Bundle.entry[2].resource.identifier[0].system`)
    or, for HL7 v2, a segment/field location (`PID-3`).
    """

    code: IssueCode
    diagnostics: str
    expression: str | None = None
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.expression}: " if self.expression else ""
        return f"{where}{self.diagnostics} [{self.code}]"


class ValidationFailed(Exception):
    """Raised by validators; carries every issue found, not only the first."""

    def __init__(self, issues: Iterable[Issue]) -> None:
        self.issues: tuple[Issue, ...] = tuple(issues)
        super().__init__("; ".join(str(i) for i in self.issues) or "invalid input")

    @property
    def reason(self) -> str:
        """A one-line summary for headers and logs (never contains patient data)."""
        return str(self)


def operation_outcome(issues: Iterable[Issue], *, outcome_id: str | None = None) -> dict:
    """Render issues as a FHIR R4 OperationOutcome resource (plain JSON dict)."""
    out: dict = {"resourceType": "OperationOutcome"}
    if outcome_id:
        out["id"] = outcome_id
    out["issue"] = [
        {
            "severity": i.severity,
            "code": str(i.code),
            "diagnostics": i.diagnostics,
            **({"expression": [i.expression]} if i.expression else {}),
        }
        for i in issues
    ]
    if not out["issue"]:
        out["issue"] = [{"severity": "information", "code": "informational", "diagnostics": "ok"}]
    return out


def fhirpath(root: str, loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a FHIRPath-like expression:
    ('entry', 1, 'resource', 'status') → Bundle.entry[1].resource.status.

    pydantic's own tags (union members such as 'function-after[…]', 'root') are dropped
    and fhir.resources' `__ext` suffix (primitive extensions) removed, so a sender sees
    the element it wrote."""
    out = [root]
    for part in loc:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif isinstance(part, str) and part.isidentifier() and part != "root":
            out.append(f".{part.removesuffix('__ext')}")
    return "".join(out)

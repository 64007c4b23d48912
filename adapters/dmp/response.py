"""The record store's answer to an ITI-65 transaction, classified for the DMP adapter.

Three outcomes matter to an at-least-once sender: the document was created; it was
already there (the conditional create matched: this was a redelivery, success); or
the store refused it, in which case the adapter needs the reasons (OperationOutcome
issues, kept as `schemas.outcome.Issue`) and whether retrying can help (5xx, 429,
`transient`) or the item must go to the dead-letter topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from schemas.outcome import Issue, IssueCode

_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9.-]{1,64}(?:/_history/[^/]+)?/?$")


class FilingOutcome(StrEnum):
    CREATED = "created"
    ALREADY_EXISTS = "already-exists"  # conditional create matched: a redelivery
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EntryResult:
    status: int
    location: str = ""

    @property
    def resource_type(self) -> str:
        """Type named by the location (relative or absolute, with or without _history)."""
        match = _LOCATION.search(self.location)
        return match.group(1) if match else ""


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """What the record store did with an ITI-65 transaction."""

    outcome: FilingOutcome
    entries: tuple[EntryResult, ...] = ()
    errors: tuple[Issue, ...] = ()
    retryable: bool = False  # 5xx / 429 / transient: try again; otherwise dead-letter

    @property
    def ok(self) -> bool:
        return self.outcome is not FilingOutcome.FAILED

    @property
    def locations(self) -> tuple[str, ...]:
        return tuple(e.location for e in self.entries if e.location)


def _status(text: object) -> int:
    try:
        return int(str(text).strip().split(" ", 1)[0])
    except ValueError:
        return 0


def _issues(outcome: object) -> list[Issue]:
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return []
    out = []
    for raw in outcome.get("issue") or []:
        if not isinstance(raw, dict) or raw.get("severity") not in ("error", "fatal"):
            continue
        try:
            code = IssueCode(raw.get("code"))
        except ValueError:
            code = IssueCode.PROCESSING
        where = raw.get("expression") or raw.get("location") or [None]
        text = raw.get("diagnostics") or (raw.get("details") or {}).get("text") or str(code)
        out.append(
            Issue(
                code=code,
                diagnostics=str(text)[:500],
                expression=where[0] if isinstance(where, list) else None,
            )
        )
    return out


def parse_transaction_response(resp: dict, *, http_status: int | None = None) -> TransactionResult:
    """Classify a transaction-response Bundle or an OperationOutcome.

    201 on the DocumentReference → created; 200 (the conditional create found it) or
    412 (it found several) → already-exists, the idempotent redelivery case; any error
    → failed, with the OperationOutcome issues, retryable for 5xx/429/transient.
    """
    if not isinstance(resp, dict):
        return TransactionResult(
            FilingOutcome.FAILED,
            errors=(Issue(IssueCode.STRUCTURE, "response is not a FHIR resource"),),
            retryable=True,
        )
    if resp.get("resourceType") == "OperationOutcome":
        issues = tuple(_issues(resp)) or (Issue(IssueCode.PROCESSING, "transaction refused"),)
        if http_status == 412 or any(i.code is IssueCode.DUPLICATE for i in issues):
            return TransactionResult(FilingOutcome.ALREADY_EXISTS, errors=issues)
        retry = (
            (http_status or 0) >= 500
            or http_status == 429
            or any(i.code is IssueCode.TRANSIENT for i in issues)
        )
        return TransactionResult(FilingOutcome.FAILED, errors=issues, retryable=retry)
    if resp.get("resourceType") != "Bundle" or resp.get("type") != "transaction-response":
        return TransactionResult(
            FilingOutcome.FAILED,
            errors=(Issue(IssueCode.STRUCTURE, "expected a transaction-response Bundle"),),
        )
    entries: list[EntryResult] = []
    errors: list[Issue] = []
    for raw in resp.get("entry") or []:
        response = raw.get("response") if isinstance(raw, dict) else None
        if not isinstance(response, dict):
            continue
        status = _status(response.get("status"))
        entries.append(EntryResult(status=status, location=str(response.get("location") or "")))
        if status >= 400 and status != 412:
            errors.extend(
                _issues(response.get("outcome"))
                or [Issue(IssueCode.PROCESSING, f"entry refused with HTTP {status}")]
            )
    if errors:
        retry = any(e.status >= 500 or e.status == 429 for e in entries)
        return TransactionResult(FilingOutcome.FAILED, tuple(entries), tuple(errors), retry)
    docs = [e for e in entries if e.resource_type == "DocumentReference"] or entries
    if docs and all(e.status in (200, 412) for e in docs):
        return TransactionResult(FilingOutcome.ALREADY_EXISTS, tuple(entries))
    return TransactionResult(FilingOutcome.CREATED, tuple(entries))

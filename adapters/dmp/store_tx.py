"""ITI-65 Provide Document Bundle, the record's side: check it, then file it atomically.

Why a separate module: what the store accepts is the contract the DMP adapter is tested
against, so the rules live in plain functions over the JSON (no HTTP, no SQL strings)
that unit tests can drive. The answer is decided in this order:
- 400 when the body is not a FHIR R4 Bundle (`fhir.resources.R4B` validation), with the
  FHIRPath of each broken element;
- 422 when it is a Bundle but not an MHD Provide Document Bundle (not a transaction,
  not POST, no SubmissionSet List, a DocumentReference without masterIdentifier / patient
  identifier / type, an attachment that does not point at a Binary of the bundle or whose
  size / SHA-1 do not match the bytes);
- 409 `duplicate` when a DocumentReference without `ifNoneExist` repeats a stored
  masterIdentifier (the XDS uniqueId is unique);
- otherwise a transaction-response: `201` per created entry, `200` with the existing
  location when `ifNoneExist` matched (an at-least-once redelivery files nothing new).
  A Binary only referenced by DocumentReferences that already existed is not stored
  again (no orphan bytes on redelivery): its entry answers `200` with the stored Binary.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

from pydantic import ValidationError

from adapters.bundle_view import to_utc
from adapters.dmp.store_db import DocIndex, Tx
from schemas.outcome import Issue, IssueCode, fhirpath

ACCEPTED = ("List", "DocumentReference", "Binary")
SUBMISSION_SET = "submissionset"
_COND = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)\?identifier=(?P<token>[^&]+)$")


class TxRefused(Exception):
    """The transaction is refused as a whole (nothing was written)."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        super().__init__("; ".join(map(str, issues)))
        self.status = status
        self.issues = issues


def check_structure(bundle: object) -> None:
    """400 unless the body is a FHIR Bundle that validates against the R4B model."""
    from fhir.resources.R4B.bundle import Bundle

    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise TxRefused(
            400, [Issue(IssueCode.STRUCTURE, "expected a FHIR Bundle", "Bundle.resourceType")]
        )
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        issues = [
            Issue(
                IssueCode.STRUCTURE,
                str(err.get("msg", "invalid"))[:300],
                fhirpath("Bundle", err["loc"]),
            )
            for err in exc.errors()[:20]
        ]
        raise TxRefused(400, issues) from None


def parse_conditional(text: str) -> tuple[str, str, str] | None:
    """`DocumentReference?identifier=system|value` → (type, system, value)."""
    match = _COND.match(text.strip())
    if not match:
        return None
    token = unquote(match["token"])
    system, sep, value = token.rpartition("|")
    if not sep or not value:
        return None
    return match["type"], system, value


@dataclass(frozen=True, slots=True)
class _Doc:
    index: int
    binary_url: str
    master: tuple[str, str]


def _decode(data: object) -> bytes | None:
    if not isinstance(data, str):
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def check_mhd(bundle: dict) -> list[Issue]:
    """Every MHD rule the bundle breaks (empty: it may be filed)."""
    issues: list[Issue] = []

    def bad(code: IssueCode, text: str, where: str) -> None:
        issues.append(Issue(code, text, where))

    if bundle.get("type") != "transaction":
        bad(IssueCode.VALUE, "ITI-65 requires a transaction Bundle", "Bundle.type")
    entries = bundle.get("entry") or []
    if not entries:
        bad(IssueCode.REQUIRED, "the Bundle has no entry", "Bundle.entry")
    urls: dict[str, int] = {}
    binaries: dict[str, bytes] = {}
    for i, entry in enumerate(entries):
        at = f"Bundle.entry[{i}]"
        res, req = entry.get("resource") or {}, entry.get("request") or {}
        rtype = res.get("resourceType", "")
        if rtype not in ACCEPTED:
            bad(
                IssueCode.NOT_SUPPORTED,
                f"{rtype or 'no resource'}: ITI-65 files List, DocumentReference and Binary only",
                f"{at}.resource",
            )
        if req.get("method") != "POST":
            bad(IssueCode.NOT_SUPPORTED, "only POST (create) is accepted", f"{at}.request.method")
        elif req.get("url") != rtype:
            bad(IssueCode.VALUE, f"request.url must be {rtype}", f"{at}.request.url")
        if req.get("ifNoneExist") and parse_conditional(req["ifNoneExist"]) is None:
            bad(
                IssueCode.VALUE,
                "ifNoneExist must be Type?identifier=system|value",
                f"{at}.request.ifNoneExist",
            )
        full = entry.get("fullUrl") or ""
        if not full:
            bad(
                IssueCode.REQUIRED,
                "every entry needs a fullUrl (references use it)",
                f"{at}.fullUrl",
            )
        elif full in urls:
            bad(IssueCode.DUPLICATE, f"fullUrl repeats entry {urls[full]}", f"{at}.fullUrl")
        urls[full] = i
        if rtype == "Binary":
            data = _decode(res.get("data"))
            if data is None:
                bad(IssueCode.VALUE, "Binary.data must be base64 content", f"{at}.resource.data")
            else:
                binaries[full] = data
    lists = [
        i for i, e in enumerate(entries) if (e.get("resource") or {}).get("resourceType") == "List"
    ]
    codes = [
        c.get("code")
        for i in lists
        for c in ((entries[i]["resource"].get("code") or {}).get("coding") or [])
    ]
    if len(lists) != 1 or SUBMISSION_SET not in codes:
        bad(
            IssueCode.REQUIRED,
            "exactly one SubmissionSet List (code submissionset) is required",
            "Bundle.entry",
        )
    docs = [_check_document(entries, i, binaries, bad) for i, _ in enumerate(entries)]
    found = [d for d in docs if d is not None]
    if not any(
        (e.get("resource") or {}).get("resourceType") == "DocumentReference" for e in entries
    ):
        bad(IssueCode.REQUIRED, "no DocumentReference to file", "Bundle.entry")
    seen: dict[tuple[str, str], int] = {}
    for doc in found:
        if doc.master in seen:
            bad(
                IssueCode.DUPLICATE,
                f"masterIdentifier repeats entry {seen[doc.master]}",
                f"Bundle.entry[{doc.index}].resource.masterIdentifier",
            )
        seen[doc.master] = doc.index
    for i in lists:
        for j, item in enumerate(entries[i]["resource"].get("entry") or []):
            ref = (item.get("item") or {}).get("reference", "")
            if ref not in urls:
                bad(
                    IssueCode.VALUE,
                    f"{ref or 'no reference'} is not an entry of this bundle",
                    f"Bundle.entry[{i}].resource.entry[{j}].item.reference",
                )
    return issues


def _check_document(entries: list, i: int, binaries: dict[str, bytes], bad) -> _Doc | None:
    res = entries[i].get("resource") or {}
    if res.get("resourceType") != "DocumentReference":
        return None
    at = f"Bundle.entry[{i}].resource"
    ok = True
    master = res.get("masterIdentifier") or {}
    if not master.get("system") or not master.get("value"):
        bad(
            IssueCode.REQUIRED,
            "masterIdentifier (system and value) is required",
            f"{at}.masterIdentifier",
        )
        ok = False
    subject = (res.get("subject") or {}).get("identifier") or {}
    if not subject.get("system") or not subject.get("value"):
        bad(
            IssueCode.REQUIRED,
            "subject.identifier (the patient's INS) is required",
            f"{at}.subject.identifier",
        )
        ok = False
    codings = (res.get("type") or {}).get("coding") or []
    if not codings or not codings[0].get("code"):
        bad(IssueCode.REQUIRED, "type.coding (LOINC document type) is required", f"{at}.type")
        ok = False
    if res.get("status") != "current":
        bad(IssueCode.VALUE, "a provided document must be status current", f"{at}.status")
    content = res.get("content") or [{}]
    att = content[0].get("attachment") or {}
    url = att.get("url") or ""
    where = f"{at}.content[0].attachment"
    data = binaries.get(url)
    if data is None:
        bad(
            IssueCode.VALUE,
            "attachment.url must be the fullUrl of a Binary of this bundle",
            f"{where}.url",
        )
        return None
    if isinstance(att.get("size"), int) and att["size"] != len(data):
        bad(
            IssueCode.VALUE,
            f"attachment.size {att['size']} but the Binary has {len(data)} bytes",
            f"{where}.size",
        )
    sha1 = base64.b64encode(hashlib.sha1(data).digest()).decode()  # noqa: S324 - MHD uses SHA-1
    if att.get("hash") and att["hash"] != sha1:
        bad(IssueCode.VALUE, "attachment.hash is not the SHA-1 of the Binary", f"{where}.hash")
    if not ok:
        return None
    return _Doc(i, url, (master["system"], master["value"]))


def _rewrite(node: object, refs: dict[str, str]) -> object:
    """Replace in-bundle references (`reference` values) by the stored Type/id."""
    if isinstance(node, dict):
        return {
            k: refs.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, refs)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite(v, refs) for v in node]
    return node


def _identifiers(res: dict) -> list[tuple[str, str]]:
    found = [res.get("masterIdentifier") or {}, *(res.get("identifier") or [])]
    return [(i["system"], i["value"]) for i in found if i.get("system") and i.get("value")]


def _utc(value: object, default: datetime) -> str:
    try:
        stamp = to_utc(value) if isinstance(value, str) and value else default
    except ValueError:
        stamp = default
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def file_bundle(bundle: dict, tx: Tx, now: datetime) -> dict:
    """File a checked ITI-65 bundle inside `tx`; returns the transaction-response."""
    entries: list[dict] = bundle["entry"]
    stamp = now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    ids: dict[int, str] = {}
    matched: set[int] = set()
    for i, entry in enumerate(entries):
        res, cond = entry["resource"], entry["request"].get("ifNoneExist")
        found = tx.find(*parse_conditional(cond)) if cond else None  # type: ignore[misc]
        if found:
            ids[i] = found
            matched.add(i)
        elif res["resourceType"] == "DocumentReference":
            system, value = res["masterIdentifier"]["system"], res["masterIdentifier"]["value"]
            if tx.find("DocumentReference", system, value):
                where = f"Bundle.entry[{i}].resource.masterIdentifier"
                issue = Issue(IssueCode.DUPLICATE, f"a document {value} is already filed", where)
                raise TxRefused(409, [issue])
    by_url = {e["fullUrl"]: i for i, e in enumerate(entries)}
    # Binaries only referenced by documents that already exist are the stored ones
    users: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        if entry["resource"]["resourceType"] == "DocumentReference":
            url = entry["resource"]["content"][0]["attachment"]["url"]
            users.setdefault(by_url[url], []).append(i)
    for b, docs in users.items():
        if b not in matched and all(d in matched for d in docs):
            stored = tx.binary_of(ids[docs[0]])
            if stored:
                ids[b] = stored
                matched.add(b)
    for i in range(len(entries)):
        ids.setdefault(i, str(uuid.uuid4()))
    refs = {
        e["fullUrl"]: f"{e['resource']['resourceType']}/{ids[i]}" for i, e in enumerate(entries)
    }
    out: list[dict] = []
    for i, entry in enumerate(entries):
        rtype = entry["resource"]["resourceType"]
        location = f"{rtype}/{ids[i]}/_history/1"
        if i in matched:
            out.append({"response": {"status": "200 OK", "location": location}})
            continue
        _store(tx, entries, i, ids, refs, stamp, now)
        out.append(
            {
                "response": {
                    "status": "201 Created",
                    "location": location,
                    "etag": 'W/"1"',
                    "lastModified": stamp,
                }
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "transaction-response",
        "timestamp": stamp,
        "entry": out,
    }


def _store(
    tx: Tx,
    entries: list[dict],
    i: int,
    ids: dict[int, str],
    refs: dict[str, str],
    stamp: str,
    now: datetime,
) -> None:
    res = entries[i]["resource"]
    rtype, rid = res["resourceType"], ids[i]
    if rtype == "Binary":
        tx.put_binary(
            rid, res.get("contentType") or "application/octet-stream", base64.b64decode(res["data"])
        )
        return
    body = _rewrite(dict(res), refs)
    assert isinstance(body, dict)
    body["id"] = rid
    body["meta"] = {**(res.get("meta") or {}), "versionId": "1", "lastUpdated": stamp}
    if rtype == "DocumentReference":
        att = body["content"][0]["attachment"]
        binary_ref = refs[att["url"]]
        att["url"] = binary_ref  # ITI-68: relative to the store's base
        binary_entry = next(
            e for e in entries if e["fullUrl"] == res["content"][0]["attachment"]["url"]
        )
        data = base64.b64decode(binary_entry["resource"]["data"])
        coding = body["type"]["coding"][0]
        subject = body["subject"]["identifier"]
        tx.put_index(
            DocIndex(
                id=rid,
                patient_system=subject["system"],
                patient_value=subject["value"],
                type_system=coding.get("system", ""),
                type_code=coding["code"],
                date=_utc(body.get("date"), now),
                status=body.get("status", "current"),
                binary_id=binary_ref.split("/", 1)[1],
                title=att.get("title") or body.get("description") or "Document",
                content_type=att.get("contentType") or "application/octet-stream",
                size=len(data),
                created=stamp,
            )
        )
    tx.put_resource(rtype, rid, body, stamp)
    for system, value in _identifiers(res):
        if not tx.find(rtype, system, value):
            tx.put_identifier(rtype, system, value, rid)

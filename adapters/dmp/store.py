"""The embedded DMP-like document store: IHE MHD Document Recipient + Responder over HTTP.

Why it exists: with no `dmp.base_url` configured, CareBus still files every letter
somewhere a user can look at (the promise "nothing accepted is lost" includes the
record), and the DMP adapter is tested against a real HTTP server that behaves like
the record: conditional create, transaction-response, OperationOutcome with locations.

Routes (FHIR base = the app root):
- `POST /` ITI-65 Provide Document Bundle (rules and status codes in `store_tx`);
  413 above `max_body_bytes`, 415 for a non-FHIR media type;
- `GET /DocumentReference?patient.identifier=system|value&type=system|code&date=ge…`
  ITI-67 Find Document References → searchset Bundle (newest first, `_count` ≤ 500 a
  page, then a `next` link with `_offset`);
- `GET /DocumentReference/{id}`, `GET /List/{id}`: read;
- `GET /Binary/{id}` ITI-68 Retrieve Document → the exact bytes with their content
  type (a FHIR Binary resource when the caller asks for `application/fhir+json`);
- `GET /_summary?ins=…`: a small JSON list for the demo and the coordinator dashboard.

Security: a bearer token (settings `dmp.token`) protects every route when set;
`embedded_store` refuses to listen beyond loopback without one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.bundle_view import parse_fhir_datetime
from adapters.dmp.store_db import DateBound, DocIndex, DocumentDB
from adapters.dmp.store_tx import TxRefused, check_mhd, check_structure, file_bundle
from adapters.http_outcome import outcome_response as _outcome
from bus.settings import Settings
from schemas.outcome import Issue, IssueCode

log = logging.getLogger("carebus.dmp.store")

FHIR_JSON = "application/fhir+json"
_ACCEPTED = ("application/fhir+json", "application/json")
_PREFIXES = ("eq", "ne", "ge", "gt", "le", "lt")


@dataclass(frozen=True, slots=True)
class DocumentSummary:
    """What the demo and the dashboard show of a filed document (no bytes)."""

    id: str
    type_code: str
    title: str
    date: str
    status: str
    content_type: str
    size: int
    binary_id: str
    master_identifier: str
    filed_at: str


def _fhir(resource: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(resource), status_code=status, media_type=FHIR_JSON)


def _token(value: str) -> tuple[str | None, str]:
    system, sep, code = value.partition("|")
    return (system or None, code) if sep else (None, value)


def _date_bound(raw: str) -> DateBound:
    """`ge2025-03-01` → the precision range of the value, in UTC (dates are Paris days)."""
    op, text = (raw[:2], raw[2:]) if raw[:2] in _PREFIXES else ("eq", raw)
    start = parse_fhir_datetime(text)
    span = {4: timedelta(days=366), 7: timedelta(days=31), 10: timedelta(days=1)}.get(
        len(text), timedelta(seconds=1)
    )
    end = start + span
    if len(text) == 4:
        end = start.replace(year=start.year + 1)
    elif len(text) == 7:
        end = (start + timedelta(days=32)).replace(day=1)

    def fmt(d: datetime) -> str:
        return d.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")

    return DateBound(op, fmt(start), fmt(end))


def summarize(db: DocumentDB, ins: str, *, limit: int = 100) -> list[DocumentSummary]:
    """Documents filed for a patient INS, newest first (the client-facing summary)."""
    return [_summary(idx, res) for idx, res in db.search(patient_value=ins, limit=limit)]


def _summary(idx: DocIndex, res: dict) -> DocumentSummary:
    return DocumentSummary(
        id=idx.id,
        type_code=idx.type_code,
        title=idx.title,
        date=idx.date,
        status=idx.status,
        content_type=idx.content_type,
        size=idx.size,
        binary_id=idx.binary_id,
        master_identifier=(res.get("masterIdentifier") or {}).get("value", ""),
        filed_at=idx.created,
    )


def list_documents(db_path: Path | str, ins: str) -> list[DocumentSummary]:
    """`summarize` from a database file (opens and closes it): for the CLI and the demo."""
    db = DocumentDB(db_path)
    try:
        return summarize(db, ins)
    finally:
        db.close()


def create_store_app(
    db_path: Path | str | DocumentDB,
    *,
    token: str | None = None,
    max_body_bytes: int = 20_000_000,
    base_url: str = "",
) -> Starlette:
    """The store as an ASGI app. `app.state.db` is the `DocumentDB` (close it when done);
    `base_url` only prefixes the `fullUrl`s of search results."""
    db = db_path if isinstance(db_path, DocumentDB) else DocumentDB(db_path)
    digest = hashlib.sha256(token.encode()).digest() if token else None

    def refused(request: Request) -> Response | None:
        if digest is None:
            return None
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            hashlib.sha256(given.strip().encode()).digest(), digest
        )
        if ok:
            return None
        issue = Issue(IssueCode.SECURITY, "a valid bearer token is required")
        return _outcome(401, [issue], {"WWW-Authenticate": 'Bearer realm="carebus-dmp"'})

    async def provide(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _ACCEPTED:
            issue = Issue(IssueCode.NOT_SUPPORTED, f"send {FHIR_JSON}, not {ctype or 'nothing'}")
            return _outcome(415, [issue])
        raw = await _read_limited(request, max_body_bytes)
        if raw is None:
            issue = Issue(IssueCode.TOO_LONG, f"body exceeds {max_body_bytes} bytes", "Bundle")
            return _outcome(413, [issue])
        try:
            bundle = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _outcome(400, [Issue(IssueCode.STRUCTURE, f"not JSON: {exc}"[:300])])
        try:
            check_structure(bundle)
            issues = check_mhd(bundle)
            if issues:
                return _outcome(422, issues)
            now = datetime.now(UTC)
            answer = await asyncio.to_thread(db.transact, lambda tx: file_bundle(bundle, tx, now))
        except TxRefused as exc:
            return _outcome(exc.status, exc.issues)
        except sqlite3.OperationalError as exc:
            # SQLITE_FULL, I/O errors: the transaction rolled back (nothing half-filed) and
            # the sender should retry later, knowing why; the text carries no patient data
            log.error("document store cannot write: %s", exc)
            full = "full" in str(exc).lower()
            why = "storage is full" if full else f"storage error ({exc})"
            text = f"the record's {why}; nothing was filed, retry later"
            issue = Issue(IssueCode.TRANSIENT, text)
            return _outcome(503, [issue], {"Retry-After": "60"})
        return _fhir(answer)

    async def search(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        q = request.query_params
        patient = q.get("patient.identifier") or q.get("subject.identifier")
        if not patient:
            issue = Issue(
                IssueCode.REQUIRED,
                "ITI-67 needs patient.identifier=system|value",
                "patient.identifier",
            )
            return _outcome(400, [issue])
        system, value = _token(patient)
        types = [_token(t) for raw in q.getlist("type") for t in raw.split(",") if t]
        statuses = [s for raw in q.getlist("status") for s in raw.split(",") if s]
        try:
            dates = [_date_bound(d) for d in q.getlist("date")]
            count = max(1, min(int(q.get("_count", "100")), 500))
            offset = max(0, int(q.get("_offset", "0")))
        except ValueError as exc:
            return _outcome(400, [Issue(IssueCode.VALUE, f"bad search value: {exc}"[:300])])
        found = await asyncio.to_thread(
            db.search,
            patient_value=value,
            patient_system=system,
            types=types,
            dates=dates,
            statuses=statuses,
            limit=count + 1,  # one more: is there a next page?
            offset=offset,
        )
        more, found = len(found) > count, found[:count]
        base = base_url.rstrip("/")
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": str(request.url)}],
        }
        if more:  # the next page: the same query from the next offset
            nxt = request.url.include_query_params(_offset=offset + count, _count=count)
            page["link"].append({"relation": "next", "url": str(nxt)})
        elif offset == 0:
            page["total"] = len(found)
        return _fhir(
            {
                **page,
                "entry": [
                    {
                        "fullUrl": f"{base}/DocumentReference/{idx.id}"
                        if base
                        else f"DocumentReference/{idx.id}",
                        "resource": res,
                        "search": {"mode": "match"},
                    }
                    for idx, res in found
                ],
            }
        )

    async def read(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        rtype = request.url.path.strip("/").split("/")[-2]
        res = await asyncio.to_thread(db.resource, rtype, request.path_params["id"])
        if res is None:
            return _outcome(404, [Issue(IssueCode.NOT_SUPPORTED, f"no {rtype} with this id")])
        return _fhir(res)

    async def retrieve(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        rid = request.path_params["id"]
        found = await asyncio.to_thread(db.binary, rid)
        if found is None:
            return _outcome(404, [Issue(IssueCode.NOT_SUPPORTED, "no Binary with this id")])
        content_type, data = found
        if FHIR_JSON in request.headers.get("accept", ""):
            return _fhir(
                {
                    "resourceType": "Binary",
                    "id": rid,
                    "contentType": content_type,
                    "data": base64.b64encode(data).decode(),
                }
            )
        return Response(data, media_type=content_type)

    async def summary(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        ins = request.query_params.get("ins", "")
        docs = await asyncio.to_thread(summarize, db, ins)
        return Response(orjson.dumps([asdict(d) for d in docs]), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/", provide, methods=["POST"]),
            Route("/DocumentReference", search, methods=["GET"]),
            Route("/DocumentReference/{id}", read, methods=["GET"]),
            Route("/List/{id}", read, methods=["GET"]),
            Route("/Binary/{id}", retrieve, methods=["GET"]),
            Route("/_summary", summary, methods=["GET"]),
        ]
    )
    app.state.db = db
    return app


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def store_path(settings: Settings) -> Path:
    """Where the embedded store keeps its database."""
    return settings.data_dir / "dmp" / "store.sqlite3"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def embedded_store(settings: Settings) -> AsyncIterator[str]:
    """Serve the embedded store (settings `dmp.store_*`) until the block exits; yields its
    base URL, which is what the DMP adapter posts to when `dmp.base_url` is empty."""
    from bus.asgi import serve

    dmp = settings.dmp
    token = dmp.token.get_secret_value() if dmp.token else None
    if not _loopback(dmp.store_host) and not token:
        raise ValueError(
            f"refusing to serve the document store on {dmp.store_host} without dmp.token"
        )
    app = create_store_app(store_path(settings), token=token, max_body_bytes=dmp.max_bundle_bytes)
    try:
        async with serve(app, dmp.store_host, dmp.store_port) as port:
            host = f"[{dmp.store_host}]" if ":" in dmp.store_host else dmp.store_host
            yield f"http://{host}:{port}"
    finally:
        app.state.db.close()

"""The FHIR HTTP ingress (ASGI, served by uvicorn): practice software and FHIR hospitals.

Answers, in the order they are decided: 415 wrong media type, 413 too large, 401/403
authentication and authorisation, 400 unparseable, 422 invalid, 409 illegal referral
move, 503 broker unavailable, 202 accepted (only after the durable write). Every refusal
after authentication is kept on care.rejected-input with its reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.fhir_api.auth import ApiClient, AuthError, TokenRegistry, may_publish
from adapters.fhir_api.capability import capability_statement, event_codesystem
from adapters.http_outcome import outcome_response as outcome
from adapters.ingress import Ingress
from bus import metrics
from bus.errors import BrokerUnavailable
from schemas.outcome import Issue, IssueCode, ValidationFailed
from schemas.validate import validate_message

FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = ("application/fhir+json", "application/json")
#: 400 for what cannot be read at all, 422 for what reads but breaks a rule
_UNPARSEABLE = frozenset({IssueCode.STRUCTURE, IssueCode.TOO_LONG})
#: bodies above this are validated in a worker thread: a 2 MB bundle of many small
#: elements costs seconds of model validation, which must not stall the event loop
#: (every other request, and the MLLP listener when it shares the process)
INLINE_VALIDATION_BYTES = 64 * 1024


@dataclass
class ApiContext:
    ingress: Ingress
    tokens: TokenRegistry
    max_body_bytes: int
    base_url: str


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(ctx: ApiContext) -> Starlette:
    def authenticate(request: Request) -> ApiClient | AuthError:
        return ctx.tokens.authenticate(request.headers.get("authorization"))

    def auth_failed(err: AuthError) -> Response:
        hdrs = {"WWW-Authenticate": err.challenge()} if err.status == 401 else None
        return outcome(err.status, [err.issue], hdrs)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        try:
            await ctx.ingress.producer.ping()
        except BrokerUnavailable:
            return JSONResponse({"status": "broker unavailable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        who = authenticate(request)
        if isinstance(who, AuthError):
            return auth_failed(who)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def metadata(_: Request) -> Response:
        # Public on purpose (FHIR/SMART convention): it describes the API, holds no data.
        return Response(orjson.dumps(capability_statement(ctx.base_url)), media_type=FHIR_JSON)

    async def codesystem(_: Request) -> Response:
        return Response(orjson.dumps(event_codesystem()), media_type=FHIR_JSON)

    async def process_message(request: Request) -> Response:
        started = time.perf_counter()
        try:
            return await _process(request)
        finally:
            metrics.ACK_SECONDS.labels("http").observe(time.perf_counter() - started)

    async def _process(request: Request) -> Response:
        who = authenticate(request)
        if isinstance(who, AuthError):
            metrics.REJECTED.labels("http", "security").inc()
            return auth_failed(who)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ACCEPTED_TYPES:
            issue = Issue(
                IssueCode.NOT_SUPPORTED,
                f"content type {ctype or '(none)'} not accepted; send {FHIR_JSON}",
            )
            return await refuse(415, b"", who, [issue], ctype)
        try:
            raw = await _read_body(request, ctx.max_body_bytes)
        except _TooLarge:
            issue = Issue(
                IssueCode.TOO_LONG, f"body exceeds the {ctx.max_body_bytes}-byte limit", "Bundle"
            )
            return await refuse(413, b"", who, [issue], ctype)
        try:
            if len(raw) > INLINE_VALIDATION_BYTES:
                msg = await asyncio.to_thread(validate_message, raw, max_bytes=ctx.max_body_bytes)
            else:
                msg = validate_message(raw, max_bytes=ctx.max_body_bytes)
        except ValidationFailed as exc:
            status = 400 if all(i.code in _UNPARSEABLE for i in exc.issues) else 422
            return await refuse(status, raw, who, list(exc.issues), ctype)
        denied = may_publish(who, msg.event_type.value, _acting_for(msg.sender_ids))
        if denied is not None:
            return await refuse(denied.status, raw, who, [denied.issue], ctype)
        late_or_early = ctx.ingress.check_clock(msg)
        if late_or_early is not None:
            return await refuse(422, raw, who, [late_or_early], ctype)
        reused = ctx.ingress.check_reuse(msg)
        if reused is not None:
            return await refuse(409, raw, who, [reused], ctype)
        refused = ctx.ingress.check_referral(msg)
        if refused is not None:
            issue = Issue(
                IssueCode.BUSINESS_RULE, refused.reason, "Bundle.entry.resource.ofType(Task).status"
            )
            return await refuse(409, raw, who, [issue], ctype)
        try:
            accepted = await ctx.ingress.accept(
                msg, channel="http", traceparent=request.headers.get("traceparent")
            )
        except BrokerUnavailable:
            return unavailable()
        info = Issue(
            IssueCode.INFORMATIONAL,
            f"accepted as event {accepted.event_id} on {accepted.topic}"
            + (" (retransmission, already accepted)" if accepted.duplicate else ""),
            severity="information",
        )
        return outcome(
            202,
            [info],
            {
                "X-CareBus-Event-Id": accepted.event_id,
                "Content-Location": f"{ctx.base_url}/events/{accepted.event_id}",
            },
        )

    async def refuse(
        status: int, raw: bytes, who: ApiClient, issues: list[Issue], ctype: str
    ) -> Response:
        try:
            await ctx.ingress.reject(
                raw,
                channel="http",
                sender=f"client:{who.id}",
                issues=issues,
                content_type=ctype or "unknown",
            )
        except BrokerUnavailable:
            return unavailable()  # cannot keep the refusal: the sender must retry
        return outcome(status, issues)

    def unavailable() -> Response:
        issue = Issue(IssueCode.TRANSIENT, "the bus cannot store messages right now; retry later")
        return outcome(503, [issue], {"Retry-After": "5"})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
            Route("/fhir/metadata", metadata),
            Route("/fhir/CodeSystem/carebus-event", codesystem),
            Route("/fhir/$process-message", process_message, methods=["POST"]),
        ]
    )


def _acting_for(sender_ids: tuple[tuple[str, str], ...]) -> list[str]:
    return [value for _system, value in sender_ids]

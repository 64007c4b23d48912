"""Subscription management over FHIR REST, to mount under `/fhir`.

Routes (`prefix` = "/fhir"):
- `GET  /fhir/SubscriptionTopic[/{id}]` — the R4B SubscriptionTopics (public, like
  /metadata: they describe the API and hold no data);
- `GET  /fhir/Subscription/$topic-list` — the backport IG's R4 topic discovery;
- `POST /fhir/Subscription` — create (backport profile) → 201 + Location, status
  `active` once the handshake was answered 2xx, `error` otherwise; the answer is the
  only place the signing secret is shown;
- `GET  /fhir/Subscription` (the caller's), `GET|DELETE /fhir/Subscription/{id}`;
- `GET  /fhir/Subscription/{id}/$status` — searchset with the status (query-status);
- `GET  /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`
  — a `query-event` history Bundle with the events still kept (see `store`).

Why `authorize` is a parameter: the API's callers are already known to the FHIR
ingress (`http.clients`), so the composition root passes a callable `request → client
id | None` (`token_authorizer` builds one from settings: clients with
`subscriptions = true`). A subscription is visible only to the client that created it
(others get 404, not 403: they learn nothing).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from adapters.eparcours.notify import notification, status_search
from adapters.eparcours.registry import Content, SubscriptionRecord
from adapters.eparcours.resource import SubscriptionInvalid, to_fhir
from adapters.eparcours.service import SubscriptionService
from adapters.eparcours.topics import BY_ID, subscription_topic, topic_list, topics_bundle
from adapters.fhir_api.auth import TokenRegistry
from adapters.http_outcome import outcome_response as _outcome
from bus.errors import BrokerUnavailable
from bus.settings import ApiClient
from schemas.outcome import Issue, IssueCode

FHIR_JSON = "application/fhir+json"
Authorizer = Callable[[Request], Awaitable[str | None] | str | None]


def _fhir(resource: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(resource), status, headers=headers, media_type=FHIR_JSON)


def _not_found() -> Response:
    return _outcome(404, [Issue(IssueCode.NOT_SUPPORTED, "no such subscription")])


def token_authorizer(clients: Iterable[ApiClient]) -> Authorizer:
    """Bearer tokens of `http.clients`; only clients with `subscriptions = true` pass."""
    allowed = [c for c in clients if c.subscriptions]
    registry = TokenRegistry(allowed)

    def authorize(request: Request) -> str | None:
        found = registry.authenticate(request.headers.get("authorization"))
        return found.id if isinstance(found, ApiClient) else None

    return authorize


def subscription_routes(
    service: SubscriptionService, authorize: Authorizer, *, prefix: str = "/fhir"
) -> list[BaseRoute]:
    """The routes, with `prefix` included (append them to an existing app's routes)."""
    settings = service.settings

    async def caller(request: Request) -> str | None:
        found = authorize(request)
        return await found if inspect.isawaitable(found) else found  # type: ignore[return-value]

    async def owned(request: Request) -> SubscriptionRecord | Response:
        client = await caller(request)
        if client is None:
            return _outcome(
                401,
                [Issue(IssueCode.SECURITY, "a valid bearer token is required")],
                {"WWW-Authenticate": 'Bearer realm="carebus"'},
            )
        record = service.store.get(request.path_params["id"])
        if record is None or record.owner != client:
            return _not_found()
        return record

    async def topics(_: Request) -> Response:
        return _fhir(topics_bundle(service.base_url))

    async def topic(request: Request) -> Response:
        found = BY_ID.get(request.path_params["id"])
        if found is None:
            return _outcome(404, [Issue(IssueCode.NOT_SUPPORTED, "no such SubscriptionTopic")])
        return _fhir(subscription_topic(found))

    async def listing(_: Request) -> Response:
        return _fhir(topic_list())

    async def create(request: Request) -> Response:
        client = await caller(request)
        if client is None:
            return _outcome(
                401,
                [Issue(IssueCode.SECURITY, "a valid bearer token is required")],
                {"WWW-Authenticate": 'Bearer realm="carebus"'},
            )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in (FHIR_JSON, "application/json"):
            return _outcome(415, [Issue(IssueCode.NOT_SUPPORTED, f"send {FHIR_JSON}")])
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return _outcome(413, [Issue(IssueCode.TOO_LONG, "subscription too large")])
        try:
            resource = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _outcome(400, [Issue(IssueCode.STRUCTURE, "body is not JSON")])
        if len(service.store.all(client)) >= settings.max_subscriptions_per_client:
            issue = Issue(IssueCode.BUSINESS_RULE, "subscription quota of this client reached")
            return _outcome(422, [issue])
        try:
            record = await service.create(resource, client)
        except SubscriptionInvalid as exc:
            return _outcome(exc.status, exc.issues)
        except BrokerUnavailable:
            return _outcome(
                503,
                [Issue(IssueCode.TRANSIENT, "broker unavailable, retry later")],
                {"Retry-After": "5"},
            )
        location = f"{service.base_url}/Subscription/{record.id}"
        return _fhir(to_fhir(record, reveal_secret=True), 201, {"Location": location})

    async def search(request: Request) -> Response:
        client = await caller(request)
        if client is None:
            return _outcome(401, [Issue(IssueCode.SECURITY, "a valid bearer token is required")])
        mine = service.store.all(client)
        return _fhir(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(mine),
                "entry": [
                    {
                        "fullUrl": f"{service.base_url}/Subscription/{r.id}",
                        "resource": to_fhir(r),
                        "search": {"mode": "match"},
                    }
                    for r in mine
                ],
            }
        )

    async def read(request: Request) -> Response:
        found = await owned(request)
        return found if isinstance(found, Response) else _fhir(to_fhir(found))

    async def delete(request: Request) -> Response:
        found = await owned(request)
        if isinstance(found, Response):
            return found
        try:
            await service.remove(found.id)
        except BrokerUnavailable:
            return _outcome(503, [Issue(IssueCode.TRANSIENT, "broker unavailable, retry later")])
        return Response(status_code=204)

    async def status(request: Request) -> Response:
        found = await owned(request)
        if isinstance(found, Response):
            return found
        return _fhir(status_search(found, base_url=service.base_url))

    async def events(request: Request) -> Response:
        found = await owned(request)
        if isinstance(found, Response):
            return found
        q = request.query_params
        try:
            since = int(q["eventsSinceNumber"]) if q.get("eventsSinceNumber") else None
            until = int(q["eventsUntilNumber"]) if q.get("eventsUntilNumber") else None
            content = Content(q["content"]) if q.get("content") else found.content
        except ValueError:
            issue = Issue(
                IssueCode.VALUE,
                "eventsSinceNumber/eventsUntilNumber are integers, "
                "content is empty | id-only | full-resource",
            )
            return _outcome(400, [issue])
        levels = list(Content)  # empty < id-only < full-resource
        if levels.index(content) > levels.index(found.content):
            content = found.content  # a hint may narrow, never widen, what was granted
        notes = service.store.events(found.id, since, until)
        bundle = notification(
            found,
            kind="query-event",
            base_url=service.base_url,
            timestamp=service.now_instant(),
            events=notes,
            content=content,
        )
        return _fhir(bundle)

    p = prefix.rstrip("/")
    return [
        Route(f"{p}/SubscriptionTopic", topics, methods=["GET"]),
        Route(f"{p}/SubscriptionTopic/{{id}}", topic, methods=["GET"]),
        Route(f"{p}/Subscription/$topic-list", listing, methods=["GET"]),
        Route(f"{p}/Subscription", create, methods=["POST"]),
        Route(f"{p}/Subscription", search, methods=["GET"]),
        Route(f"{p}/Subscription/{{id}}", read, methods=["GET"]),
        Route(f"{p}/Subscription/{{id}}", delete, methods=["DELETE"]),
        Route(f"{p}/Subscription/{{id}}/$status", status, methods=["GET"]),
        Route(f"{p}/Subscription/{{id}}/$events", events, methods=["GET"]),
    ]


def create_subscription_app(
    service: SubscriptionService, authorize: Authorizer, *, prefix: str = "/fhir"
) -> Starlette:
    """A standalone app with just the subscription routes (tests, separate listener)."""
    return Starlette(routes=subscription_routes(service, authorize, prefix=prefix))

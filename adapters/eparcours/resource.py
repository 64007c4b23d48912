"""The backport `Subscription` resource ↔ the bus's subscription record, pure.

Why strict at creation: a subscription is a standing order to push patient events to a
URL, so everything is checked before it exists (R4B model validation → 400; topic,
filters, channel, endpoint allow-list, headers, heartbeat → 422 with the FHIRPath of the
element). Profile: http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/
backport-subscription — `criteria` is the topic canonical, filters are
`backport-filter-criteria` extensions on `criteria` (JSON `_criteria`), the content level
is `backport-payload-content` on `channel.payload` (JSON `_payload`, default id-only),
heartbeat / timeout / max count are `backport-heartbeat-period` / `backport-timeout` /
`backport-max-count` on `channel`.

The signing secret comes from the subscriber (extension `subscription-secret` on
`channel`, ≥ 16 characters) or is generated; it is shown once, in the answer to the
create, and never again. Header values are masked on read: they usually carry the
platform's own credentials.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from pydantic import ValidationError

from adapters.bundle_view import to_utc
from adapters.eparcours.filters import FilterError, parse_filter
from adapters.eparcours.guard import EndpointPolicy, EndpointRefused
from adapters.eparcours.registry import Content, Status, SubscriptionRecord
from adapters.eparcours.topics import BACKPORT, BY_URL
from schemas.codes import CAREBUS_BASE
from schemas.outcome import Issue, IssueCode, fhirpath

SD = f"{BACKPORT}/StructureDefinition"
PROFILE = f"{SD}/backport-subscription"
EXT_FILTER = f"{SD}/backport-filter-criteria"
EXT_CONTENT = f"{SD}/backport-payload-content"
EXT_HEARTBEAT = f"{SD}/backport-heartbeat-period"
EXT_TIMEOUT = f"{SD}/backport-timeout"
EXT_MAX_COUNT = f"{SD}/backport-max-count"
EXT_SECRET = f"{CAREBUS_BASE}/StructureDefinition/subscription-secret"
MAX_TIMEOUT_S = 60
_HEADER = re.compile(r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*)$")
_RESERVED = {
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-authorization",
    "expect",
}


class SubscriptionInvalid(ValueError):
    def __init__(self, status: int, issues: list[Issue]) -> None:
        super().__init__("; ".join(map(str, issues)))
        self.status = status
        self.issues = issues


def _ext(node: dict | None, url: str) -> list[dict]:
    return [
        e
        for e in (node or {}).get("extension") or []
        if isinstance(e, dict) and e.get("url") == url
    ]


def from_fhir(
    resource: object,
    *,
    owner: str,
    new_id: str,
    now: datetime,
    policy: EndpointPolicy,
    min_heartbeat_s: int = 60,
) -> tuple[SubscriptionRecord, bool]:
    """(record in status requested, secret generated?) or SubscriptionInvalid."""
    from fhir.resources.R4B.subscription import Subscription

    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise SubscriptionInvalid(
            400,
            [Issue(IssueCode.STRUCTURE, "expected a Subscription", "Subscription.resourceType")],
        )
    try:
        Subscription.model_validate(resource)
    except ValidationError as exc:
        issues = [
            Issue(IssueCode.STRUCTURE, str(e.get("msg"))[:300], fhirpath("Subscription", e["loc"]))
            for e in exc.errors()[:20]
        ]
        raise SubscriptionInvalid(400, issues) from None
    issues: list[Issue] = []

    def bad(text: str, where: str, code: IssueCode = IssueCode.VALUE) -> None:
        issues.append(Issue(code, text, f"Subscription.{where}"))

    topic = BY_URL.get(resource.get("criteria", ""))
    if topic is None:
        bad(
            f"criteria must be a topic canonical URL: {', '.join(BY_URL)}",
            "criteria",
            IssueCode.NOT_SUPPORTED,
        )
    filters = []
    exts = _ext(resource.get("_criteria"), EXT_FILTER) + _ext(resource, EXT_FILTER)
    for i, ext in enumerate(exts):
        try:
            if topic is not None:
                filters.append(parse_filter(str(ext.get("valueString", "")), topic))
        except FilterError as exc:
            bad(str(exc), f"criteria.extension[{i}].valueString")
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        bad("only the rest-hook channel is offered", "channel.type", IssueCode.NOT_SUPPORTED)
    endpoint = str(channel.get("endpoint") or "")
    try:
        policy.check_url(endpoint)
    except EndpointRefused as exc:
        bad(str(exc), "channel.endpoint", IssueCode.SECURITY)
    payload = str(channel.get("payload") or "application/fhir+json")
    if payload.split(";")[0].strip().lower() != "application/fhir+json":
        bad("payload must be application/fhir+json", "channel.payload", IssueCode.NOT_SUPPORTED)
    content_ext = _ext(channel.get("_payload"), EXT_CONTENT)
    content = Content.ID_ONLY
    if content_ext:
        try:
            content = Content(content_ext[0].get("valueCode"))
        except ValueError:
            bad("content must be empty, id-only or full-resource", "channel.payload.extension")
    headers = tuple(channel.get("header") or ())
    for i, text in enumerate(headers):
        match = _HEADER.match(text)
        if not match:
            bad("header must read 'Name: value'", f"channel.header[{i}]")
        elif match.group(1).lower() in _RESERVED or match.group(1).lower().startswith("x-carebus-"):
            bad(f"header {match.group(1)} is set by the bus", f"channel.header[{i}]")
    heartbeat = _uint(channel, EXT_HEARTBEAT, "valueUnsignedInt")
    if heartbeat and heartbeat < min_heartbeat_s:
        bad(f"heartbeat period must be at least {min_heartbeat_s} s", "channel.extension")
    timeout = _uint(channel, EXT_TIMEOUT, "valueUnsignedInt")
    if timeout > MAX_TIMEOUT_S:
        bad(f"timeout must be at most {MAX_TIMEOUT_S} s", "channel.extension")
    max_count = _uint(channel, EXT_MAX_COUNT, "valuePositiveInt") or 1
    end = str(resource.get("end") or "")
    if end and to_utc(end) <= now:
        bad("end is in the past", "end")
    given = [str(e.get("valueString", "")) for e in _ext(channel, EXT_SECRET)]
    if given and len(given[0]) < 16:
        bad("subscription-secret must have at least 16 characters", "channel.extension")
    if issues:
        raise SubscriptionInvalid(422, issues)
    stamp = now.isoformat(timespec="seconds")
    record = SubscriptionRecord(
        id=new_id,
        owner=owner,
        topic=topic.url if topic else "",
        endpoint=endpoint,
        secret=given[0] if given else secrets.token_urlsafe(32),
        filters=tuple(filters),
        headers=headers,
        content=content,
        payload_type=payload,
        status=Status.REQUESTED,
        reason=str(resource.get("reason") or ""),
        heartbeat_s=heartbeat,
        timeout_s=timeout,
        max_count=max_count,
        end=end,
        created=stamp,
        updated=stamp,
    )
    return record, not given


def _uint(channel: dict, url: str, key: str) -> int:
    found = _ext(channel, url)
    value = found[0].get(key) if found else 0
    return value if isinstance(value, int) and value >= 0 else 0


def _masked(header: str) -> str:
    name, _, _ = header.partition(":")
    return f"{name}: ***"


def to_fhir(record: SubscriptionRecord, *, reveal_secret: bool = False) -> dict:
    """The record as a backport Subscription (masked headers, secret only if asked)."""
    channel_ext: list[dict] = []
    if record.heartbeat_s:
        channel_ext.append({"url": EXT_HEARTBEAT, "valueUnsignedInt": record.heartbeat_s})
    if record.timeout_s:
        channel_ext.append({"url": EXT_TIMEOUT, "valueUnsignedInt": record.timeout_s})
    channel_ext.append({"url": EXT_MAX_COUNT, "valuePositiveInt": record.max_count})
    if reveal_secret:
        channel_ext.append({"url": EXT_SECRET, "valueString": record.secret})
    channel: dict = {
        "extension": channel_ext,
        "type": "rest-hook",
        "endpoint": record.endpoint,
        "payload": record.payload_type,
        "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": record.content.value}]},
    }
    if record.headers:
        channel["header"] = [_masked(h) for h in record.headers]
    out: dict = {
        "resourceType": "Subscription",
        "id": record.id,
        "meta": {
            "profile": [PROFILE],
            "versionId": str(record.revision + 1),
            "lastUpdated": record.updated,
        },
        "status": record.status.value,
        "reason": record.reason or "e-parcours subscription",
        "criteria": record.topic,
    }
    if record.filters:
        out["_criteria"] = {
            "extension": [{"url": EXT_FILTER, "valueString": f.text()} for f in record.filters]
        }
    if record.end:
        out["end"] = record.end
    if record.error:
        out["error"] = record.error
    out["channel"] = channel
    return out

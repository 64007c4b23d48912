"""POST one notification to a subscriber's rest-hook, safely and with a clear verdict.

Why its own module: every call the bus makes to a subscriber-chosen URL goes through
here, so the SSRF rules (`guard`) cannot be bypassed by a new caller. The connection
goes to the address the guard checked (Host header and TLS SNI / certificate name stay
the endpoint's host), TLS is verified (system CAs or `eparcours.ca_file`), redirects
are not followed (a 3xx could point anywhere), and the verdict separates what a retry
can fix (timeouts, refused connections, 408 / 429 / 5xx) from what it cannot (other
4xx, a refused endpoint).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from adapters.eparcours.guard import EndpointPolicy, EndpointRefused
from adapters.eparcours.notify import SIGNATURE_HEADER, sign
from adapters.eparcours.registry import SubscriptionRecord
from bus import tracing

FHIR_JSON = "application/fhir+json"
SUBSCRIPTION_HEADER = "X-CareBus-Subscription"


@dataclass(frozen=True, slots=True)
class PostResult:
    ok: bool
    retryable: bool
    detail: str
    status: int | None = None


class RestHookSender:
    def __init__(
        self,
        policy: EndpointPolicy,
        *,
        timeout_s: float = 10.0,
        ca_file: Path | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.policy = policy
        self.timeout_s = timeout_s
        self._own = client is None
        verify = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._client = client or httpx.AsyncClient(
            verify=verify, follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()

    async def post(
        self, record: SubscriptionRecord, bundle: dict, *, timeout_s: float | None = None
    ) -> PostResult:
        body = orjson.dumps(bundle)
        try:
            target = await self.policy.resolve(record.endpoint)
        except EndpointRefused as exc:
            return PostResult(False, False, f"endpoint refused: {exc}")
        url = httpx.URL(record.endpoint)
        headers: dict[str, str] = {}
        for line in record.headers:
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
        default_port = 443 if target.scheme == "https" else 80
        headers |= {
            "Host": url.host if target.port == default_port else f"{url.host}:{target.port}",
            "Content-Type": FHIR_JSON,
            SIGNATURE_HEADER: sign(body, record.secret),
            SUBSCRIPTION_HEADER: record.id,
        } | tracing.outbound_headers()  # W3C traceparent when sent for an event
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        timeout = timeout_s or record.timeout_s or self.timeout_s
        try:
            resp = await self._client.post(
                url.copy_with(host=target.ip),
                content=body,
                headers=headers,
                extensions=extensions,
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            return PostResult(False, True, f"{target.host} timed out ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return PostResult(False, True, f"{target.host} unreachable: {type(exc).__name__}")
        status = resp.status_code
        detail = f"{target.host} answered HTTP {status}"
        if 200 <= status < 300:
            return PostResult(True, False, detail, status)
        return PostResult(False, status in (408, 425, 429) or status >= 500, detail, status)

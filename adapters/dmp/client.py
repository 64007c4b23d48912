"""The shared-record channel: posts the ITI-65 transaction of a work item to the record.

Why the outcomes are what they are (the harness in `adapters.delivery` retries and
reports them):
- the consent and relevance gate (`should_file`) comes first: an opposed patient, a
  patient without INS or an event without a new document is `skipped` with the reason,
  and nothing leaves the bus;
- the transaction is idempotent (conditional create on the masterIdentifier), so a
  redelivered work item that the record already holds is `sent`, not an error;
- 5xx / 429 / `transient` issues / timeouts / refused connections are `transient`
  (retried with backoff); any other refusal is `permanent` (dead-lettered with the
  record's OperationOutcome as the reason: retrying a 422 cannot help);
- TLS is verified (system CAs or `dmp.ca_file`), never disabled; a bundle larger than
  `dmp.max_bundle_bytes` is refused before it is sent.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import orjson

from adapters.bundle_view import BundleError
from adapters.delivery import Outcome
from adapters.dmp.mhd import (
    FilingOutcome,
    build_provide_bundle,
    parse_transaction_response,
    should_file,
)
from bus import tracing
from bus.settings import DmpSettings
from schemas.workitem import WorkItem

log = logging.getLogger("carebus.dmp")
FHIR_JSON = "application/fhir+json"


def tls_context(settings: DmpSettings) -> ssl.SSLContext:
    """Verified TLS towards the record (CA bundle from settings or the system's)."""
    ctx = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.client_cert:
        ctx.load_cert_chain(
            str(settings.client_cert), str(settings.client_key) if settings.client_key else None
        )
    return ctx


class DmpAdapter:
    """`ChannelAdapter` for `care.delivery.dmp`: IHE MHD ITI-65 over httpx."""

    name = "dmp"

    def __init__(
        self,
        base_url: str,
        *,
        settings: DmpSettings | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings or DmpSettings()
        self.base_url = base_url.rstrip("/")
        self._clock = clock
        self._own_client = client is None
        token = self.settings.token.get_secret_value() if self.settings.token else None
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._client = client or httpx.AsyncClient(
            timeout=self.settings.timeout_s,
            verify=tls_context(self.settings),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome:
        try:
            ok, why = should_file(bundle)
        except BundleError as exc:
            return Outcome.permanent(f"not a filable event: {exc}")
        if not ok:
            return Outcome.skipped(why)
        try:
            provide = build_provide_bundle(bundle, item_id=item.id, now=self._clock())
        except BundleError as exc:  # a corrupted letter is never filed
            return Outcome.permanent(f"not filed: {exc}")
        body = orjson.dumps(provide)
        if len(body) > self.settings.max_bundle_bytes:
            return Outcome.permanent(
                f"ITI-65 bundle of {len(body)} bytes exceeds {self.settings.max_bundle_bytes}"
            )
        try:
            resp = await self._client.post(
                f"{self.base_url}/",
                content=body,
                headers=self._headers | tracing.outbound_headers(),
            )
        except httpx.TimeoutException as exc:
            return Outcome.transient(f"record timed out: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Outcome.transient(f"record unreachable: {type(exc).__name__}: {exc}")
        return self._classify(resp)

    def _classify(self, resp: httpx.Response) -> Outcome:
        status = resp.status_code
        try:
            answer = resp.json()
        except ValueError:
            detail = f"record answered HTTP {status} without FHIR JSON"
            if status >= 500 or status == 429:
                return Outcome.transient(detail)
            return Outcome.permanent(detail)
        result = parse_transaction_response(answer, http_status=status)
        if result.ok:
            verb = "filed" if result.outcome is FilingOutcome.CREATED else "already filed"
            docs = [loc for loc in result.locations if "DocumentReference/" in loc]
            return Outcome.sent(f"{verb}: {', '.join(docs) or 'transaction accepted'}")
        detail = "; ".join(str(i) for i in result.errors) or f"HTTP {status}"
        if result.retryable or status >= 500 or status == 429:
            return Outcome.transient(f"record HTTP {status}: {detail}"[:500])
        return Outcome.permanent(f"record HTTP {status}: {detail}"[:500])

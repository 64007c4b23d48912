"""The one way CareBus's HTTP apps answer with an OperationOutcome (API, store, subscriptions)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from schemas.outcome import Issue, operation_outcome

FHIR_JSON = "application/fhir+json"


def outcome_response(
    status: int, issues: list[Issue], headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps(operation_outcome(issues))
    return Response(body, status_code=status, media_type=FHIR_JSON, headers=headers)

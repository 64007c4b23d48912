"""Bearer-token authentication and per-client authorisation, pure.

Each API client (a practice software publisher, a hospital, a platform) has a token,
the event types it may publish, and the identifiers it may publish for (its FINESS,
its practitioners' RPPS): a hospital can only announce its own discharges. Tokens are
compared by SHA-256 digest in constant time; the clear token is never stored or logged.
A token may carry an expiry date: past it, the caller gets RFC 6750's `invalid_token`
and the operator has been warned at start-up (`expiring`) before it happens.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bus.settings import ApiClient
from schemas.outcome import Issue, IssueCode


@dataclass(frozen=True, slots=True)
class AuthError:
    status: int  # 401 (who are you?) or 403 (not allowed)
    issue: Issue
    #: RFC 6750 `error` for the WWW-Authenticate header: "invalid_token" when a token was
    #: presented and refused; None when none was (the RFC asks for no error code then)
    bearer_error: str | None = None

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401 (no token or client detail in it)."""
        if self.bearer_error is None:
            return 'Bearer realm="carebus"'
        return f'Bearer realm="carebus", error="{self.bearer_error}"'


class TokenRegistry:
    def __init__(self, clients: Iterable[ApiClient]) -> None:
        self._clients = [(c.digest(), c) for c in clients if c.digest()]

    def __len__(self) -> int:
        return len(self._clients)

    def expiring(self, within: timedelta, now: datetime | None = None) -> list[ApiClient]:
        """Clients whose token has expired or expires within `within`, soonest first."""
        limit = (now or datetime.now(UTC)) + within
        soon = [c for _, c in self._clients if c.expires is not None and c.expires <= limit]
        return sorted(soon, key=lambda c: c.expires or limit)

    def authenticate(
        self, authorization: str | None, now: datetime | None = None
    ) -> ApiClient | AuthError:
        if not authorization:
            return AuthError(401, Issue(IssueCode.SECURITY, "missing bearer token"))
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthError(401, Issue(IssueCode.SECURITY, "expected 'Authorization: Bearer …'"))
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        found = None
        for known, client in self._clients:  # no early exit: constant time in the match
            if hmac.compare_digest(known, digest):
                found = client
        if found is None:
            return AuthError(
                401, Issue(IssueCode.SECURITY, "unknown or revoked token"), "invalid_token"
            )
        if found.expires is not None and (now or datetime.now(UTC)) >= found.expires:
            expired = found.expires.astimezone(UTC).isoformat(timespec="seconds")
            return AuthError(
                401,
                Issue(IssueCode.SECURITY, f"token expired at {expired}: ask for a new one"),
                "invalid_token",
            )
        return found


def may_publish(client: ApiClient, event_type: str, acting_for: Iterable[str]) -> AuthError | None:
    """Check the client may publish this event type for these identifiers (all of them)."""
    if not any(fnmatch.fnmatchcase(event_type, p) for p in client.event_types):
        return AuthError(
            403,
            Issue(
                IssueCode.FORBIDDEN,
                f"client {client.id} may not publish {event_type}",
                "Bundle.entry[0].resource.eventCoding",
            ),
        )
    if "*" in client.identifiers:
        return None
    acting = list(acting_for)
    if not acting:
        return AuthError(
            403, Issue(IssueCode.FORBIDDEN, "the message names no RPPS/FINESS the client acts for")
        )
    foreign = [a for a in acting if a not in client.identifiers]
    if foreign:
        return AuthError(
            403,
            Issue(
                IssueCode.FORBIDDEN,
                f"client {client.id} may not publish for {', '.join(sorted(foreign))}",
            ),
        )
    return None

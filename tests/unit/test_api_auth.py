"""Bearer tokens, pure: digests, revocation by rotation, expiry and its early warning."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from adapters.fhir_api.auth import AuthError, TokenRegistry
from bus.settings import ApiClient, HttpSettings

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def registry() -> TokenRegistry:
    return TokenRegistry(
        [
            ApiClient(id="forever", token="tok-forever"),
            ApiClient(id="soon", token="tok-soon", expires=NOW + timedelta(days=3)),
            ApiClient(id="gone", token="tok-gone", expires=NOW - timedelta(seconds=1)),
            ApiClient(id="later", token="tok-later", expires=NOW + timedelta(days=90)),
        ]
    )


def test_a_token_is_accepted_until_its_expiry_and_refused_from_that_instant() -> None:
    reg = registry()
    expires = NOW + timedelta(days=3)
    ok = reg.authenticate("Bearer tok-soon", now=expires - timedelta(microseconds=1))
    assert isinstance(ok, ApiClient) and ok.id == "soon"
    refused = reg.authenticate("Bearer tok-soon", now=expires)
    assert isinstance(refused, AuthError) and refused.status == 401
    assert "expired at 2026-11-26T12:00:00+00:00" in refused.issue.diagnostics
    assert refused.challenge() == 'Bearer realm="carebus", error="invalid_token"'


def test_an_expired_token_says_expired_not_unknown() -> None:
    """The caller must learn the remedy (ask for a new token), not suspect a typo."""
    refused = registry().authenticate("Bearer tok-gone", now=NOW)
    assert isinstance(refused, AuthError)
    assert "expired" in refused.issue.diagnostics and "unknown" not in refused.issue.diagnostics


def test_no_expiry_means_no_expiry() -> None:
    far = NOW + timedelta(days=36500)
    assert isinstance(registry().authenticate("Bearer tok-forever", now=far), ApiClient)


def test_missing_token_challenge_has_no_error_code_wrong_token_has_one() -> None:
    """RFC 6750 §3.1: no error code when the request carried no credentials."""
    missing = registry().authenticate(None, now=NOW)
    wrong = registry().authenticate("Bearer tok-nobody", now=NOW)
    assert isinstance(missing, AuthError) and missing.challenge() == 'Bearer realm="carebus"'
    assert isinstance(wrong, AuthError) and 'error="invalid_token"' in wrong.challenge()


def test_expiring_lists_expired_and_soon_expiring_soonest_first() -> None:
    names = [c.id for c in registry().expiring(timedelta(days=14), now=NOW)]
    assert names == ["gone", "soon"]


def test_expiry_needs_a_utc_offset() -> None:
    """A naive date would be read in the server's zone: refused when settings load."""
    with pytest.raises(ValidationError):
        ApiClient(id="x", token="t", expires=datetime(2027, 1, 1))
    parsed = HttpSettings.model_validate(
        {"clients": [{"id": "x", "token": "t", "expires": "2027-06-30T00:00:00+02:00"}]}
    )
    assert parsed.clients[0].expires == datetime(2027, 6, 29, 22, 0, tzinfo=UTC)

"""Coordinator authentication for the dashboard: password hashes, signed sessions, CSRF.

Pure (clock and secrets injected), so every rule is tested without a socket:

- passwords are stored as scrypt hashes (`hashlib.scrypt`, n=2**14, r=8, p=1, 16-byte
  salt) in the text form `scrypt$n$r$p$salt$hash` (base64url), compared in constant time;
  an unknown login costs the same scrypt as a wrong password (no user enumeration by
  timing);
- a session is a cookie `payload.signature`: the payload (login, session id, expiry) in
  base64url JSON, the signature an HMAC-SHA256 with the dashboard's secret; nothing is
  kept server side, a forged or expired cookie is simply ignored;
- the CSRF token of a session is HMAC(secret, "csrf" + session id): forms carry it in a
  hidden field and every POST must echo it (plus SameSite=Strict cookies);
- `LoginThrottle` slows down password guessing per login (bounded memory).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

_N, _R, _P = 2**14, 8, 1
_DUMMY_SALT = b"carebus-dashboard"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=2**26)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The text to put in `password_scrypt` for this password."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches `encoded` (a `hash_password` result)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        n_, r_, p_ = int(n), int(r), int(p)
        if n_ > 2**20 or r_ > 32 or p_ > 16:  # refuse a hash that would exhaust memory
            return False
        expected = _unb64(digest)
        got = _scrypt(password, _unb64(salt), n_, r_, p_)
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(got, expected)


def burn_password_time(password: str) -> None:
    """Spend what a real check costs (used when the login does not exist)."""
    _scrypt(password, _DUMMY_SALT, _N, _R, _P)


@dataclass(frozen=True, slots=True)
class Session:
    login: str
    sid: str  # random per login: binds the CSRF token
    expires: datetime


def _sign(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()


def new_session(login: str, now: datetime, lifetime: timedelta) -> Session:
    return Session(login, secrets.token_urlsafe(16), now + lifetime)


def encode_session(secret: bytes, session: Session) -> str:
    payload = orjson.dumps(
        {"u": session.login, "s": session.sid, "e": int(session.expires.timestamp())}
    )
    return f"{_b64(payload)}.{_b64(_sign(secret, payload))}"


def decode_session(secret: bytes, token: str | None, now: datetime) -> Session | None:
    """The session of a cookie, or None when it is missing, forged, malformed or expired."""
    if not token or "." not in token or len(token) > 1024:
        return None
    body, _, sig = token.partition(".")
    try:
        payload = _unb64(body)
        if not hmac.compare_digest(_unb64(sig), _sign(secret, payload)):
            return None
        data = orjson.loads(payload)
        expires = datetime.fromtimestamp(int(data["e"]), tz=now.tzinfo)
        session = Session(str(data["u"]), str(data["s"]), expires)
    except (ValueError, binascii.Error, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return session if session.expires > now else None


def csrf_token(secret: bytes, sid: str) -> str:
    return _b64(_sign(secret, b"csrf|" + sid.encode()))


def csrf_ok(secret: bytes, sid: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(csrf_token(secret, sid), given or "")


class LoginThrottle:
    """After `free` failed attempts on a login, each further attempt must wait `delay`
    after the last failure. Remembers at most `size` logins (oldest forgotten first)."""

    def __init__(self, free: int = 5, delay: timedelta = timedelta(seconds=30), size: int = 10_000):
        self.free, self.delay, self.size = free, delay, size
        self._fails: OrderedDict[str, tuple[int, datetime]] = OrderedDict()

    def allowed(self, login: str, now: datetime) -> bool:
        count, last = self._fails.get(login, (0, now))
        return count < self.free or now - last >= self.delay

    def failed(self, login: str, now: datetime) -> None:
        count, _ = self._fails.pop(login, (0, now))
        self._fails[login] = (count + 1, now)
        while len(self._fails) > self.size:
            self._fails.popitem(last=False)

    def succeeded(self, login: str) -> None:
        self._fails.pop(login, None)

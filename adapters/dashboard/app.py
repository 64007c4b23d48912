"""The coordinator dashboard: server-rendered French pages under /tableau (Starlette).

- `/tableau/connexion`: login form (coordinator accounts from `dashboard.users`,
  scrypt hashes); a signed, HttpOnly, SameSite=Strict session cookie, Secure unless on
  loopback; failed logins slowed down per account.
- `/tableau/`: open cases (escalated and late first) with their due date and next
  deadline, delivery failures, dead letters with a replay button, rejected inputs.
- `/tableau/dossier?id=<case id>`: one case's timeline.
- `POST /tableau/lettres-mortes/rejouer`: sends ONE dead letter back to its topic
  (`bus.replay.replay_one`); needs the session's CSRF token and a same-origin request.
- `/tableau/version`: a number that grows with every record read; the page's only
  script (`/tableau/static/tableau.js`, no inline script: the CSP forbids it) polls it
  and swaps in the fresh content when it changes (live updates).

Every answer carries a strict Content-Security-Policy, no-store caching (the pages are
about patients' care), and anti-framing headers. Pages never show a patient's identity.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.dashboard.auth import (
    LoginThrottle,
    Session,
    burn_password_time,
    csrf_ok,
    csrf_token,
    decode_session,
    encode_session,
    hash_password,
    new_session,
    verify_password,
)
from adapters.dashboard.projection import Projection
from adapters.dashboard.views import CHANNEL_LABEL, PRIORITY_LABEL, case_row, paris, since

log = logging.getLogger("carebus.dashboard")
HERE = Path(__file__).parent
SESSION_COOKIE = "tableau_session"
LOGIN_COOKIE = "tableau_login"
MAX_FORM = 4096
MAX_ROWS = 500
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Origin "null"
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (b"cache-control", b"no-store"),
]
Replayer = Callable[[int, int, str | None], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Account:
    login: str
    name: str
    password_hash: str


def accounts_from_settings(users: list) -> dict[str, Account]:
    """`dashboard.users` → accounts; a clear password (dev) is hashed in memory."""
    out: dict[str, Account] = {}
    for u in users:
        if u.password_scrypt is not None:
            encoded = u.password_scrypt.get_secret_value()
        elif u.password is not None:
            encoded = hash_password(u.password.get_secret_value())
        else:
            raise ValueError(f"dashboard user {u.login!r} has neither password_scrypt nor password")
        out[u.login] = Account(u.login, u.name or u.login, encoded)
    return out


@dataclass
class DashboardContext:
    projection: Projection
    accounts: dict[str, Account]
    replay: Replayer
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    secure_cookie: bool = True
    session_lifetime: timedelta = timedelta(hours=10)
    refresh_s: float = 2.0
    ready: Callable[[], bool] = lambda: True
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every HTTP answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {n for n, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["paris"] = paris
    env.globals.update(priority_label=PRIORITY_LABEL, channel_label=CHANNEL_LABEL, since=since)
    return env


def _same_origin(request: Request) -> bool:
    """A POST must come from our own pages: Origin (or Referer) names this host."""
    origin = request.headers.get("origin") or request.headers.get("referer") or ""
    if not origin:
        return True  # old clients send neither; the CSRF token still protects the POST
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].split("/", 1)[0] == host


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items()}


def create_app(ctx: DashboardContext) -> ASGIApp:
    env = _env()
    statics = {
        "tableau.js": ("text/javascript; charset=utf-8", (HERE / "static/tableau.js").read_bytes()),
        "tableau.css": ("text/css; charset=utf-8", (HERE / "static/tableau.css").read_bytes()),
    }

    def session_of(request: Request) -> Session | None:
        session = decode_session(ctx.secret, request.cookies.get(SESSION_COOKIE), ctx.clock())
        if session is None or session.login not in ctx.accounts:
            return None
        return session

    def page(request: Request, template: str, status: int = 200, **values: object) -> Response:
        fragment = request.headers.get("x-tableau-fragment") == "1"
        name = template.replace(".html", "_main.html") if fragment else template
        html = env.get_template(name).render(
            refresh_s=ctx.refresh_s, version=ctx.projection.version, ready=ctx.ready(), **values
        )
        return HTMLResponse(html, status_code=status)

    def cookie(resp: Response, name: str, value: str, max_age: int) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path="/tableau",
            httponly=True,
            secure=ctx.secure_cookie,
            samesite="strict",
        )

    def to_login(request: Request) -> Response:
        if request.headers.get("x-tableau-fragment") == "1":
            return PlainTextResponse("session expirée", status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/tableau/connexion?suite={quote(target)}", status_code=303)

    async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
        token = secrets.token_urlsafe(24)
        suite = request.query_params.get("suite", "")
        resp = page(request, "login.html", status, error=error, login_token=token, suite=suite)
        cookie(resp, LOGIN_COOKIE, token, 1800)
        return resp

    async def connexion(request: Request) -> Response:
        if request.method == "GET":
            return await login_form(request)
        form = await _form(request)
        given = form.get("jeton", "")
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not (given and expected and hmac.compare_digest(given, expected)):
            return await login_form(request, "Formulaire expiré : merci de réessayer.", 400)
        if not _same_origin(request):
            return PlainTextResponse("origine refusée", status_code=403)
        login, password = form.get("identifiant", "").strip(), form.get("mot_de_passe", "")
        now = ctx.clock()
        if not ctx.throttle.allowed(login, now):
            log.warning("dashboard: login throttled for an account")
            msg = "Trop d'essais infructueux : réessayez dans une minute."
            return await login_form(request, msg, 429)
        account = ctx.accounts.get(login)
        if account is None:
            await asyncio.to_thread(burn_password_time, password)
            ok = False
        else:
            ok = await asyncio.to_thread(verify_password, password, account.password_hash)
        if not ok:
            ctx.throttle.failed(login, now)
            log.info("dashboard: failed login")
            return await login_form(request, "Identifiant ou mot de passe incorrect.", 401)
        ctx.throttle.succeeded(login)
        session = new_session(login, now, ctx.session_lifetime)
        suite = form.get("suite", "")
        target = suite if suite.startswith("/tableau/") and not suite.startswith("//") else ""
        resp = RedirectResponse(target or "/tableau/", status_code=303)
        cookie(
            resp,
            SESSION_COOKIE,
            encode_session(ctx.secret, session),
            int(ctx.session_lifetime.total_seconds()),
        )
        resp.delete_cookie(LOGIN_COOKIE, path="/tableau")
        log.info("dashboard: %s logged in", login)
        return resp

    async def deconnexion(request: Request) -> Response:
        session = session_of(request)
        form = await _form(request)
        if session is not None and not csrf_ok(ctx.secret, session.sid, form.get("csrf")):
            return PlainTextResponse("jeton CSRF invalide", status_code=403)
        resp = RedirectResponse("/tableau/connexion", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/tableau")
        return resp

    def common(session: Session) -> dict[str, object]:
        account = ctx.accounts[session.login]
        return {
            "user": account.name,
            "csrf": csrf_token(ctx.secret, session.sid),
            "now": ctx.clock(),
        }

    async def overview(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        now = ctx.clock()
        rows = ctx.projection.open_rows(now)
        values = common(session)
        flash = request.query_params.get("rejeu", "")
        where = request.query_params.get("ou", "")
        return page(
            request,
            "index.html",
            rows=rows[:MAX_ROWS],
            more=max(0, len(rows) - MAX_ROWS),
            total=len(rows),
            late=sum(1 for r in rows if r.urgent),
            failures=ctx.projection.failure_list()[:100],
            dead_letters=ctx.projection.dead_letter_list()[:100],
            rejected=list(ctx.projection.rejected)[:20],
            flash=flash if flash in ("ok", "absent", "erreur") else "",
            flash_where=where if re.fullmatch(r"\d{1,5}@\d{1,19}", where) else "",
            **values,
        )

    async def dossier(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        case_id = request.query_params.get("id", "")
        view = ctx.projection.case(case_id)
        if view is None:
            return page(request, "missing.html", 404, **common(session))
        now = ctx.clock()
        return page(
            request,
            "case.html",
            row=case_row(view, now),
            view=view,
            entries=list(reversed(view.entries())),
            **common(session),
        )

    async def rejouer(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return PlainTextResponse("non connecté", status_code=401)
        form = await _form(request)
        if not csrf_ok(ctx.secret, session.sid, form.get("csrf")) or not _same_origin(request):
            return PlainTextResponse("jeton CSRF invalide", status_code=403)
        try:
            partition, offset = int(form.get("partition", "")), int(form.get("offset", ""))
        except ValueError:
            return PlainTextResponse("partition et offset attendus", status_code=400)
        expect = form.get("event_id") or None
        where = f"{partition}@{offset}"
        try:
            topic = await ctx.replay(partition, offset, expect)
        except LookupError as exc:
            log.warning("dashboard: %s: replay of %s refused: %s", session.login, where, exc)
            return RedirectResponse(f"/tableau/?rejeu=absent&ou={where}#lettres-mortes", 303)
        except Exception as exc:  # noqa: BLE001 - the broker may be down: say so, keep serving
            log.error("dashboard: replay of %s failed: %s: %s", where, type(exc).__name__, exc)
            return RedirectResponse(f"/tableau/?rejeu=erreur&ou={where}#lettres-mortes", 303)
        log.info("dashboard: %s replayed dead letter %s to %s", session.login, where, topic)
        return RedirectResponse(f"/tableau/?rejeu=ok&ou={where}#lettres-mortes", 303)

    async def version(request: Request) -> Response:
        if session_of(request) is None:
            return JSONResponse({"error": "non connecté"}, status_code=401)
        return JSONResponse({"version": ctx.projection.version, "ready": ctx.ready()})

    async def static(request: Request) -> Response:
        found = statics.get(request.path_params["name"])
        if found is None:
            return PlainTextResponse("introuvable", status_code=404)
        return Response(found[1], media_type=found[0], headers={"cache-control": "no-cache"})

    async def root(request: Request) -> Response:
        return RedirectResponse("/tableau/", status_code=307)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # browsers ask for one; nothing to show

    app = Starlette(
        routes=[
            Route("/", root),
            Route("/tableau", root),
            Route("/tableau/", overview),
            Route("/tableau/connexion", connexion, methods=["GET", "POST"]),
            Route("/tableau/deconnexion", deconnexion, methods=["POST"]),
            Route("/tableau/dossier", dossier),
            Route("/tableau/lettres-mortes/rejouer", rejouer, methods=["POST"]),
            Route("/tableau/version", version),
            Route("/tableau/static/{name}", static),
            Route("/healthz", healthz),
            Route("/favicon.ico", favicon),
        ]
    )
    return SecurityHeaders(app)

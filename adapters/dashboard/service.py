"""Run the dashboard: feed + projection + HTTP listener (the `dashboard` role).

Accounts: `dashboard.users` in settings. With none configured, a serious default is
needed for `carebus up` on a laptop without opening a hole on a server: on a loopback
host one local account, "coordination", is created with a random password generated at
each start and printed once on the operator's console (like a notebook server's token:
whoever can read that console already owns the machine); on any other host the dashboard
refuses to start until accounts are configured.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from adapters.dashboard.app import Account, DashboardContext, accounts_from_settings, create_app
from adapters.dashboard.auth import hash_password
from adapters.dashboard.feed import DashboardFeed
from adapters.dashboard.projection import Projection
from bus.asgi import serve
from bus.producer import EventProducer
from bus.replay import replay_one
from bus.settings import Settings

LOCAL_LOGIN = "coordination"


class DashboardConfigError(ValueError):
    """The dashboard cannot start safely with these settings."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class RunningDashboard:
    url: str
    port: int
    projection: Projection
    feed: DashboardFeed
    #: (login, password) of the one-time local account, when one was generated
    generated: tuple[str, str] | None = None


def accounts_for(settings: Settings) -> tuple[dict[str, Account], tuple[str, str] | None]:
    """The accounts, plus the one-time local account when none is configured (loopback)."""
    d = settings.dashboard
    accounts = accounts_from_settings(d.users)
    if accounts:
        return accounts, None
    if not is_loopback(d.host):
        raise DashboardConfigError(
            f"the dashboard listens on {d.host}, which is not loopback, and no coordinator "
            "account is configured: add [[dashboard.users]] (password_scrypt from "
            "`carebus dashboard hash-password`)"
        )
    password = secrets.token_urlsafe(12)
    account = Account(LOCAL_LOGIN, "Coordination (compte local)", hash_password(password))
    return {LOCAL_LOGIN: account}, (LOCAL_LOGIN, password)


@contextlib.asynccontextmanager
async def run_dashboard(
    settings: Settings,
    bootstrap: str,
    producer: EventProducer,
    *,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[RunningDashboard]:
    d = settings.dashboard
    accounts, generated = accounts_for(settings)
    projection = Projection(
        settings.sla, max_cases=d.max_cases, max_timeline=d.max_timeline, max_items=d.max_items
    )
    feed = DashboardFeed(bootstrap, settings.kafka, projection)

    async def replay(partition: int, offset: int, expect_id: str | None) -> str:
        return await replay_one(
            bootstrap,
            settings.kafka,
            producer,
            partition=partition,
            offset=offset,
            expect_id=expect_id,
        )

    ctx = DashboardContext(
        projection=projection,
        accounts=accounts,
        replay=replay,
        secure_cookie=d.secure_cookie if d.secure_cookie is not None else not is_loopback(d.host),
        session_lifetime=timedelta(hours=d.session_hours),
        refresh_s=d.refresh_s,
        ready=feed.ready.is_set,
    )
    if d.session_secret is not None:
        ctx.secret = d.session_secret.get_secret_value().encode()
    if clock is not None:
        ctx.clock = clock
    await feed.start()
    try:
        async with serve(create_app(ctx), d.host, d.port) as port:
            host = f"[{d.host}]" if ":" in d.host else d.host
            yield RunningDashboard(
                f"http://{host}:{port}/tableau/", port, projection, feed, generated
            )
    finally:
        await feed.stop()

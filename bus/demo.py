"""`carebus demo`: a realistic day of a territory, played on the real stack and checked.

Starts everything `carebus up` starts (embedded Apache Kafka, processors, listeners,
TLS mailbox, document store) in a fresh demo data directory, then acts as the hospital,
the GP's and the specialists' software and an e-parcours platform, only through public
interfaces (MLLP, HTTP, the mailbox on disk, the document store's API). SLA delays are
compressed (hours → seconds) so the day takes about a minute. Exits 0 only if every
expected outcome was observed.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import orjson
from rich.console import Console
from rich.table import Table
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bus.settings import ApiClient, Settings

SB, EB = b"\x0b", b"\x1c\x0d"
SAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "samples"


@dataclass
class Step:
    what: str
    expected: str
    ok: bool = False
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Tokens:
    gp: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    specialist: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    hospital: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    platform: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def demo_settings(base: Settings, tokens: Tokens) -> Settings:
    """The user's settings, moved to a fresh demo directory, free ports, demo SLA delays."""
    from processors.sla.policy import DischargePolicy

    data = base.data_dir / "demo"
    shutil.rmtree(data, ignore_errors=True)
    clients = [
        ApiClient(
            id="logiciel-cabinet-benard",
            token=tokens.gp,  # type: ignore[arg-type]
            event_types=["referral.*", "expertise.*"],
        ),
        ApiClient(
            id="logiciel-specialistes",
            token=tokens.specialist,  # type: ignore[arg-type]
            event_types=["referral.*", "expertise.*"],
        ),
        ApiClient(
            id="ch-moulins-yzeure",
            token=tokens.hospital,  # type: ignore[arg-type]
            event_types=["admission.*", "discharge.*"],
            identifiers=["1030780100"],
        ),
        ApiClient(
            id="plateforme-e-parcours",
            token=tokens.platform,  # type: ignore[arg-type]
            event_types=[],
            subscriptions=True,
        ),
    ]
    sla = base.sla.compressed(
        {"referral-urgent": 3600, "referral-routine": 86400, "expertise": 86400}
    )
    sla = sla.model_copy(
        update={"discharge": DischargePolicy(ack_within="10min", followup_after="8s")}
    )
    kafka = (
        base.kafka if base.kafka.bootstrap else base.kafka.model_copy(update={"embedded_port": 0})
    )
    return base.model_copy(
        update={
            "data_dir": data,
            "kafka": kafka,
            "http": base.http.model_copy(update={"port": 0, "clients": clients}),
            "mllp": base.mllp.model_copy(update={"port": 0}),
            "mssante": base.mssante.model_copy(update={"mailbox_port": 0}),
            "dmp": base.dmp.model_copy(update={"store_port": 0}),
            "dashboard": base.dashboard.model_copy(update={"port": 0}),
            "observability": base.observability.model_copy(update={"metrics_port": 0}),
            "eparcours": base.eparcours.model_copy(
                update={
                    "allowed_hosts": ["127.0.0.1"],
                    "allow_http": True,
                    "allowed_networks": ["127.0.0.0/8"],
                }
            ),
            "sla": sla,
        }
    )


class Webhook:
    """The e-parcours platform's side: a rest-hook receiver on loopback."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.bodies.append(await request.body())
        return Response(status_code=200)

    def event_notifications(self) -> list[dict]:
        out = []
        for body in self.bodies:
            bundle = orjson.loads(body)
            status = bundle["entry"][0]["resource"]
            params = {p["name"]: p for p in status.get("parameter", [])}
            kind = params.get("type", {}).get("valueCode") or status.get("type")
            if kind == "event-notification":
                out.append(bundle)
        return out


async def mllp_send(port: int, payload: bytes) -> dict[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(SB + payload + EB)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(EB), 30)
    finally:
        writer.close()
    segs = raw.strip(SB + EB).decode().split("\r")
    msa = next(s for s in segs if s.startswith("MSA")).split("|")
    err = next((s for s in segs if s.startswith("ERR")), "")
    return {"code": msa[1], "control": msa[2], "err": err}


async def wait_for(check: Callable[[], Awaitable[object]], within: float) -> object:
    end = time.monotonic() + within
    while True:
        result = await check()
        if result or time.monotonic() > end:
            return result
        await asyncio.sleep(0.25)


class Demo:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.tokens = Tokens()
        self.settings = demo_settings(settings, self.tokens)
        self.console = console
        self.steps: list[Step] = []
        self.run_id = uuid.uuid4().hex[:6].upper()
        self.t0 = time.monotonic()

    def record(self, what: str, expected: str, ok: bool, detail: str = "") -> bool:
        step = Step(what, expected, bool(ok), detail, time.monotonic() - self.t0)
        self.steps.append(step)
        mark = "[green]✔[/green]" if ok else "[red]✘[/red]"
        self.console.print(
            f"{step.seconds:6.1f}s {mark} {what} → {expected}"
            + (f" [dim]({detail})[/dim]" if detail else "")
        )
        return bool(ok)

    def mails(self, address: str, case: str | None = None, display: str = "") -> list[EmailMessage]:
        from adapters.mssante.mailbox import list_messages

        out = []
        for msg in list_messages(self.settings.data_dir, address):
            if case and msg.get("X-CareBus-Case", "") != case:
                continue
            if display and display not in str(msg.get("Subject", "")):
                continue
            out.append(msg)
        return out

    async def run(self) -> bool:
        from bus.asgi import serve
        from bus.stack import run_stack

        self.console.rule(
            f"CareBus demo — a day of the CPTS des Bords d'Allier (run {self.run_id})"
        )
        async with run_stack(self.settings) as running:
            self.running = running
            self.console.print(
                f"stack up in {time.monotonic() - self.t0:.1f}s: "
                + ", ".join(f"{k} {v}" for k, v in running.endpoints.items())
            )
            hook = Webhook()
            async with (
                serve(hook.app, "127.0.0.1", 0) as hook_port,
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{running.ports['http']}", timeout=30
                ) as http,
            ):
                self.http = http
                from bus.demo_steps import play

                await play(self, hook, hook_port)
        return self.report()

    async def post(self, token: str, bundle: dict) -> httpx.Response:
        return await self.http.post(
            "/fhir/$process-message",
            content=orjson.dumps(bundle),
            headers={"content-type": "application/fhir+json", "authorization": f"Bearer {token}"},
        )

    def report(self) -> bool:
        table = Table("t (s)", "step", "expected outcome", "observed", title="Timeline")
        for s in self.steps:
            table.add_row(
                f"{s.seconds:.1f}",
                s.what,
                s.expected,
                "[green]yes[/green]" if s.ok else f"[red]NO[/red] {s.detail}",
            )
        self.console.print(table)
        ok = all(s.ok for s in self.steps) and bool(self.steps)
        where = self.settings.data_dir
        self.console.print(
            f"mailboxes: {where / 'mailbox'} · documents: {self.running.dmp_url}"
            f"/DocumentReference · data: {where}"
        )
        self.console.print(
            "[green]every expected outcome was observed[/green]"
            if ok
            else f"[red]{sum(not s.ok for s in self.steps)} expected outcome(s) missing[/red]"
        )
        return ok


def run_demo(settings: Settings, console: Console) -> bool:
    return asyncio.run(Demo(settings, console).run())


def now_utc() -> datetime:
    return datetime.now(UTC)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)

"""The coordinator dashboard in a real headless browser (Debian's chromium, Playwright),
against the real broker: login, late case first, a case's timeline, a live update, and
the replay of one dead letter checked with a real consumer. Screenshots are decoded and
checked (size, colours, not a blank page)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from PIL import Image
from pydantic import SecretStr

from adapters.dashboard.auth import hash_password
from adapters.dashboard.service import run_dashboard
from adapters.delivery import Outcome, status_event
from bus.deadletter import REPLAYED, dead_letter, header_text
from bus.producer import EventProducer
from bus.settings import DashboardSettings, DashboardUser, Settings
from processors.notices import notice_envelope
from processors.sla.machine import Notice
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.sample_data import CARDIOLOGIST, PATIENT
from schemas.samples import referral_info
from schemas.topics import BY_NAME, DELIVERY_MSSANTE, DELIVERY_STATUS, REFERRAL_EVENTS, SLA_EVENTS
from schemas.validate import validate_message
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
E = EventType
PASSWORD = "Allier-2025-coordination"


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = (
        "Debian's chromium is not installed: `make test` installs it "
        "(scripts/ensure-system.sh chromium fonts-dejavu-core)"
    )
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI runs `make test`, which installs it: missing is a failure
    pytest.skip(reason)


def referral_event(ref: str, priority: str, at: datetime) -> Envelope:
    info = dataclasses.replace(referral_info(), referral_id=ref, priority=priority)
    bundle = build_event(E.REFERRAL_REQUESTED, info, timestamp=at)
    msg = validate_message(orjson.dumps(bundle))
    return Envelope(
        id=msg.event_id,
        type=E.REFERRAL_REQUESTED.value,
        source="urn:test:lgc",
        subject=msg.case_id,
        data=msg.raw,
        time=at.isoformat(),
    )


def check_screenshot(path: Path) -> set:
    """A real rendering: decodes as PNG, plausible size, many colours, not one flat fill."""
    with Image.open(path) as img:
        assert img.format == "PNG"
        width, height = img.size
        assert width >= 1000 and height >= 600, img.size
        rgb = img.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None
    assert len(colours) > 40, f"{path.name}: only {len(colours)} colours, a blank page?"
    biggest = max(count for count, _ in colours)
    assert biggest < 0.97 * width * height, f"{path.name}: one colour fills the page"
    return {c for _, c in colours}


async def until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def ends(bootstrap: str, settings: Settings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **settings.kafka.client_options())
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(BY_NAME[topic].partitions)]
        return await consumer.end_offsets(parts)
    finally:
        await consumer.stop()


async def find_replayed(
    bootstrap: str, settings: Settings, start: dict[TopicPartition, int], event_id: str
) -> list:
    """Records of `event_id` written after `start`, read by a real consumer (no group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **settings.kafka.client_options()
    )
    await consumer.start()
    found: list = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = asyncio.get_running_loop().time() + 30
        while not found and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found += [r for r in records if header_text(r.headers, "ce_id") == event_id]
    finally:
        await consumer.stop()
    return found


async def test_dashboard_in_a_real_browser(
    catalog_applied: str, settings: Settings, unique: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    chromium = chromium_path()
    bootstrap = catalog_applied
    now = datetime.now(UTC)
    late = referral_event(f"ADR-{unique}-A", "urgent", now - timedelta(days=7))  # any week
    on_time = referral_event(f"ADR-{unique}-B", "routine", now)
    lost = referral_event(f"ADR-{unique}-C", "routine", now)
    performer = Recipient(
        RecipientKind.PRACTITIONER,
        CARDIOLOGIST.rpps,
        CARDIOLOGIST.mailbox or "",
        "performer",
        "Dr Anaïs Gérard-Moreau",
    )
    item = WorkItem(late, Channel.MSSANTE, performer)
    failed = status_event(item, Outcome.permanent("550 5.1.1 boîte aux lettres inconnue"), 3)
    key, value, headers = lost.encode()
    dlq = dead_letter(
        topic=REFERRAL_EVENTS.name,
        partition=-1,
        offset=-1,
        key=key,
        value=value,
        headers=headers,
        reason="recipient unresolved: performer 10012345673: not in the directory",
        group="carebus-routing",
        attempts=1,
    )
    dash_settings = settings.model_copy(
        update={
            "dashboard": DashboardSettings(
                port=0,
                refresh_s=0.5,
                users=[
                    DashboardUser(
                        login="camille",
                        name="Camille Renaud",
                        password_scrypt=SecretStr(hash_password(PASSWORD)),
                    )
                ],
            )
        }
    )
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await producer.publish(REFERRAL_EVENTS.name, late)
        await producer.publish(REFERRAL_EVENTS.name, on_time)
        await producer.publish(DELIVERY_MSSANTE.name, item.envelope())
        await producer.publish(DELIVERY_STATUS.name, failed)
        await producer.send_raw(dlq.topic, dlq.key, dlq.value, dlq.headers)
        async with run_dashboard(dash_settings, bootstrap, producer) as dash:
            assert dash.generated is None  # accounts configured: no local account
            proj = dash.projection
            await until(
                lambda: (
                    proj.case(late.subject) is not None
                    and proj.case(on_time.subject) is not None
                    and any(d.event_id == lost.id for d in proj.dead_letters.values())
                    and proj.case(late.subject).failures == 1
                ),
                "the dashboard to read the events",
            )
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path=chromium, headless=True, args=["--no-sandbox"]
                )
                try:
                    await browse(
                        browser,
                        dash,
                        bootstrap,
                        settings,
                        producer,
                        tmp_path,
                        late=late,
                        on_time=on_time,
                        lost=lost,
                    )
                finally:
                    await browser.close()


async def browse(
    browser, dash, bootstrap, settings, producer, shots: Path, *, late, on_time, lost
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 900}, locale="fr-FR")
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # not logged in: the dashboard sends the browser to the login page
    resp = await page.goto(dash.url)
    assert resp is not None and "/tableau/connexion" in page.url
    csp = resp.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert resp.headers.get("x-frame-options") == "DENY"
    await page.screenshot(path=shots / "connexion.png", full_page=True)

    # a wrong password is refused
    await page.fill("#identifiant", "camille")
    await page.fill("#mot_de_passe", "mauvais mot de passe")
    async with page.expect_response(lambda r: r.request.method == "POST") as posted:
        await page.click("button[type=submit]")
    assert (await posted.value).status == 401
    await page.wait_for_selector("text=Identifiant ou mot de passe incorrect.")
    assert "/tableau/connexion" in page.url
    assert not any(c["name"] == "tableau_session" for c in await page.context.cookies())
    assert all("401" in p for p in problems), problems  # the refused login, nothing else
    problems.clear()

    # the right one opens the dashboard
    await page.fill("#identifiant", "camille")
    await page.fill("#mot_de_passe", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#dossiers")
    assert page.url == dash.url
    session = next(c for c in await page.context.cookies() if c["name"] == "tableau_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert await page.text_content("header .utilisateur") == "Camille Renaud"

    # the late case comes before the on-time one, flagged, with its people
    cases = await page.eval_on_selector_all("tr.dossier", "rows => rows.map(r => r.dataset.case)")
    assert late.subject in cases and on_time.subject in cases
    assert cases.index(late.subject) < cases.index(on_time.subject)
    late_row = page.locator(f'tr[data-case="{late.subject}"]')
    assert "retard" in (await late_row.get_attribute("class") or "")
    row_text = await late_row.inner_text()
    assert "En retard" in row_text and "urgente" in row_text
    assert "Dr François Bénard → Dr Anaïs Gérard-Moreau" in row_text
    assert "Échec d'envoi" in row_text
    on_time_text = await page.locator(f'tr[data-case="{on_time.subject}"]').inner_text()
    assert "En retard" not in on_time_text and "dans " in on_time_text  # due in 5 days
    failures = await page.inner_text("#echecs")
    assert "550 5.1.1 boîte aux lettres inconnue" in failures
    assert "Dr Anaïs Gérard-Moreau" in failures  # named from the work item
    html = await page.content()
    assert PATIENT.family not in html and PATIENT.given not in html and PATIENT.ins not in html
    await page.screenshot(path=shots / "tableau.png", full_page=True)

    # a case's timeline
    await late_row.locator("a").click()
    await page.wait_for_selector("#chronologie")
    timeline = await page.inner_text("#chronologie")
    assert "Demande d'adressage" in timeline
    assert "À remettre" in timeline and "MSSanté" in timeline
    assert "Échec de remise" in timeline
    assert "Escalade" not in timeline

    # live: an escalation published while the page is open appears without a reload
    await page.evaluate("window.__sansRechargement = true")
    notice = Notice(
        E.SLA_ESCALATED,
        late.subject,
        str(uuid.uuid4()),
        ("coordinator", "requester"),
        datetime.now(UTC) - timedelta(days=2),
        "escalation",
    )
    await producer.publish(SLA_EVENTS.name, notice_envelope(notice, late))
    await page.wait_for_selector("#chronologie li.ton-alert >> text=Escalade", timeout=30_000)
    await page.wait_for_selector("#dossier h1 >> text=Escaladé", timeout=30_000)
    assert await page.evaluate("window.__sansRechargement === true")  # same page, no reload
    await page.screenshot(path=shots / "dossier.png", full_page=True)

    # the POST replay needs the session and its CSRF token (a real HTTP client)
    async with httpx.AsyncClient() as client:
        target = dash.url + "lettres-mortes/rejouer"
        form = {"partition": "0", "offset": "0"}
        assert (await client.post(target, data=form)).status_code == 401
        client.cookies.set("tableau_session", session["value"])
        forged = await client.post(target, data={**form, "csrf": "x"})
        assert forged.status_code == 403

    # replay ONE dead letter from the page: it is back on its topic, seen by a consumer
    await page.goto(dash.url)
    lost_ref = lost.subject.rsplit("|", 1)[-1]  # ADR-<unique>-C
    dl_row = page.locator("tr.lettre-morte", has_text=lost_ref)
    assert await dl_row.count() == 1
    assert "recipient unresolved" in await dl_row.inner_text()
    before = await ends(bootstrap, settings, REFERRAL_EVENTS.name)
    await dl_row.locator("button.rejouer").click()
    await page.wait_for_selector("#message.succes")
    back = await find_replayed(bootstrap, settings, before, lost.id)
    assert len(back) == 1, "exactly one record sent back"
    rec = back[0]
    assert rec.value == lost.data and rec.key == lost.key
    assert any(n == REPLAYED for n, _ in rec.headers)
    assert not any(n.startswith("dlq_") for n, _ in rec.headers)
    # … and the page says so by itself once the feed has read it back
    await page.wait_for_selector(
        f'tr.lettre-morte:has-text("{lost_ref}") >> text=Rejoué le',
        timeout=30_000,
    )
    await page.screenshot(path=shots / "rejeu.png", full_page=True)
    assert not problems, problems  # no CSP violation, no script error

    # the screenshots are real renderings, and different pages look different
    palettes = [
        check_screenshot(shots / n)
        for n in ("connexion.png", "tableau.png", "dossier.png", "rejeu.png")
    ]
    assert palettes[0] != palettes[1]
    red = (0xB3, 0x26, 0x1E)  # the "En retard" / "Escaladé" badges
    assert red in palettes[1] and red in palettes[2]
    assert red not in palettes[0]

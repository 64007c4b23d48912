"""The directory on the real broker: publish, follow updates and tombstones, late starters.

`care.directory` is shared by the whole session (and kept by an external broker between
runs), so the tests that change entries use fresh RPPS numbers; the poison-record and
empty-topic cases use a topic of their own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from bus.producer import EventProducer
from bus.settings import Settings
from processors.directory import Directory, Entry, Professional, from_csv, from_fhir_bundle
from processors.directory.cli import register
from processors.directory.feed import DirectoryFeed, publish, publish_tombstones
from schemas.sample_data import GP, HOSPITAL
from schemas.topics import DIRECTORY
from tests.integration.test_broker_contract import make_topic

pytestmark = pytest.mark.kafka

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"


def fresh_rpps() -> str:
    """A random RPPS with a Luhn key, so no two runs share a key on the compacted topic."""
    body = "1" + "".join(random.choices("0123456789", k=9))
    for d in "0123456789":
        digits = [int(c) for c in body + d][::-1]
        total = sum(
            n if i % 2 == 0 else (n * 2 - 9 if n * 2 > 9 else n * 2) for i, n in enumerate(digits)
        )
        if total % 10 == 0:
            return body + d
    raise AssertionError("unreachable")


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "the feed did not follow in time"
        await asyncio.sleep(0.05)


def sample_entries() -> list[Entry]:
    fhir = from_fhir_bundle((SAMPLES / "annuaire.json").read_bytes()).entries
    csv = from_csv((SAMPLES / "annuaire.csv").read_text(encoding="utf-8")).entries
    return [*fhir, *csv]


async def test_feed_holds_every_published_sample_entry_after_ready(
    catalog_applied: str, settings: Settings
) -> None:
    entries = sample_entries()
    async with EventProducer(catalog_applied, settings.kafka) as producer:
        sent = await publish(entries, producer)
    assert sent == 10  # 6 professionals + 3 organisations + 1 territory, duplicates merged
    async with DirectoryFeed(catalog_applied, settings.kafka) as feed:
        await feed.ready(30)
        assert feed.is_ready
        for entry in entries:
            assert feed.directory.get(entry.key) == entry
        gp = feed.directory.practitioner(GP.rpps)
        assert gp is not None and gp.mailbox == GP.mailbox
        territory = feed.directory.territory_for(HOSPITAL.finess, None)
        assert territory is not None and territory.id == "cpts-bords-allier"


async def test_feed_follows_updates_and_tombstones(
    catalog_applied: str, settings: Settings
) -> None:
    rpps = fresh_rpps()
    key = f"practitioner/{rpps}"
    v1 = Professional(rpps=rpps, family="Morel", given="Inès", mailbox="ines.morel@x.mssante.fr")
    v2 = Professional(rpps=rpps, family="Morel", given="Inès", mailbox="i.morel@y.mssante.fr")
    seen: list[Entry | None] = []

    def on_change(changed: str, entry: Entry | None) -> None:
        if changed == key:
            seen.append(entry)

    async with (
        EventProducer(catalog_applied, settings.kafka) as producer,
        DirectoryFeed(catalog_applied, settings.kafka, on_change=on_change) as feed,
    ):
        await feed.ready(30)
        assert feed.directory.practitioner(rpps) is None
        await publish([v1], producer)
        await eventually(lambda: feed.directory.practitioner(rpps) == v1)
        await publish([v2], producer)
        await eventually(lambda: feed.directory.practitioner(rpps) == v2)
        assert await publish_tombstones([key], producer) == 1
        await eventually(lambda: feed.directory.practitioner(rpps) is None)
        assert key not in feed.directory
    assert seen == [v1, v2, None]  # in offset order, each change once


async def test_late_feed_sees_the_latest_state_at_once(
    catalog_applied: str, settings: Settings
) -> None:
    kept, deleted = fresh_rpps(), fresh_rpps()
    old = Professional(rpps=kept, family="Roux", given="Paul", mailbox="p.roux@a.mssante.fr")
    new = Professional(rpps=kept, family="Roux", given="Paul", mailbox="p.roux@b.mssante.fr")
    gone = Professional(rpps=deleted, family="Blanc", given="Léa", postcode="03000")
    async with EventProducer(catalog_applied, settings.kafka) as producer:
        await publish([old, gone], producer)
        await publish([new], producer)
        await publish_tombstones([gone.key], producer)
    # started after every write was acknowledged: ready() alone must be enough
    async with DirectoryFeed(catalog_applied, settings.kafka, Directory()) as late:
        await late.ready(30)
        assert late.directory.practitioner(kept) == new
        assert late.directory.practitioner(deleted) is None


async def test_unreadable_records_are_skipped_and_an_empty_topic_is_ready(
    catalog_applied: str, settings: Settings, unique: str
) -> None:
    topic = await make_topic(catalog_applied, f"t.directory.{unique}", partitions=2)
    empty = await make_topic(catalog_applied, f"t.directory-empty.{unique}", partitions=2)
    good = Professional(rpps=fresh_rpps(), family="Petit", given="Max")
    async with EventProducer(catalog_applied, settings.kafka) as producer:
        await producer.send_raw(topic, b"practitioner/10003456125", b"{broken", [])
        await producer.send_raw(topic, None, b"{}", [])
        await publish([good], producer, topic=topic)
    async with DirectoryFeed(catalog_applied, settings.kafka, topic=topic) as feed:
        await feed.ready(30)
        assert feed.directory.practitioner(good.rpps) == good
        assert (feed.applied, feed.invalid) == (1, 2)
    async with DirectoryFeed(catalog_applied, settings.kafka, topic=empty) as idle:
        await idle.ready(10)
        assert len(idle.directory) == 0


def test_cli_import_then_show(catalog_applied: str, settings: Settings) -> None:
    """`carebus directory import` then `show`, as an operator runs them (sync: the CLI
    runs its own event loop)."""
    s = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap": catalog_applied})}
    )
    app = typer.Typer()

    @app.callback()
    def main() -> None: ...

    def current() -> Settings:
        return s

    register(app, Console(width=200), current, asyncio.run)
    runner = CliRunner()
    imported = runner.invoke(app, ["directory", "import", str(SAMPLES / "annuaire.json")])
    assert imported.exit_code == 0, imported.output
    assert f"published 9 entries to {DIRECTORY.name}" in imported.output
    shown = runner.invoke(app, ["directory", "show", "8" + GP.rpps])
    assert shown.exit_code == 0, shown.output
    assert GP.mailbox in shown.output
    assert "CPTS des Bords d'Allier" in shown.output  # territory from the GP's postcode
    missing = runner.invoke(app, ["directory", "show", "10000000008"])
    assert missing.exit_code == 1 and "is not in the directory" in missing.output

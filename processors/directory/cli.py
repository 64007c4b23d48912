"""`carebus directory import FILE` and `carebus directory show ID`: the operator's view.

Registered on the `carebus` app like the other operator commands (bus.cli_ops): the
import publishes to the compacted topic every worker follows, and `show` reads that same
topic, so what it prints is what routing sees.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bus.runtime import broker
from bus.settings import Settings
from processors.directory.model import (
    Directory,
    Entry,
    Organization,
    Professional,
    Territory,
    territory_from_settings,
    valid_finess,
    valid_rpps,
)

#: NOS TRE_G15 labels for the professions routing meets most
PROFESSIONS = {
    "10": "Médecin",
    "21": "Pharmacien",
    "40": "Chirurgien-dentiste",
    "50": "Sage-femme",
    "60": "Infirmier",
    "70": "Masseur-kinésithérapeute",
}


def register(
    app: typer.Typer,
    console: Console,
    settings: Callable[[], Settings],
    arun: Callable[[Coroutine[Any, Any, Any]], Any],
) -> None:
    """Add the `directory` command group to the `carebus` app."""
    directory_app = typer.Typer(
        help="Practitioner / organisation / territory directory (topic care.directory).",
        no_args_is_help=True,
    )
    app.add_typer(directory_app, name="directory")

    @directory_app.command("import")
    def import_file(
        file: Path = typer.Argument(
            ..., exists=True, dir_okay=False, help="Annuaire Santé FHIR Bundle (.json) or CSV."
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="Check the file, publish nothing."),
        strict: bool = typer.Option(
            False, "--strict", help="Publish nothing when any resource or line is in error."
        ),
    ) -> None:
        """Import a directory file and publish its entries (latest version per id wins)."""
        from processors.directory.importers import from_bytes

        result = from_bytes(file.read_bytes(), file.name)
        for issue in result.errors:
            console.print(f"[red]error[/red] {escape(str(issue))}")
        for issue in result.warnings:
            console.print(f"[yellow]warning[/yellow] {escape(str(issue))}")
        counts = result.counts()
        console.print(
            f"{file.name}: {counts['practitioner']} practitioner(s), "
            f"{counts['organization']} organisation(s), {counts['territory']} territory(ies), "
            f"{len(result.errors)} error(s), {len(result.warnings)} warning(s)"
        )
        if result.errors and (not result.entries or strict):
            console.print("[red]nothing published[/red]")
            raise typer.Exit(1)
        if dry_run or not result.entries:
            console.print("nothing published" + (" (dry run)" if dry_run else ""))
            return

        async def run() -> int:
            from bus.producer import EventProducer
            from processors.directory.feed import publish

            s = settings()
            async with broker(s) as bootstrap, EventProducer(bootstrap, s.kafka) as producer:
                return await publish(result.entries, producer)

        sent = arun(run())
        console.print(f"published {sent} entr{'y' if sent == 1 else 'ies'} to care.directory")

    @directory_app.command("show")
    def show(
        ident: str = typer.Argument(
            ..., metavar="RPPS|FINESS|TERRITORY", help="An RPPS, a FINESS or a territory id."
        ),
        timeout: float = typer.Option(30.0, help="Seconds to wait for the directory."),
    ) -> None:
        """Print a directory entry as routing sees it (read from care.directory)."""

        async def run() -> Directory:
            from processors.directory.feed import DirectoryFeed

            s = settings()
            defaults = [territory_from_settings(t) for t in s.routing.territories]
            async with broker(s) as bootstrap:
                feed = DirectoryFeed(bootstrap, s.kafka, Directory(defaults=defaults))
                await feed.start()
                try:
                    await feed.ready(timeout)
                except TimeoutError as exc:
                    console.print(f"[red]error:[/red] {escape(str(exc))}")
                    raise typer.Exit(1) from exc
                finally:
                    await feed.stop()
            return feed.directory

        directory = arun(run())
        entry = find(directory, ident)
        if entry is None:
            console.print(f"{escape(ident)} is not in the directory")
            raise typer.Exit(1)
        console.print(describe(directory, entry))


def find(directory: Directory, ident: str) -> Entry | None:
    """An entry by RPPS (or idNatPs "8"+RPPS), FINESS (or "1"+FINESS), territory id or key."""
    ident = ident.strip()
    if "/" in ident:
        return directory.get(ident)
    if valid_rpps(ident) or (len(ident) == 12 and ident[0] == "8" and valid_rpps(ident[1:])):
        return directory.practitioner(ident[-11:])
    if valid_finess(ident) or (len(ident) == 10 and ident[0] == "1" and valid_finess(ident[1:])):
        return directory.organization(ident[-9:])
    return directory.territory(ident)


def describe(directory: Directory, entry: Entry) -> Table:
    """The entry as a two-column table, with what routing derives from it."""
    table = Table(show_header=False, title=entry.key)
    table.add_column("field", style="bold")
    table.add_column("value")

    def row(label: str, value: object) -> None:
        table.add_row(label, escape("—" if value in (None, "", ()) else str(value)))

    if isinstance(entry, Professional):
        row("RPPS", entry.rpps)
        row("name", f"{entry.given} {entry.family}")
        label = PROFESSIONS.get(entry.profession or "", "")
        row("profession", f"{entry.profession} {label}".strip() if entry.profession else None)
        row("specialty", entry.specialty)
        row("MSSanté", entry.mailbox)
        org = directory.organization(entry.finess) if entry.finess else None
        row("FINESS", f"{entry.finess} {org.name}" if org else entry.finess)
        row("postcode", entry.postcode)
        territory = directory.territory_for(entry.finess, entry.postcode)
    elif isinstance(entry, Organization):
        row("FINESS", entry.finess)
        row("name", entry.name)
        row("MSSanté", entry.mailbox)
        row("postcode", entry.postcode)
        territory = directory.territory_for(entry.finess, entry.postcode)
    else:
        territory = None
        _territory_rows(entry, row)
    if territory is not None:
        row("territory", f"{territory.name} — {territory.coordinator_name}")
        row("coordinator", territory.coordinator_mailbox)
    return table


def _territory_rows(t: Territory, row: Callable[[str, object], None]) -> None:
    row("id", t.id)
    row("name", t.name)
    row("coordinator", f"{t.coordinator_name} <{t.coordinator_mailbox}>")
    row("FINESS", " ".join(t.finess))
    row("postcodes", " ".join(t.postcodes))

"""Operator commands: publish a message, replay what was refused or dead-lettered."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path

import orjson
import typer
from rich.console import Console
from rich.progress import Progress

from bus.runtime import broker
from bus.settings import Settings


def register(
    app: typer.Typer,
    console: Console,
    settings: Callable[[], Settings],
    arun: Callable[[Coroutine[object, object, None]], None],
) -> None:
    """Add the operator commands to the `carebus` app."""

    @app.command()
    def send(
        file: Path | None = typer.Argument(None, help="A FHIR message Bundle (JSON) to publish."),
        sample: str | None = typer.Option(
            None, "--sample", help="Publish a sample of this event type."
        ),
        count: int = typer.Option(1, "--count", "-n", help="How many samples (fresh event ids)."),
    ) -> None:
        """Validate and publish a message (a file, or built-in samples) like an ingress would."""
        from adapters.ingress import Ingress
        from bus.producer import EventProducer
        from schemas.outcome import ValidationFailed
        from schemas.samples import sample_bundle
        from schemas.validate import validate_message

        if (file is None) == (sample is None):
            raise typer.BadParameter("give a FILE or --sample EVENT_TYPE")
        if file is not None:
            payloads = [file.read_bytes()]
        else:
            payloads = [orjson.dumps(sample_bundle(sample)) for _ in range(count)]  # type: ignore[arg-type]
        try:
            messages = [validate_message(p, allow_bus_events=True) for p in payloads]
        except ValidationFailed as exc:
            for issue in exc.issues:
                console.print(f"[red]refused[/red] {issue}")
            raise typer.Exit(2) from exc

        async def run() -> None:
            s = settings()
            async with broker(s) as bootstrap, EventProducer(bootstrap, s.kafka) as producer:
                ingress = Ingress(producer)
                for msg in messages:
                    acc = await ingress.accept(msg, channel="cli")
                    console.print(
                        f"{msg.event_type.value} {acc.event_id} → {acc.topic} (case {msg.case_id})"
                    )

        arun(run())

    @app.command()
    def replay(
        source: str = typer.Option("deadletter", help="deadletter | rejected"),
        topic: str | None = typer.Option(None, help="Only dead letters from this topic."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Count, send nothing."),
        limit: int | None = typer.Option(None, help="At most this many."),
    ) -> None:
        """Send dead letters back to their topic, or re-validate rejected inputs."""
        from bus.replay import replay as do_replay

        if source not in ("deadletter", "rejected"):
            raise typer.BadParameter("source is deadletter or rejected")

        async def run() -> None:
            s = settings()
            with Progress(console=console) as bar:
                task = bar.add_task(f"replaying {source}", total=None)

                def tick(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                async with broker(s) as bootstrap:
                    report = await do_replay(
                        bootstrap,
                        s.kafka,
                        source=source,
                        topic_filter=topic,
                        dry_run=dry_run,
                        limit=limit,
                        progress=tick,
                    )
            console.print(
                f"replayed {report.replayed}, still invalid {report.still_invalid}, "
                f"skipped {report.skipped}" + (" (dry run)" if dry_run else "")
            )
            for reason in report.reasons[:20]:
                console.print(f"  still invalid: {reason}")

        arun(run())

    @app.command()
    def status() -> None:
        """Records per topic (dead letters and rejected inputs included) and consumer lag."""
        from rich.table import Table

        from bus.status import status as read_status

        async def run() -> None:
            s = settings()
            async with broker(s) as bootstrap:
                fills, lags = await read_status(bootstrap, s.kafka)
            topics = Table("topic", "records kept", title="Topics")
            for f in fills:
                style = "red" if f.records and f.topic in ("care.deadletter",) else ""
                topics.add_row(f.topic, f"{f.records:,}", style=style)
            console.print(topics)
            groups = Table("consumer group", "topic", "lag", title="Consumers")
            for g in lags:
                groups.add_row(g.group, g.topic, f"{g.lag:,}", style="yellow" if g.lag else "")
            console.print(groups)

        arun(run())

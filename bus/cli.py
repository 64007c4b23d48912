"""The `carebus` command line: run the bus, and the operator's everyday commands."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bus.runtime import broker
from bus.settings import Settings, load_settings

app = typer.Typer(
    name="carebus",
    help="CareBus: care-coordination event bus (hospitals, GPs, specialists, platforms).",
    no_args_is_help=True,
    add_completion=False,
)
topics_app = typer.Typer(help="Kafka topics of the catalog.", no_args_is_help=True)
schemas_app = typer.Typer(help="The event contract.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(schemas_app, name="schemas")

console = Console()
T = TypeVar("T")
_state: dict[str, Settings] = {}


def settings() -> Settings:
    return _state["settings"]


@app.callback()
def main(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="TOML settings file (or CAREBUS_CONFIG).", exists=True
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    from bus.logs import configure

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    _state["settings"] = s = load_settings(config)
    # text for humans, JSON lines in containers (CAREBUS_LOG__FORMAT=json); patient guard
    configure(s.log.format, s.log.level, verbose=verbose)


def arun(coro: Coroutine[object, object, T]) -> T:
    """Run a command's coroutine; known operational errors become one clear line."""
    from bus.embedded import EmbeddedKafkaError
    from bus.errors import BrokerUnavailable

    try:
        return asyncio.run(coro)
    except (EmbeddedKafkaError, BrokerUnavailable, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _serve(roles: tuple[str, ...]) -> None:
    from bus.stack import run_stack

    async def run() -> None:
        s = settings()
        stop = _stop_event()
        async with run_stack(s, roles) as running:
            table = Table(title=f"CareBus is running ({', '.join(roles)})", show_header=True)
            table.add_column("component")
            table.add_column("where")
            kind = "Kafka (external)" if s.kafka.bootstrap else "Kafka (embedded, KRaft)"
            table.add_row(kind, running.bootstrap)
            for name, where in running.endpoints.items():
                if name != "kafka":
                    table.add_row(name, where)
            table.add_row("data directory", str(s.data_dir))
            console.print(table)
            console.print("Ctrl-C or SIGTERM stops everything cleanly.")
            await stop.wait()
            console.print("stopping…")

    arun(run())


@app.command()
def up() -> None:
    """Run every role of CareBus on this machine (embedded Kafka unless kafka.bootstrap)."""
    from bus.stack import ROLES

    _serve(ROLES)


@app.command("run")
def run_roles(
    roles: list[str] = typer.Argument(
        ..., help="processors | adapters | ingress | dashboard (one or more)."
    ),
) -> None:
    """Run only some roles (scale each out with more processes on the same settings)."""
    from bus.stack import ROLES

    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise typer.BadParameter(f"unknown role(s) {unknown}; roles are {', '.join(ROLES)}")
    _serve(tuple(roles))


@app.command()
def demo() -> None:
    """Play a realistic day of a territory on the whole stack and check every outcome."""
    from bus.demo import run_demo

    try:
        ok = run_demo(settings(), console)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(0 if ok else 1)


@topics_app.command("apply")
def topics_apply() -> None:
    """Create or align every topic of the catalog (idempotent)."""
    from bus.provisioning import apply_topics

    async def run() -> None:
        s = settings()
        async with broker(s) as bootstrap:
            changes = await apply_topics(bootstrap, s.kafka)
        table = Table("topic", "action", "detail")
        for c in changes:
            table.add_row(c.topic, c.action, c.detail)
        console.print(table)

    arun(run())


@topics_app.command("list")
def topics_list() -> None:
    """Show the topics on the broker with partitions and retention."""
    from bus.provisioning import list_state
    from schemas.topics import BY_NAME

    async def run() -> None:
        s = settings()
        async with broker(s) as bootstrap:
            state = await list_state(bootstrap, s.kafka)
        table = Table("topic", "partitions", "replicas", "cleanup", "retention.ms", "in catalog")
        for name in sorted(state):
            t = state[name]
            table.add_row(
                name,
                str(t.partitions),
                str(t.replication),
                t.config.get("cleanup.policy", ""),
                t.config.get("retention.ms", ""),
                "yes" if name in BY_NAME else "",
            )
        console.print(table)

    arun(run())


@topics_app.command("catalog")
def topics_catalog() -> None:
    """Print the topic catalog (what `apply` provisions) without a broker."""
    from schemas.topics import CATALOG

    table = Table("topic", "partitions", "cleanup", "retention (days)", "event types")
    for t in CATALOG:
        days = "forever" if t.retention_ms < 0 else f"{t.retention_ms / 86_400_000:g}"
        table.add_row(
            t.name,
            str(t.partitions),
            t.cleanup_policy,
            days,
            ", ".join(e.value for e in t.event_types),
        )
    console.print(table)


@topics_app.command("render")
def topics_render(
    strimzi: bool = typer.Option(False, "--strimzi", help="Strimzi KafkaTopic + KafkaUser."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Directory (default: stdout)."),
    cluster: str = typer.Option("carebus", help="The Strimzi Kafka cluster's name."),
    replicas: int = typer.Option(3, help="Replication factor of every topic."),
    min_insync: int = typer.Option(2, help="min.insync.replicas of every topic."),
    auth: str = typer.Option("tls", help="KafkaUser authentication: tls | scram-sha-512."),
) -> None:
    """Render the catalog's topics and the roles' users/ACLs as Kubernetes resources."""
    from bus.strimzi import render

    if not strimzi:
        raise typer.BadParameter("choose a format: --strimzi")
    if auth not in ("tls", "scram-sha-512"):
        raise typer.BadParameter("--auth is tls or scram-sha-512")
    files = render(
        cluster=cluster,
        app_id=settings().processors.app_id,
        replicas=replicas,
        min_insync_replicas=min_insync,
        auth=auth,  # type: ignore[arg-type]
    )
    if out is None:
        typer.echo("---\n".join(files.values()), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    console.print(f"wrote {', '.join(str(out / n) for n in files)}")


@schemas_app.command("export")
def schemas_export(
    out: Path = typer.Option(Path("build/schemas"), "--out", "-o", help="Output directory."),
) -> None:
    """Write the envelope JSON Schema and the AsyncAPI 3 document of the topics."""
    from schemas.export import asyncapi, envelope_json_schema

    out.mkdir(parents=True, exist_ok=True)
    (out / "envelope-headers.schema.json").write_text(json.dumps(envelope_json_schema(), indent=2))
    (out / "asyncapi.json").write_text(json.dumps(asyncapi(), indent=2, ensure_ascii=False))
    console.print(f"wrote {out}/envelope-headers.schema.json and {out}/asyncapi.json")


from bus import cli_ops  # noqa: E402 - operator commands register on the app defined above

cli_ops.register(app, console, settings, arun)

from processors.directory import cli as directory_cli  # noqa: E402

directory_cli.register(app, console, settings, arun)

from adapters.dashboard import cli as dashboard_cli  # noqa: E402

dashboard_cli.register(app, console)

if __name__ == "__main__":  # pragma: no cover
    app()

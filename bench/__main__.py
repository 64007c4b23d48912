"""`python -m bench`: run every benchmark once (each figure = median of ≥3 runs).

Writes bench/results/latest.json, bench/results/latest.md and a dated copy, so the
history in bench/results/ shows regressions. Starts its own embedded broker in a
temporary directory unless CAREBUS_KAFKA__BOOTSTRAP is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import broker as broker_bench
from bench import codec
from bench.stats import Figure, summarise
from bus.runtime import broker
from bus.settings import KafkaSettings, Settings

RESULTS = Path(__file__).parent / "results"
SECTIONS = ("cpu", "broker", "pipeline", "adapters", "sla")


def cpu_figures() -> list[Figure]:
    figs: list[Figure] = []
    sample = b"{" + b" " * 8000 + b"}"
    for name, values in codec.run(sample).items():
        figs.append(summarise(name, "µs/event", values))
    try:
        from bench import validation
    except ImportError:  # pragma: no cover - validation bench lands with the builders
        return figs
    for name, values in validation.run().items():
        figs.append(summarise(name, "µs/event", values))
    return figs


async def broker_figures(
    n: int,
    runs: int,
    seconds: float,
    *,
    core: bool = True,
    with_pipeline: bool = True,
    with_adapters: bool = True,
    with_recovery: bool = True,
) -> list[Figure]:
    """Figures that need the broker: raw Kafka and ingress (`core`), the whole pipeline
    with a worker process (`with_pipeline`), and the outbound adapters
    (`with_adapters`), which use it for the durable e-parcours numbering."""
    from bench import adapters, ingress, pipeline

    raw: dict[str, list[float]] = {}
    loads: list[dict] = []
    adapter_figs: list[Figure] = []
    pipeline_figs: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="carebus-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), kafka=KafkaSettings(embedded_port=0))
        settings.kafka.bootstrap = os.environ.get("CAREBUS_KAFKA__BOOTSTRAP", "")
        async with broker(settings) as bootstrap:
            if core:
                raw = await broker_bench.run(bootstrap, n=n, runs=runs)
                loads = await ingress.run(bootstrap, settings, seconds=seconds, runs=runs)
            if with_pipeline:
                pipeline_figs = await pipeline.run(bootstrap, settings, Path(tmp), runs=runs)
            if with_adapters:
                adapter_figs += await adapters.run(runs, bootstrap=bootstrap, kafka=settings.kafka)
            if with_recovery:
                from bench import sla_recovery

                try:
                    pipeline_figs += await sla_recovery.run(
                        bootstrap, settings, Path(tmp), runs=runs
                    )
                except TimeoutError as exc:  # reported, never hangs the whole run
                    print(f"SLA recovery from the changelog: {exc}")
    figs = [summarise(f"raw {k} (2 KB, acks=all)", "msgs/s", v) for k, v in raw.items()]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in loads:
        groups.setdefault((r["kind"], r["offered"]), []).append(r)
    for (kind, offered), rs in groups.items():
        label = f"{kind} @ {offered:g}/s" if offered else f"{kind} max (closed loop)"
        figs.append(summarise(f"{label}: answered/s", "msgs/s", [r["rate"] for r in rs]))
        figs.append(summarise(f"{label}: p50 time-to-answer", "ms", [r["p50_ms"] for r in rs]))
        figs.append(summarise(f"{label}: p99 time-to-answer", "ms", [r["p99_ms"] for r in rs]))
        bad = [float(sum(n for c, n in r["codes"].items() if c not in ("AA", "202"))) for r in rs]
        if any(bad):
            figs.append(summarise(f"{label}: non-accepted answers", "count", bad))
    return figs + pipeline_figs + adapter_figs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-broker", action="store_true")
    parser.add_argument("--seconds", type=float, default=8.0, help="per ingress load step")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable); results then go to a dated file only, "
        "so latest.* always holds a complete run",
    )
    args = parser.parse_args()
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    only = set(args.only or SECTIONS)
    figures = cpu_figures() if "cpu" in only else []
    if "sla" in only:  # SLA scale: 100k and 1M pending deadlines (~3 min, ~1.5 GB)
        from bench import sla

        figures += [summarise(n, sla.UNITS[n], v) for n, v in sla.run(args.runs).items()]
    if args.skip_broker:
        if "adapters" in only:  # no broker: e-parcours numbering stays in memory
            from bench import adapters

            figures += asyncio.run(adapters.run(args.runs))
    elif only & {"broker", "pipeline", "adapters", "sla"}:
        figures += asyncio.run(
            broker_figures(
                args.messages,
                args.runs,
                args.seconds,
                core="broker" in only,
                with_pipeline="pipeline" in only,
                with_adapters="adapters" in only,
                with_recovery="sla" in only,
            )
        )

    table = Table("measure", "median", "min", "max", "unit", "runs", title="CareBus benchmarks")
    for f in figures:
        table.add_row(*f.row())
    Console(width=120).print(table)

    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    doc = {
        "time": stamp,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "figures": [f.as_dict() for f in figures],
    }
    md = ["| measure | median | min | max | unit | runs |", "|---|---:|---:|---:|---|---:|"]
    md += ["| " + " | ".join(f.row()) + " |" for f in figures]
    if args.only:
        partial = RESULTS / f"{stamp}-{'-'.join(sorted(only))}.json"
        partial.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
        print(f"results: {partial}")
        return
    for name in ("latest", stamp):
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    (RESULTS / "latest.md").write_text("\n".join(md) + "\n")
    print(f"results: {RESULTS / 'latest.json'}")


if __name__ == "__main__":
    main()

"""Soak: `carebus up` under a steady mixed load, then the end-to-end invariant.

    python -m bench.soak --seconds 300 --rate 300 --fhir-share 0.2     # make soak

A fresh embedded Apache Kafka (owned by this script) and `carebus up` as a subprocess on
it, in a temporary directory; a hospital sends A01s over MLLP and a practice software
sends referral journeys (requested → accepted → completed with its report) over FHIR
HTTP, paced (open loop) at `rate` events/s in total, `fhir-share` of them FHIR; 1 input
in 25 is invalid (AR / 422). Every 5 s: the stack process's RSS and the consumer lag of
every group (bus/status.py). At the end the load stops, the bus drains, and the
invariant (tests/reliability/invariant.py) is checked. Prints one JSON document; exits
1 when the invariant does not hold.

`--bounded` lowers every memory bound of the stack (dedup windows, the dashboard's case
cap, the SLA retention and its sweep) so that each fills within the first minutes: after
that, a flat RSS shows there is no unbounded growth, which the defaults (sized for a
territory's month) would take hours of load to reach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bus.embedded import EmbeddedKafka, free_port
from bus.provisioning import apply_topics
from bus.settings import KafkaSettings, Settings
from bus.status import status
from tests.reliability import harness as h

#: every bound low enough to be reached in minutes at 15 events/s
BOUNDED_TOML = """
[dashboard]
max_cases = 300
[sla]
retention = "60s"
[processors]
sweep_interval_s = 20
"""
BOUNDED_ENV = {"CAREBUS_KAFKA__DEDUP_WINDOW": "5000"}


async def soak(
    seconds: float, rate: float, fhir_share: float, workdir: Path, bounded: bool = False
) -> dict:
    bsettings = Settings(
        data_dir=workdir / "broker",
        kafka=KafkaSettings(embedded_port=free_port(), embedded_controller_port=free_port()),
    )
    broker = EmbeddedKafka(bsettings)
    bootstrap = await broker.start()
    kafka = KafkaSettings(bootstrap=bootstrap)
    stack = h.StackProcess(
        workdir,
        bootstrap,
        extra_toml=BOUNDED_TOML if bounded else "",
        extra_env=dict(BOUNDED_ENV) if bounded else {},
    )
    try:
        await apply_topics(bootstrap, kafka)
        await h.publish_directory(bootstrap, kafka)
        await stack.start()
        hl7_rate = rate * (1 - fhir_share)
        journeys = rate * fhir_share / 3  # 3 FHIR events per referral journey
        conns = max(1, round(hl7_rate / 10))  # ~10 msg/s per MLLP connection (one in flight)
        clients = max(1, round(journeys / 2))
        load = h.Load(
            stack.ports["mllp"],
            stack.base,
            hl7_interval=conns / hl7_rate if hl7_rate else 3600,
            fhir_interval=clients / journeys if journeys else 3600,
        )
        stop = asyncio.Event()
        samples: list[dict] = []
        t0 = time.monotonic()
        rss_start = stack.rss_kb()
        tasks = []
        if hl7_rate:
            tasks.append(asyncio.create_task(load.hl7(stop, conns)))
        if journeys:
            tasks.append(asyncio.create_task(load.fhir(stop, clients)))
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(5)
            _, lags = await status(bootstrap, kafka)
            per_group: dict[str, int] = {}
            for g in lags:
                per_group[g.group] = per_group.get(g.group, 0) + g.lag
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 1),
                    "sent": len(load.sent),
                    "rss_kb": stack.rss_kb(),
                    "lag": per_group,
                }
            )
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        rss_end = stack.rss_kb()
        drain_t = time.monotonic()
        report = await h.settle(
            bootstrap, kafka, load.sent, stack.data_dir, stack.store_url, within=300
        )
        drain_s = time.monotonic() - drain_t
        answers: dict[str, int] = {}
        for s in load.sent:
            answers[s.answer or "none"] = answers.get(s.answer or "none", 0) + 1
        max_lag = max((sum(s["lag"].values()) for s in samples), default=0)
        return {
            "seconds": round(elapsed, 1),
            "offered_rate": rate,
            "bounded": bounded,
            "fhir_share": fhir_share,
            "inputs": len({s.marker for s in load.sent}),
            "achieved_rate": round(len({s.marker for s in load.sent}) / elapsed, 1),
            "answers": answers,
            "rss_kb_start": rss_start,
            "rss_kb_end": rss_end,
            "max_total_lag": max_lag,
            "drain_s": round(drain_s, 1),
            "invariant_ok": report.ok,
            "delivered_effects": report.delivered,
            "failed_deliveries": report.failed,
            "violations": "" if report.ok else report.summary(),
            "samples": samples,
        }
    finally:
        await stack.stop()
        await broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--rate", type=float, default=300, help="events/s offered, in total")
    p.add_argument("--fhir-share", type=float, default=0.2, help="share of FHIR events")
    p.add_argument("--bounded", action="store_true", help="low memory bounds (see above)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="carebus-soak-"))
    try:
        result = asyncio.run(soak(args.seconds, args.rate, args.fhir_share, workdir, args.bounded))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.exit(0 if result["invariant_ok"] else 1)


if __name__ == "__main__":
    main()

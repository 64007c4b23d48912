"""The whole pipeline beside the raw-Kafka limit: ingress validation → routing → delivery.

What runs, on the embedded broker (one machine, 2 cores here):
- ingress: this process; each message is validated in full (`validate_message`:
  parse, CareBus rules, FHIR structure by `schemas.fastfhir`) and accepted by the real
  `Ingress` (acks=all write to its topic), as the HTTP and MLLP listeners do;
- one processor worker: a real `carebus run processors` process (faust, routing + SLA
  agents, directory and consent feeds), as deployed;
- a tracker in this process reading the delivery topics, noting when the first work
  item of each event arrives.

Measures:
- sustained throughput: N realistic events (5-26 KB: referrals with letters,
  discharges planned/completed, tele-expertise) accepted as fast as the ingress can,
  until the last one has its work items; events/s = N / (last work item - first accept).
- the physical limit in the same run: a plain aiokafka consume → produce (acks=all,
  commit per batch) of the same bytes on the same broker; the ratio is what we judge.
- latency at fixed offered loads: per event, first work item seen - ingress answer.
- a py-spy profile of the worker during the throughput run (bench/results/), which says
  where a worker's time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from adapters.ingress import Ingress
from bench import broker as raw_kafka
from bench.stats import Figure, summarise
from bus.errors import BrokerUnavailable
from bus.producer import EventProducer
from bus.settings import Settings
from processors.directory.feed import publish as publish_directory
from processors.directory.importers import from_bytes
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.samples import expertise_info, referral_info, stay_info
from schemas.topics import (
    DELIVERY_DMP,
    DELIVERY_EPARCOURS,
    DELIVERY_MSSANTE,
    DELIVERY_STATUS,
    EXPERTISE_EVENTS,
    REFERRAL_EVENTS,
    SLA_TICKS,
    STAY_EVENTS,
    topic_for,
)
from schemas.validate import ValidatedMessage, validate_message
from schemas.workitem import H_ITEM_EVENT

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "bench" / "results"
#: what a processors group consumes (start_at_end commits their ends for a new group)
INBOUND_TOPICS = (
    REFERRAL_EVENTS.name,
    STAY_EVENTS.name,
    EXPERTISE_EVENTS.name,
    DELIVERY_STATUS.name,
    SLA_TICKS.name,
)
IN_FLIGHT = 64  # concurrent accepts, as many HTTP/MLLP connections would give


def messages(n: int) -> list[bytes]:
    """n realistic inbound messages, each its own case, in a fixed mix of kinds/sizes,
    stamped now: with the samples' fixed 2025 dates every deadline would be overdue and
    fire at once, which is not what a live territory sends."""
    now = datetime.now(UTC)
    referral = dataclasses.replace(referral_info(), authored_on=now)
    big_letter = dataclasses.replace(referral.letter, content=referral.letter.content * 3)
    stay = dataclasses.replace(
        stay_info(),
        admitted_at=now - timedelta(days=6),
        planned_discharge=now + timedelta(hours=60),
        discharged_at=now,
    )
    expertise = dataclasses.replace(expertise_info(), authored_on=now)
    out = []
    for i in range(n):
        tag = uuid.uuid4().hex[:10]
        kind = i % 5
        if kind == 0:
            info = dataclasses.replace(referral, referral_id=f"B-{tag}")
            bundle = build_event(EventType.REFERRAL_REQUESTED, info)
        elif kind == 1:  # ~26 KB: the same referral with a three times longer letter
            info = dataclasses.replace(referral, referral_id=f"BL-{tag}", letter=big_letter)
            bundle = build_event(EventType.REFERRAL_REQUESTED, info)
        elif kind == 2:
            info = dataclasses.replace(stay, visit_number=f"B{tag}")
            bundle = build_event(EventType.DISCHARGE_PLANNED, info)
        elif kind == 3:
            info = dataclasses.replace(stay, visit_number=f"B{tag}")
            bundle = build_event(EventType.DISCHARGE_COMPLETED, info)
        else:
            info = dataclasses.replace(expertise, expertise_id=f"B-{tag}")
            bundle = build_event(EventType.EXPERTISE_REQUESTED, info)
        out.append(orjson.dumps(bundle))
    return out


class Tracker:
    """First work item per event id on the delivery topics (no group, from the end)."""

    def __init__(self, bootstrap: str) -> None:
        self.first: dict[str, float] = {}
        self._bootstrap = bootstrap
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            DELIVERY_MSSANTE.name,
            DELIVERY_DMP.name,
            DELIVERY_EPARCOURS.name,
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=5,
            max_partition_fetch_bytes=8 << 20,
        )
        await self._consumer.start()
        while not self._consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event
            await asyncio.sleep(0.05)
        await self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=100, max_records=5000)
            now = time.perf_counter()
            for records in batch.values():
                for r in records:
                    event = next((v for k, v in r.headers if k == H_ITEM_EVENT), b"").decode()
                    self.first.setdefault(event, now)

    async def wait_for(self, ids: list[str], timeout_s: float) -> float:
        """perf_counter time at which the last of `ids` had its first work item."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if all(i in self.first for i in ids):
                return max(self.first[i] for i in ids)
            await asyncio.sleep(0.02)
        missing = sum(1 for i in ids if i not in self.first)
        raise TimeoutError(f"{missing} of {len(ids)} events had no work item in {timeout_s}s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


def _envelope(msg: ValidatedMessage) -> Envelope:
    """The envelope the ingress writes for a validated message."""
    return Envelope(
        id=msg.event_id,
        type=msg.event_type.value,
        source=msg.source,
        subject=msg.case_id,
        data=msg.raw,
        time=msg.timestamp,
    )


async def accept_one(ingress: Ingress, raw: bytes) -> tuple[str, float]:
    """Validate (in full) and accept, as a listener does; (event id, answer time)."""
    msg = validate_message(raw)
    await ingress.accept(msg, channel="bench")
    return msg.event_id, time.perf_counter()


async def accept_all(ingress: Ingress, raws: list[bytes]) -> tuple[list[str], float]:
    """Accept everything with IN_FLIGHT concurrent senders; (event ids, start time)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for raw in raws:
        queue.put_nowait(raw)
    ids: list[str] = []

    async def sender() -> None:
        while not queue.empty():
            event_id, _ = await accept_one(ingress, queue.get_nowait())
            ids.append(event_id)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
    return ids, started


async def paced(
    ingress: Ingress, raws: list[bytes], rate: float
) -> tuple[dict[str, float], int, float]:
    """Offer messages at `rate`/s (open loop): each is validated when due, its write runs
    concurrently. Returns (event id → time of its ingress answer, refusals, achieved
    offered rate); an ingress that cannot keep up shows as a lower achieved rate."""
    answered: dict[str, float] = {}
    failed = 0
    tasks = []

    async def write(msg: ValidatedMessage) -> None:
        nonlocal failed
        try:
            await ingress.accept(msg, channel="bench")
        except BrokerUnavailable:
            failed += 1
            return
        answered[msg.event_id] = time.perf_counter()

    start = time.perf_counter()
    for i, raw in enumerate(raws):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(write(validate_message(raw))))
    offered = len(raws) / (time.perf_counter() - start)
    await asyncio.gather(*tasks)
    return answered, failed, offered


async def start_at_end(bootstrap: str, group: str) -> None:
    """Commit the inbound topics' end offsets for a new consumer group, so its workers
    route only what is written from now on (faust would start a new group at the
    earliest offset and first re-route every earlier benchmark's events)."""
    consumer = AIOKafkaConsumer(
        *INBOUND_TOPICS, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        while not consumer.assignment():  # noqa: ASYNC110 - aiokafka has no event for it
            await asyncio.sleep(0.05)
        parts = list(consumer.assignment())
        ends = await consumer.end_offsets(parts)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()


@contextlib.asynccontextmanager
async def workers(
    bootstrap: str, tmp: Path, count: int = 1
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """`count` real `carebus run processors` processes in one new consumer group."""
    app_id = f"bench-{uuid.uuid4().hex[:6]}"
    await start_at_end(bootstrap, app_id)
    config = tmp / f"{app_id}.toml"
    config.write_text(
        f'data_dir = "{tmp / app_id}"\n[kafka]\nbootstrap = "{bootstrap}"\n'
        f'[processors]\napp_id = "{app_id}"\n[observability]\nport = 0\n'
    )
    procs = []
    try:
        for i in range(count):
            env = {
                **os.environ,
                "CAREBUS_CONFIG": str(config),
                "CAREBUS_DATA_DIR": str(tmp / f"{app_id}-{i}"),
            }
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bus.cli",
                    "run",
                    "processors",
                    env=env,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=open(tmp / f"{app_id}-{i}.log", "wb"),  # noqa: ASYNC230
                    cwd=ROOT,
                )
            )
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (/proc, Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _cpu_machine() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / _TICK


@dataclasses.dataclass
class CpuShare:
    """Where the CPU of one pipeline run went, per event: this process (ingress and the
    tracker), the worker, and everything else (the broker's JVM, mostly)."""

    worker_pid: int
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        return (_cpu_of(os.getpid()), _cpu_of(self.worker_pid), _cpu_machine())

    def start(self) -> None:
        self._start = self._now()

    def per_event_ms(self, n: int) -> dict[str, float]:
        here, worker, machine = (b - a for a, b in zip(self._start, self._now(), strict=True))
        return {
            "ingress + tracker (bench process)": 1000 * here / n,
            "processor worker": 1000 * worker / n,
            "broker and the rest of the machine": 1000 * max(0.0, machine - here - worker) / n,
            "whole machine": 1000 * machine / n,
        }


async def profile(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    """py-spy (sampling, native speed) on the worker while it routes; None if absent."""
    spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if spy is None:
        return None
    return await asyncio.create_subprocess_exec(
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        "speedscope",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def run(
    bootstrap: str,
    settings: Settings,
    tmp: Path,
    *,
    n: int = 6000,
    runs: int = 3,
    loads: tuple[float, ...] = (100, 500, 1000),
    seconds: float = 8.0,
) -> list[Figure]:
    sample = ROOT / "deploy" / "samples" / "annuaire.json"
    figs: list[Figure] = []
    async with EventProducer(bootstrap, settings.kafka) as producer:
        await publish_directory(from_bytes(sample.read_bytes(), "annuaire.json").entries, producer)
        ingress = Ingress(producer)
        tracker = Tracker(bootstrap)
        await tracker.start()
        try:
            async with workers(bootstrap, tmp) as (proc,):
                warm = await accept_all(ingress, messages(200))
                await tracker.wait_for(warm[0], 180)  # the worker is up and warm
                figs += await _throughput(bootstrap, ingress, tracker, proc, n, runs)
                figs += await _latencies(ingress, tracker, loads, seconds, runs)
            figs += await _scaling(ingress, tracker, tmp, bootstrap, n, runs)
        finally:
            await tracker.stop()
    return figs


async def _throughput(
    bootstrap: str,
    ingress: Ingress,
    tracker: Tracker,
    proc: asyncio.subprocess.Process,
    n: int,
    runs: int,
) -> list[Figure]:
    rates, limits, ratios, ingress_rates, worker_rates = [], [], [], [], []
    cpu: dict[str, list[float]] = {}
    share = CpuShare(proc.pid)
    for i in range(runs):
        # the worker alone: a backlog of already-validated events, written at once
        backlog = [validate_message(raw) for raw in messages(n)]
        started = time.perf_counter()
        await ingress.producer.publish_many(
            (topic_for(m.event_type), _envelope(m)) for m in backlog
        )
        last = await tracker.wait_for([m.event_id for m in backlog], 300)
        worker_rates.append(n / (last - started))
        # the pipeline: validation and acceptance of each message, routing meanwhile
        raws = messages(n)
        spy = None
        if i == runs - 1:  # profile the last run
            spy = await profile(proc.pid, 8, RESULTS / "profile-worker.speedscope.json")
        share.start()
        ids, started = await accept_all(ingress, raws)
        ingress_rates.append(n / (time.perf_counter() - started))
        last = await tracker.wait_for(ids, 300)
        rate = n / (last - started)
        if spy is None or runs == 1:  # py-spy's own CPU would land in "the rest"
            for part, ms in share.per_event_ms(n).items():
                cpu.setdefault(part, []).append(ms)
        if spy is not None:
            await spy.wait()
        # the physical limit, same bytes, same broker, same run
        tag = uuid.uuid4().hex[:8]
        src = await raw_kafka._topic(bootstrap, f"bench.pipe.src.{tag}")
        dst = await raw_kafka._topic(bootstrap, f"bench.pipe.dst.{tag}")
        await raw_kafka.produce_bytes(bootstrap, src, raws)
        _, through = await raw_kafka.passthrough(bootstrap, src, dst, n)
        rates.append(rate)
        limits.append(through)
        ratios.append(100 * rate / through)
    size = sum(len(r) for r in messages(50)) // 50 // 1024
    return [
        summarise(
            f"pipeline: ingress validation → routing → delivery topics ({size} KB avg, "
            "1 worker process)",
            "events/s",
            rates,
        ),
        summarise(
            "pipeline: ingress alone (validate + accept, 64 in flight)", "events/s", ingress_rates
        ),
        summarise(
            "pipeline: worker alone (backlog of validated events → delivery topics)",
            "events/s",
            worker_rates,
        ),
        summarise("pipeline limit: aiokafka consume → produce, same bytes", "msgs/s", limits),
        summarise("pipeline / limit", "%", ratios),
        *(
            summarise(f"pipeline CPU per event: {part}", "ms/event", values)
            for part, values in cpu.items()
        ),
    ]


async def _scaling(
    ingress: Ingress, tracker: Tracker, tmp: Path, bootstrap: str, n: int, runs: int
) -> list[Figure]:
    """Worker-alone throughput with 1, 2 and 3 processes in one group (issue 7)."""
    figs = []
    for count in (1, 2, 3):
        rates = []
        async with workers(bootstrap, tmp, count):
            warm = await accept_all(ingress, messages(300))
            await tracker.wait_for(warm[0], 180)  # every worker joined and is warm
            for _ in range(runs):
                backlog = [validate_message(raw) for raw in messages(n)]
                started = time.perf_counter()
                await ingress.producer.publish_many(
                    (topic_for(m.event_type), _envelope(m)) for m in backlog
                )
                last = await tracker.wait_for([m.event_id for m in backlog], 300)
                rates.append(n / (last - started))
        figs.append(
            summarise(
                f"scale-out: {count} worker process(es), backlog → delivery topics",
                "events/s",
                rates,
            )
        )
    return figs


async def _latencies(
    ingress: Ingress, tracker: Tracker, loads: tuple[float, ...], seconds: float, runs: int
) -> list[Figure]:
    figs = []
    for rate in loads:
        p50s, p99s, offered, refused = [], [], [], []
        for _ in range(runs):
            answered, failed, achieved = await paced(ingress, messages(int(rate * seconds)), rate)
            await tracker.wait_for(list(answered), 300)
            lat = sorted((tracker.first[i] - t) * 1000 for i, t in answered.items())
            p50s.append(lat[len(lat) // 2])
            p99s.append(lat[min(len(lat) - 1, int(len(lat) * 0.99))])
            offered.append(achieved)
            refused.append(float(failed))
        label = f"ingress answer → first work item @ {rate:g}/s"
        figs.append(summarise(f"{label}: p50", "ms", p50s))
        figs.append(summarise(f"{label}: p99", "ms", p99s))
        figs.append(summarise(f"{label}: offered (achieved)", "events/s", offered))
        if any(refused):
            figs.append(summarise(f"{label}: refused (broker too slow)", "count", refused))
    return figs

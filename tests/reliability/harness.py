"""Run CareBus the way an operator does (`carebus up` / `carebus run ROLE…` as subprocesses
on a TOML file), drive it as the hospital (MLLP) and the practice software (FHIR HTTP),
and gather what the receivers hold for the invariant (tests/reliability/invariant.py).

Used by the fault tests in this folder and by `bench/soak.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from bus.embedded import free_port
from bus.settings import KafkaSettings, Settings
from tests.reliability import invariant as inv

REPO = Path(__file__).resolve().parents[2]
A01 = REPO / "tests" / "data" / "hl7" / "adt_a01_utf8.hl7"
A08 = REPO / "tests" / "data" / "hl7" / "adt_a08_unsupported.hl7"
SB, EB = b"\x0b", b"\x1c\x0d"
TOKEN = "reliability-" + uuid.uuid4().hex
#: the A01 sample's practitioners, given mailboxes in the directory the tests publish
GP_RPPS, RT_RPPS = "10101234567", "10107654321"
GP_MAIL, RT_MAIL = "jean.martin@medecin.mssante.fr", "amelie.chateau@ch-vichy.mssante.fr"
COORDINATOR = "coordination@cpts-bords-allier.mssante.fr"  # settings' default territory
HOSPITAL_FINESS = "030000178"


def config_toml(data_dir: Path, ports: dict[str, int], extra: str = "") -> str:
    return f"""
data_dir = "{data_dir}"
[http]
port = {ports["http"]}
[[http.clients]]
id = "reliability"
token = "{TOKEN}"
subscriptions = true
[mllp]
port = {ports["mllp"]}
[mssante]
mailbox_port = {ports["mailbox"]}
[dmp]
store_port = {ports["store"]}
{extra}
"""


def pick_ports() -> dict[str, int]:
    return {k: free_port() for k in ("http", "mllp", "mailbox", "store")}


@dataclasses.dataclass
class StackProcess:
    """One `carebus` process (all roles by default) and its log file."""

    tmp: Path
    bootstrap: str
    name: str = "stack"
    roles: tuple[str, ...] = ()
    extra_toml: str = ""
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    ports: dict[str, int] = dataclasses.field(default_factory=pick_ports)
    proc: asyncio.subprocess.Process | None = None

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def log(self) -> Path:
        return self.tmp / f"{self.name}.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['store']}"

    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir, kafka=KafkaSettings(bootstrap=self.bootstrap))

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} log tail ---\n{self.text()[-chars:]}"

    async def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.tmp / f"{self.name}.toml"
        config.write_text(config_toml(self.data_dir, self.ports, self.extra_toml))
        env = dict(
            os.environ,
            CAREBUS_KAFKA__BOOTSTRAP=self.bootstrap,
            CAREBUS_CONFIG=str(config),
            COLUMNS="200",
            **self.extra_env,
        )
        env.pop("CAREBUS_DATA_DIR", None)
        args = ["run", *self.roles] if self.roles else ["up"]
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bus.cli",
                "--verbose",
                *args,
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if b"CareBus is running" in self.log.read_bytes()[offset:]:
                return
            if self.proc.returncode is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}\n{self.tail()}")
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s\n{self.tail()}")

    async def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, no group left."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 40)
        except TimeoutError:
            await self.kill()

    def rss_kb(self) -> int:
        """Resident set size of the process (kB), from /proc."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return 0
        return 0


# --- the directory the tests publish ------------------------------------------------------


def directory_entries() -> list:
    from processors.directory.model import Professional

    return [
        Professional(rpps=GP_RPPS, family="MARTIN", given="Jean", mailbox=GP_MAIL),
        Professional(rpps=RT_RPPS, family="CHATEAU", given="Amelie", mailbox=RT_MAIL),
    ]


async def publish_directory(bootstrap: str, kafka: KafkaSettings) -> None:
    from bus.producer import EventProducer
    from processors.directory.feed import publish

    async with EventProducer(bootstrap, kafka) as producer:
        await publish(directory_entries(), producer)


def lookup(settings: Settings) -> object:
    """The directory routing sees in the stack: the published entries over the territories
    of the settings."""
    from processors.directory.model import Directory, territory_from_settings

    defaults = [territory_from_settings(t) for t in settings.routing.territories]
    return Directory(directory_entries(), defaults=defaults)


# --- inputs ----------------------------------------------------------------------------------


def _hl7_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def a01(tag: str) -> tuple[str, bytes]:
    """A valid A01 (admission.notified) for a new stay; (control id, bytes)."""
    raw = A01.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").rstrip(b"\r")
    control = f"R-{tag}"
    segs = raw.split(b"\r")
    out = []
    for seg in segs:
        f = seg.split(b"|")
        if f[0] == b"MSH":
            f[9] = control.encode()
            f[6] = _hl7_stamp().encode()
        elif f[0] == b"PV1":
            f[19] = f"S{tag}^^^CHBA&1.2.250.1.211.12.1.2&ISO^AN".encode()
        elif f[0] == b"ZBE":
            f[1] = f"MVT-{tag}^CHBA^1.2.250.1.211.10.200.2^ISO".encode()
        out.append(b"|".join(f))
    return control, b"\r".join(out) + b"\r"


def a01_event_id(control: str) -> str:
    from adapters.hl7.to_fhir import event_id_for

    return event_id_for(HOSPITAL_FINESS, control)


def unsupported(tag: str) -> tuple[str, bytes]:
    """An A08 (not supported): answered AR and kept on care.rejected-input."""
    raw = A08.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r").rstrip(b"\r")
    control = f"X-{tag}"
    segs = raw.split(b"\r")
    f = segs[0].split(b"|")
    f[9] = control.encode()
    segs[0] = b"|".join(f)
    return control, b"\r".join(segs) + b"\r"


def referral_bundles(tag: str) -> list[tuple[str, dict]]:
    """requested → accepted → completed (with its report) for a new routine referral."""
    from schemas.codes import DocType, EventType
    from schemas.events import build_event
    from schemas.model import DocumentInfo
    from schemas.samples import referral_info

    base = referral_info()
    report = DocumentInfo(
        doc_type=DocType.CONSULTATION_REPORT,
        title="Compte rendu de consultation",
        content=f"Compte rendu {tag}: examen normal.".encode(),
        created=base.authored_on,
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"report/{tag}")),
    )
    info = dataclasses.replace(base, referral_id=f"ADR-R-{tag}", priority="routine", report=report)
    now = datetime.now(UTC)
    out = []
    for et in (
        EventType.REFERRAL_REQUESTED,
        EventType.REFERRAL_ACCEPTED,
        EventType.REFERRAL_COMPLETED,
    ):
        bundle = build_event(et, info, timestamp=now)
        out.append((bundle["id"], bundle))
    return out


def invalid_bundle(tag: str) -> tuple[str, bytes]:
    """A message Bundle that fails validation (422) and is kept on care.rejected-input."""
    marker = f"invalid-{tag}"
    body = orjson.dumps(
        {"resourceType": "Bundle", "id": marker, "type": "message", "entry": [{"resource": {}}]}
    )
    return marker, body


# --- senders ---------------------------------------------------------------------------------


class Mllp:
    """One MLLP connection (reconnects when the peer closed it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, payload: bytes, timeout: float = 30.0) -> str:
        """The ACK code (MSA-1), or "" when no answer came (connection lost)."""
        for _ in range(2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(SB + payload + EB)
                await self.writer.drain()
                raw = await asyncio.wait_for(self.reader.readuntil(EB), timeout)  # type: ignore[union-attr]
                msa = next(s for s in raw.strip(SB + EB).split(b"\r") if s.startswith(b"MSA"))
                return msa.split(b"|")[1].decode()
            except (OSError, asyncio.IncompleteReadError, TimeoutError, StopIteration):
                await self.close()
        return ""

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def post(client: httpx.AsyncClient, body: bytes) -> tuple[str, str]:
    """(HTTP status, event id) of one $process-message; ("", "") when no answer."""
    try:
        r = await client.post(
            "/fhir/$process-message",
            content=body,
            headers={"content-type": "application/fhir+json", "authorization": f"Bearer {TOKEN}"},
        )
    except httpx.HTTPError:
        return "", ""
    return str(r.status_code), r.headers.get("x-carebus-event-id", "")


# --- gathering -------------------------------------------------------------------------------


async def observe(
    bootstrap: str,
    kafka: KafkaSettings,
    sent: Sequence[inv.Sent],
    data_dir: Path,
    store_url: str,
    *,
    since: dict | None = None,
    notifications: Sequence[tuple[str, dict]] = (),
    subscriptions: object | None = None,
    settings: Settings | None = None,
) -> tuple[list[inv.Expect], inv.Observed]:
    """Expected effects (route() over the input events found on their topics) and what the
    receivers hold."""
    from schemas.sample_data import PATIENT

    ids = {s.event_id for s in sent if s.event_id}
    bus = await inv.read_bus(bootstrap, kafka, ids, since=since)
    expected = inv.expected_for(bus.envelopes, lookup(settings or Settings()), subscriptions)
    mails, partial = inv.read_mailbox(data_dir)
    docs = await inv.read_store(store_url, [PATIENT.ins]) if store_url else []
    observed = inv.Observed(
        effects=[*mails, *docs, *inv.notification_effects(notifications)],
        failures=bus.failures,
        rejected=bus.rejected,
        dead_letters=bus.dead_letters,
        stored_events={e.id for e in bus.envelopes},
        partial_files=partial,
    )
    return expected, observed


async def settle(
    bootstrap: str,
    kafka: KafkaSettings,
    sent: Sequence[inv.Sent],
    data_dir: Path,
    store_url: str,
    *,
    within: float = 120.0,
    **kw: object,
) -> inv.Report:
    """Poll until the invariant holds (or `within` elapses), then return the last report."""
    end = time.monotonic() + within
    while True:
        expected, observed = await observe(bootstrap, kafka, sent, data_dir, store_url, **kw)  # type: ignore[arg-type]
        report = inv.check(sent, expected, observed, coordinator=COORDINATOR)
        if report.ok or time.monotonic() > end:
            return report
        await asyncio.sleep(2.0)


# --- a load that retries what is refused for now, like a real sender ----------------------


@dataclasses.dataclass
class Load:
    """HL7 A01s over MLLP and FHIR referral journeys over HTTP, at given intervals, until
    `stop`; a transient answer (AE, 503, no answer) is retried after `retry_s`, as a
    hospital or a practice software does. Every attempt is recorded in `sent`."""

    mllp_port: int
    http_base: str
    hl7_interval: float = 0.1
    fhir_interval: float = 0.5
    invalid_every: int = 25  # one refused input (A08 / invalid Bundle) every N
    retry_s: float = 0.5
    sent: list[inv.Sent] = dataclasses.field(default_factory=list)
    tag: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:8])

    def count(self, answer: str) -> int:
        return sum(1 for s in self.sent if s.answer == answer)

    async def _until_answered(
        self, stop: asyncio.Event, attempt: object, marker: str, via: str, event_id: str = ""
    ) -> inv.Sent | None:
        give_up: float | None = None  # after stop, an input in flight still gets 30 s
        while True:
            answer, eid = await attempt()  # type: ignore[operator]
            s = inv.Sent(marker, answer, eid or event_id, via)
            self.sent.append(s)
            if not s.transient:
                return s
            if stop.is_set():
                give_up = give_up or time.monotonic() + 30
                if time.monotonic() > give_up:
                    return s
            await asyncio.sleep(self.retry_s)

    async def hl7(self, stop: asyncio.Event, connections: int = 1) -> None:
        async def one_conn(c: int) -> None:
            conn = Mllp(self.mllp_port)
            n = 0
            t0 = time.monotonic()
            try:
                while not stop.is_set():
                    n += 1
                    tag = f"{self.tag}-{c}-{n}"
                    if self.invalid_every and n % self.invalid_every == 0:
                        marker, raw = unsupported(tag)
                        eid = ""
                    else:
                        marker, raw = a01(tag)
                        eid = a01_event_id(marker)

                    async def attempt(raw: bytes = raw) -> tuple[str, str]:
                        return await conn.send(raw), ""

                    await self._until_answered(stop, attempt, marker, "mllp", eid)
                    # paced (open loop): the n-th message is due at t0 + n * interval
                    await asyncio.sleep(max(0.0, t0 + n * self.hl7_interval - time.monotonic()))
            finally:
                await conn.close()

        await asyncio.gather(*(one_conn(c) for c in range(connections)))

    async def fhir(self, stop: asyncio.Event, clients: int = 1) -> None:
        async def one_client(c: int) -> None:
            n = 0
            t0 = time.monotonic()
            async with httpx.AsyncClient(base_url=self.http_base, timeout=40) as client:
                while not stop.is_set():
                    n += 1
                    tag = f"{self.tag}-{c}-{n}"
                    if self.invalid_every and n % max(1, self.invalid_every // 3) == 0:
                        marker, body = invalid_bundle(tag)

                        async def bad(body: bytes = body) -> tuple[str, str]:
                            return await post(client, body)

                        await self._until_answered(stop, bad, marker, "http")
                    for marker, bundle in referral_bundles(tag):
                        body = orjson.dumps(bundle)

                        async def attempt(body: bytes = body) -> tuple[str, str]:
                            return await post(client, body)

                        s = await self._until_answered(stop, attempt, marker, "http", marker)
                        if s is None or not s.acknowledged:
                            break  # the journey cannot go on
                    await asyncio.sleep(max(0.0, t0 + n * self.fhir_interval - time.monotonic()))

        await asyncio.gather(*(one_client(c) for c in range(clients)))


#: the topics the invariant reads (to take their end offsets before a test on a shared broker)
BUS_TOPICS = (
    "care.referral.events",
    "care.stay.events",
    "care.expertise.events",
    "care.delivery.status",
    "care.rejected-input",
    "care.deadletter",
)

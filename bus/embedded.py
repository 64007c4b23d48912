"""The embedded broker: a real single-node Apache Kafka (KRaft) run as a child process.

Why not an emulator: the ones tried lost acknowledged writes on a crash or reported
wrong offsets (see README). Maven resolves Kafka's runtime classpath from the project's
own build file (deploy/kafka/pom.xml) into the cache directory once; the broker's data
lives under the data directory, so a restarted `carebus up` resumes the same log.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from bus.settings import KafkaSettings, Settings

log = logging.getLogger("carebus.embedded")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}

LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {logdir}/server.log
appender.file.filePattern = {logdir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class EmbeddedKafkaError(RuntimeError):
    """The embedded broker could not be prepared or started; the message says why."""


def kafka_version(pom: Path) -> str:
    root = ET.parse(pom).getroot()  # noqa: S314 - our own build file
    node = root.find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not node.text:
        raise EmbeddedKafkaError(f"{pom} does not pin <kafka.version>")
    return node.text.strip()


def resolve_classpath(settings: Settings) -> list[Path]:
    """Jars of Apache Kafka's broker, resolved by Maven once into the cache directory."""
    pom = settings.kafka.embedded_pom or DEFAULT_POM
    if not pom.is_file():
        raise EmbeddedKafkaError(f"embedded broker build file not found: {pom}")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    libdir = settings.cache_dir / f"kafka-{kafka_version(pom)}-{digest}" / "lib"
    marker = libdir / ".complete"
    if not marker.exists():
        mvn = shutil.which("mvn")
        if mvn is None:
            raise EmbeddedKafkaError(
                "Maven (mvn) is needed to fetch the Kafka jars; apt-get install maven"
            )
        tmp = libdir.with_name("lib.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("resolving Apache Kafka jars with Maven into %s", libdir)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise EmbeddedKafkaError(
                "Maven could not resolve the Kafka jars:\n" + (proc.stdout + proc.stderr)[-3000:]
            )
        shutil.rmtree(libdir, ignore_errors=True)
        tmp.rename(libdir)
        marker.write_text(digest)
    jars = sorted(libdir.glob("*.jar"))
    if not jars:
        raise EmbeddedKafkaError(f"no jars in {libdir}; delete it and retry")
    return jars


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding, never starting
    with '-' (Kafka's own Uuid.randomUuid avoids it too: the CLI would read an option)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM the broker if CareBus dies without stopping it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class BrokerPaths:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        return self.root / "log4j2.properties"

    @property
    def cluster_id(self) -> Path:
        return self.root / "cluster.id"

    @property
    def server_log(self) -> Path:
        return self.root / "logs" / "server.log"


class EmbeddedKafka:
    """Start/stop one Apache Kafka broker+controller on loopback with data under data_dir."""

    def __init__(
        self,
        settings: Settings,
        *,
        extra_listeners: dict[str, tuple[str, int]] | None = None,
        extra_config: dict[str, str] | None = None,
        format_args: tuple[str, ...] = (),
    ) -> None:
        """`extra_listeners` (name → (security protocol, port)), `extra_config` (more
        server.properties) and `format_args` (e.g. `--add-scram`) add secured listeners
        next to the PLAINTEXT one, for tests of SASL/TLS clients against a real broker."""
        self.settings = settings
        self.kafka: KafkaSettings = settings.kafka
        self.extra_listeners = dict(extra_listeners or {})
        self.extra_config = dict(extra_config or {})
        self.format_args = tuple(format_args)
        self.paths = BrokerPaths(settings.data_dir / "kafka")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.controller_port = 0

    @property
    def bootstrap(self) -> str:
        return f"{self.kafka.embedded_host}:{self.port}"

    def _java(self) -> str:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
        if not java or not Path(java).exists():
            raise EmbeddedKafkaError(
                "Java 17+ runs the embedded broker: apt-get install openjdk-17-jre-headless"
            )
        return java

    def _write_config(self) -> None:
        host = self.kafka.embedded_host
        p = self.paths
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(p.logs),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # every topic is created on purpose (catalog, faust changelogs): an auto-created
            # topic gets 1 partition and breaks co-partitioning silently
            "auto.create.topics.enable": "false",
            "log.flush.interval.messages": "9223372036854775807",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "2",
            "log.retention.check.interval.ms": "60000",
            "unclean.leader.election.enable": "false",
        }
        for name, (protocol, port) in self.extra_listeners.items():
            props["listeners"] += f",{name}://{host}:{port}"
            props["advertised.listeners"] += f",{name}://{host}:{port}"
            props["listener.security.protocol.map"] += f",{name}:{protocol}"
        props.update(self.extra_config)
        p.root.mkdir(parents=True, exist_ok=True)
        p.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        p.log4j.write_text(LOG4J2.format(logdir=p.server_log.parent))

    def _jvm(self, cp: list[Path], main: str, *args: str) -> list[str]:
        heap = self.kafka.embedded_heap
        return [
            self._java(),
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.paths.log4j}",
            f"-Dkafka.logs.dir={self.paths.server_log.parent}",
            "-cp",
            os.pathsep.join(str(j) for j in cp),
            main,
            *args,
        ]

    def _format_once(self, cp: list[Path]) -> None:
        p = self.paths
        if (p.logs / "meta.properties").exists():
            return
        cid = p.cluster_id.read_text().strip() if p.cluster_id.exists() else _cluster_id()
        p.cluster_id.write_text(cid)
        cmd = self._jvm(
            cp,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cid}",
            f"--config={p.config}",
            *self.format_args,
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise EmbeddedKafkaError("formatting KRaft storage failed:\n" + proc.stderr[-3000:])
        log.info("formatted KRaft storage in %s (cluster %s)", p.logs, cid)

    def _choose_ports(self) -> None:
        host = self.kafka.embedded_host
        self.port = self.kafka.embedded_port or free_port(host)
        if self.kafka.embedded_port and port_in_use(host, self.port):
            raise EmbeddedKafkaError(
                f"port {host}:{self.port} is taken (another CareBus running?); "
                "set CAREBUS_KAFKA__EMBEDDED_PORT=0 to pick a free one"
            )
        self.controller_port = self.kafka.embedded_controller_port or free_port(host)

    async def start(self) -> str:
        """Start the broker and return its bootstrap address once it answers requests."""
        if self.proc and self.proc.poll() is None:
            return self.bootstrap
        cp = await asyncio.to_thread(resolve_classpath, self.settings)
        self._choose_ports()
        self._write_config()
        await asyncio.to_thread(self._format_once, cp)
        self.paths.server_log.parent.mkdir(parents=True, exist_ok=True)
        out = (self.paths.root / "logs" / "stdout.log").open("ab")
        # Popen from the event-loop thread on purpose: PDEATHSIG fires when the *thread*
        # that forked exits, so a worker thread would kill the broker when it ends.
        self.proc = subprocess.Popen(  # noqa: S603, ASYNC220 - non-blocking fork
            self._jvm(cp, "kafka.Kafka", str(self.paths.config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            start_new_session=True,  # Ctrl-C reaches CareBus, which stops the broker in order
        )
        out.close()
        await self._wait_ready()
        log.info("embedded Apache Kafka ready on %s (pid %s)", self.bootstrap, self.proc.pid)
        return self.bootstrap

    async def _wait_ready(self) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + self.kafka.start_timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise EmbeddedKafkaError(
                    f"the broker exited (code {self.proc.returncode if self.proc else '?'}):\n"
                    + self.log_tail()
                )
            if not port_in_use(self.kafka.embedded_host, self.port):
                await asyncio.sleep(0.2)  # not listening yet: no client, no error spam
                continue
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
            try:
                await admin.start()
                cluster = await admin.describe_cluster()
                if cluster.get("brokers"):
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet: retried until the deadline
                last = exc
            finally:
                with contextlib.suppress(Exception):
                    await admin.close()
            await asyncio.sleep(0.25)
        raise EmbeddedKafkaError(f"broker not ready after {self.kafka.start_timeout_s}s: {last}")

    def log_tail(self, lines: int = 30) -> str:
        chunks = []
        for f in (self.paths.root / "logs" / "stdout.log", self.paths.server_log):
            if f.exists():
                chunks.extend(f.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(chunks)

    async def stop(self, grace_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM → controlled shutdown, logs flushed); SIGKILL after timeout."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            log.warning("broker did not stop in %.0fs; killing it", grace_s)
            proc.kill()
            await asyncio.to_thread(proc.wait)

    def kill(self) -> None:
        """SIGKILL, for crash tests: nothing is flushed, the log must recover on restart."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def __aenter__(self) -> EmbeddedKafka:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

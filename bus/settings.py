"""Settings: a TOML file (`--config` / `CAREBUS_CONFIG`) overridden by `CAREBUS_<SECTION>__<KEY>`.

Empty broker/SMTP/DMP endpoints mean "use the embedded one", so the same program is the
one-machine demo and the production deployment. Secrets are `SecretStr`: they never
appear in a repr, a log line or an exception.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from processors.sla.policy import SlaPolicies


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "carebus"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "carebus"


class KafkaSettings(BaseModel):
    bootstrap: str = ""  # empty: run the embedded single-node Apache Kafka
    client_id: str = "carebus"
    replication_factor: int = 1  # production: 3
    min_insync_replicas: int = 1  # production: 2
    partitions: int | None = None  # override every event topic's partition count
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    request_timeout_ms: int = 15_000
    #: event ids each consumer (and the ingress) remembers, to turn a replayed tail into
    #: no-ops; ~200 bytes each, so this bounds that memory (default ≈ 40 MB per consumer)
    dedup_window: int = Field(default=200_000, gt=0)
    # the embedded broker
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 19092  # 0: pick a free port
    embedded_controller_port: int = 0  # 0: pick a free port
    embedded_heap: str = "512m"
    embedded_pom: Path | None = None  # default: deploy/kafka/pom.xml of this checkout
    start_timeout_s: float = 120.0

    def client_options(self) -> dict[str, Any]:
        """Connection options shared by aiokafka producers, consumers and admin clients."""
        opts: dict[str, Any] = {
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_context"] = self.ssl_context()
        if self.security_protocol.startswith("SASL"):
            opts["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return opts

    def ssl_context(self) -> ssl.SSLContext:
        """Verified TLS to the brokers (never CERT_NONE), client certificate when given."""
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(
                str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None
            )
        return ctx


class ApiClient(BaseModel):
    """One caller of the API, from settings (`[[http.clients]]`)."""

    id: str
    token: SecretStr | None = None  # or token_sha256, to keep clear tokens out of config
    token_sha256: str | None = None
    event_types: list[str] = ["*"]  # glob patterns: "referral.*", "discharge.planned"
    identifiers: list[str] = ["*"]  # RPPS / FINESS values it may act for; "*" = any
    subscriptions: bool = False  # may manage e-parcours subscriptions
    dashboard: bool = False  # may open the coordinator dashboard
    #: when the token stops being accepted (with its UTC offset, e.g. "2027-06-30T00:00:00Z");
    #: None = until it is removed or rotated. Expiry forces a rotation schedule on tokens
    #: shared with practice software vendors, which cannot be revoked by the caller.
    expires: AwareDatetime | None = None

    def digest(self) -> str:
        if self.token_sha256:
            return self.token_sha256.lower()
        if self.token:
            return hashlib.sha256(self.token.get_secret_value().encode()).hexdigest()
        return ""


class IngressSettings(BaseModel):
    """Rules every inbound channel (FHIR HTTP, MLLP) applies; replays are exempt."""

    #: how far ahead of the bus clock a message's own time may be (sender clock drift)
    max_clock_skew_s: float = 900.0
    #: older messages are refused (a flushed queue must not open cases as new); 0 = no limit
    max_message_age_days: float = 30.0


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 2_000_000
    #: API clients; none configured = every authenticated route answers 401
    clients: list[ApiClient] = []


class MllpSender(BaseModel):
    """A hospital allowed to send ADT over MLLP: where from, and as which facilities."""

    id: str
    networks: list[str] = ["127.0.0.0/8", "::1/128"]  # peer addresses (CIDR) it connects from
    finess: list[str] = []  # FINESS it may send for (9 chars); empty = any
    default_finess: str | None = None  # used when MSH-4 carries no FINESS


class MllpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 2575
    max_message_bytes: int = 1_000_000
    idle_timeout_s: float = 300.0
    max_connections: int = 1000
    default_charset: str = "8859/1"  # HL7 name, used when MSH-18 is empty (PAM FR default)
    #: who may connect; empty = loopback peers only (the embedded default)
    senders: list[MllpSender] = []


class MssanteSettings(BaseModel):
    """MSSanté secure mail: the SMTP relay, the bus's IMAP mailbox, the embedded mailbox.

    TLS is never optional: `tls` only chooses STARTTLS (587) or implicit TLS (465).
    CA / client certificate default to the embedded mailbox's local PKI when host is "".
    """

    host: str = ""  # empty: embedded local mailbox
    port: int = 587
    tls: Literal["starttls", "implicit"] = "starttls"  # implicit = SMTPS, usually port 465
    sender: str = "carebus@carebus.mssante.fr"
    read_receipt_to: str | None = None  # Disposition-Notification-To (default: sender)
    product_ref: str = ""  # X-MSS-NIL: the product reference from convergence.esante.gouv.fr
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None  # SMTP/IMAP AUTH user (default: sender, when a password is set)
    password: SecretStr | None = None
    timeout_s: float = 30.0
    reuse_connection: bool = True  # keep SMTP connections open between messages
    pool_size: int = 8  # SMTP sessions at once (and kept open) at most
    #: work items delivered at once (per-case order kept); above pool_size they queue
    concurrency: int = Field(default=8, ge=1, le=256)
    # the embedded local mailbox (used when host is "")
    mailbox_host: str = "127.0.0.1"
    mailbox_port: int = 2587  # 0: pick a free port
    mailbox_require_client_cert: bool = True  # mutual TLS, as on the real MSSanté
    mailbox_max_bytes: int = 25_000_000
    # receipts: IMAP over implicit TLS on the bus's own mailbox (empty host: no polling)
    imap_host: str = ""
    imap_port: int = 993
    imap_folder: str = "INBOX"
    imap_poll_s: float = 60.0


class DmpSettings(BaseModel):
    base_url: str = ""  # empty: embedded local document store
    #: bearer token sent to the record; the embedded store requires it when set
    token: SecretStr | None = None
    ca_file: Path | None = None  # CA bundle to verify an https record (system CAs otherwise)
    client_cert: Path | None = None  # mutual TLS towards the record, when it asks for it
    client_key: Path | None = None
    timeout_s: float = 15.0
    concurrency: int = Field(default=8, ge=1, le=256)  # ITI-65 in flight (per-case order)
    max_bundle_bytes: int = 20_000_000  # ITI-65 body limit, client and embedded store alike
    # the embedded store (used when base_url is empty)
    store_host: str = "127.0.0.1"  # a non-loopback host requires `token`
    store_port: int = 0  # 0: pick a free port


class EparcoursSettings(BaseModel):
    """e-parcours platforms: FHIR topic-based Subscriptions (R4B backport), rest-hook."""

    #: rest-hook hosts a subscription may target: exact names or "*.domain" patterns;
    #: empty = no subscription can be created (closed by default, SSRF guard)
    allowed_hosts: list[str] = []
    allow_http: bool = False  # plain http endpoints (dev on loopback only)
    #: non-public networks (CIDR) an endpoint may resolve to, e.g. ["127.0.0.0/8"] in dev;
    #: link-local (cloud metadata) addresses are refused whatever this says
    allowed_networks: list[str] = []
    ca_file: Path | None = None  # CA bundle to verify the platforms' certificates
    base_url: str = ""  # public FHIR base in notifications; empty: http://<http.host>:<port>/fhir
    timeout_s: float = 10.0  # per notification POST
    #: notifications in flight (per-case order kept; across cases, event numbers may
    #: reach a platform out of order, which the backport IG lets subscribers handle)
    concurrency: int = Field(default=4, ge=1, le=256)
    handshake_timeout_s: float = 5.0
    max_attempts: int = 6  # then the subscription goes to status error
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    min_heartbeat_s: int = 60  # shortest heartbeatPeriod a subscriber may ask for
    heartbeat_check_s: float = 5.0  # how often the heartbeat task looks for idle channels
    recovery_probe_s: float = 300.0  # how often an errored subscription is probed
    events_kept: int = 100  # notifications kept in memory per subscription for $events
    numbers_kept: int = 256  # delivered work item → eventNumber mappings kept per subscription
    max_subscriptions_per_client: int = 100
    max_body_bytes: int = 64_000  # POST /fhir/Subscription


class TerritorySettings(BaseModel):
    """One territory: which CPTS coordinator covers which facilities and postcodes.

    Routing sends stays, alerts and escalations to the coordinator of the territory that
    covers the event's facility (FINESS first), else the patient's postcode (longest
    prefix). A `carebus directory import` may add territories or override these by id.
    """

    id: str  # stable key, e.g. "cpts-bords-allier"
    name: str
    coordinator_name: str
    coordinator_mailbox: str  # MSSanté address of the coordination
    finess: list[str] = []  # facilities (9-char FINESS) the territory covers
    postcodes: list[str] = []  # postcode prefixes: "03" = the whole Allier département


class RoutingSettings(BaseModel):
    """Who gets what: the territories (the demo default is the CPTS des Bords d'Allier)."""

    territories: list[TerritorySettings] = [
        TerritorySettings(
            id="cpts-bords-allier",
            name="CPTS des Bords d'Allier",
            coordinator_name="Camille Renaud",
            coordinator_mailbox="coordination@cpts-bords-allier.mssante.fr",
            finess=["030780100"],  # Centre hospitalier de Moulins-Yzeure
            postcodes=["03"],
        )
    ]


class ProcessorsSettings(BaseModel):
    """The faust worker group. Workers with the same app_id split the partitions; a
    crashed worker's partitions, and so its pending deadlines, move to the others (or to
    its restart) only once its session timed out: that bounds how late a deadline can
    fire after a crash. faust's own default (60 s) is far from the SLA's "within a second".
    """

    app_id: str = "carebus-processors"  # consumer group, and prefix of the changelog topics
    session_timeout_s: float = 10.0  # >= the broker's group.min.session.timeout.ms (6 s)
    heartbeat_interval_s: float = 2.0  # at most a third of the session timeout
    #: how often each worker looks for finished cases to forget ([sla] retention)
    sweep_interval_s: float = Field(default=3600.0, gt=0)


class DashboardUser(BaseModel):
    """A coordinator account of the dashboard (`[[dashboard.users]]`).

    `password_scrypt` is what `carebus dashboard hash-password` prints
    ("scrypt$n$r$p$salt$hash"); a clear `password` is accepted for development only.
    """

    login: str
    name: str = ""  # shown in the page header, e.g. "Camille Renaud"
    password_scrypt: SecretStr | None = None
    password: SecretStr | None = None


class DashboardSettings(BaseModel):
    """The coordinator dashboard (`carebus run dashboard`), served under /tableau.

    No account configured: on a loopback host `carebus up` creates a one-time local
    account and prints its password; on any other host the dashboard refuses to start.
    """

    host: str = "127.0.0.1"
    port: int = 8088  # CAREBUS_DASHBOARD__PORT; 0 = any free port
    users: list[DashboardUser] = []
    #: signs the session cookies; empty = a random key per process (sessions end on restart)
    session_secret: SecretStr | None = None
    session_hours: float = 10.0
    #: cookies marked Secure (HTTPS only); None = yes unless the host is loopback
    secure_cookie: bool | None = None
    max_cases: int = 5000  # cases kept in memory (closed ones are forgotten first)
    max_timeline: int = 200  # entries kept per case
    max_items: int = 500  # delivery failures, dead letters, rejected inputs kept (each)
    refresh_s: float = 2.0  # how often an open page checks for news


class LogSettings(BaseModel):
    """Logging (`CAREBUS_LOG__FORMAT=json` in containers): text for humans, or one JSON
    object per line (time, level, logger, message, trace_id/span_id when known)."""

    format: Literal["text", "json"] = "text"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None  # None: -v decides


class ObservabilitySettings(BaseModel):
    """The per-process Prometheus endpoint (`GET /metrics`, no token: bind it to a
    private address) and the consumer-lag sampler feeding it."""

    metrics_enabled: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # CAREBUS_OBSERVABILITY__METRICS_PORT; 0 = any free port
    lag_interval_s: float = 10.0  # consumer lag sampling period (0 = no sampling)


class Settings(BaseSettings):
    """All of CareBus's configuration. See README "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="CAREBUS_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    source: str = "urn:carebus:bus"  # ce_source of events the bus emits itself
    kafka: KafkaSettings = KafkaSettings()
    ingress: IngressSettings = IngressSettings()
    http: HttpSettings = HttpSettings()
    mllp: MllpSettings = MllpSettings()
    mssante: MssanteSettings = MssanteSettings()
    dmp: DmpSettings = DmpSettings()
    eparcours: EparcoursSettings = EparcoursSettings()
    routing: RoutingSettings = RoutingSettings()
    processors: ProcessorsSettings = ProcessorsSettings()
    dashboard: DashboardSettings = DashboardSettings()
    log: LogSettings = LogSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    #: SLA policies per event type and priority, business calendar (see docs/sla.md)
    sla: SlaPolicies = Field(default_factory=SlaPolicies)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # precedence: explicit arguments > environment > TOML file > defaults
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = os.environ.get("CAREBUS_CONFIG")
        if config:
            path = Path(config)
            if not path.is_file():
                raise FileNotFoundError(f"CAREBUS_CONFIG points at {path}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load settings, with `config` taking the place of CAREBUS_CONFIG when given."""
    if config is not None:
        os.environ["CAREBUS_CONFIG"] = str(config)
    return Settings(**overrides)

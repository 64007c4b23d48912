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

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


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

    def digest(self) -> str:
        if self.token_sha256:
            return self.token_sha256.lower()
        if self.token:
            return hashlib.sha256(self.token.get_secret_value().encode()).hexdigest()
        return ""


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
    host: str = ""  # empty: embedded local mailbox
    port: int = 587
    sender: str = "carebus@carebus.mssante.fr"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    password: SecretStr | None = None


class DmpSettings(BaseModel):
    base_url: str = ""  # empty: embedded local document store


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
    http: HttpSettings = HttpSettings()
    mllp: MllpSettings = MllpSettings()
    mssante: MssanteSettings = MssanteSettings()
    dmp: DmpSettings = DmpSettings()

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

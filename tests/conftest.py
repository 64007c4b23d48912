"""Shared fixtures: one real Apache Kafka broker per test session.

`CAREBUS_KAFKA__BOOTSTRAP` set → the tests run against that broker (e.g. a real cluster);
otherwise the embedded KRaft broker is started in a temporary data directory, exactly
as `carebus up` starts it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from bus.embedded import EmbeddedKafka
from bus.settings import KafkaSettings, Settings

# CI replays the same generated examples every run (a red CI must mean a regression, not
# a new random draw); local runs keep exploring new examples.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("carebus")


@pytest.fixture(scope="session")
def settings(session_dir: Path) -> Settings:
    bootstrap = os.environ.get("CAREBUS_KAFKA__BOOTSTRAP", "")
    return Settings(
        data_dir=session_dir / "data",
        kafka=KafkaSettings(bootstrap=bootstrap, embedded_port=0),
    )


@pytest.fixture(scope="session")
async def bootstrap(settings: Settings) -> AsyncIterator[str]:
    if settings.kafka.bootstrap:
        yield settings.kafka.bootstrap
        return
    broker = EmbeddedKafka(settings)
    await broker.start()
    try:
        yield broker.bootstrap
    finally:
        await broker.stop()


@pytest.fixture(scope="session")
async def catalog_applied(bootstrap: str, settings: Settings) -> str:
    from bus.provisioning import apply_topics

    await apply_topics(bootstrap, settings.kafka)
    return bootstrap


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]

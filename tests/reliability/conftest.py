"""A broker of their own for the reliability tests.

The stacks these tests run use the fixed consumer groups of `carebus up`
(carebus-delivery-*, carebus-processors): on the session broker they would pick up the
work items other tests leave on the delivery topics and deliver them into this test's
mailbox, which the invariant would rightly call unexpected. So the package gets a fresh
embedded broker (the same EmbeddedKafka as the session one), shared by its tests, each of
which drains what it sent before it ends.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus.embedded import EmbeddedKafka, free_port
from bus.settings import KafkaSettings, Settings
from tests.reliability.harness import publish_directory

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def broker_settings(data_dir: Path) -> Settings:
    """Fixed ports: a killed broker restarts where the stack's clients look for it."""
    return Settings(
        data_dir=data_dir,
        kafka=KafkaSettings(embedded_port=free_port(), embedded_controller_port=free_port()),
    )


@pytest.fixture(scope="package")
async def rel_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    if os.environ.get("CAREBUS_KAFKA__BOOTSTRAP"):
        pytest.skip("the reliability tests run on a broker of their own (embedded)")
    from bus.provisioning import apply_topics

    settings = broker_settings(tmp_path_factory.mktemp("rel-broker"))
    broker = EmbeddedKafka(settings)
    bootstrap = await broker.start()
    try:
        await apply_topics(bootstrap, settings.kafka)
        await publish_directory(bootstrap, settings.kafka)
        yield bootstrap
    finally:
        await broker.stop()

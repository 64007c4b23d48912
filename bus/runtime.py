"""Composition root for the broker: the configured cluster, or the embedded one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bus.embedded import EmbeddedKafka, port_in_use
from bus.settings import Settings


@contextlib.asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[str]:
    """Yield a bootstrap address: `kafka.bootstrap` when set, else a started embedded broker
    (topics provisioned, stopped on exit, its data kept under the data directory)."""
    if settings.kafka.bootstrap:
        yield settings.kafka.bootstrap
        return
    k = settings.kafka
    if k.embedded_port and port_in_use(k.embedded_host, k.embedded_port):
        # a `carebus up` already runs the embedded broker: operator commands attach to it
        yield f"{k.embedded_host}:{k.embedded_port}"
        return
    embedded = EmbeddedKafka(settings)
    try:
        bootstrap = await embedded.start()
        # an embedded broker is ours: give it the catalog before anyone writes (idempotent)
        from bus.provisioning import apply_topics

        await apply_topics(bootstrap, settings.kafka)
        yield bootstrap
    finally:
        await embedded.stop()

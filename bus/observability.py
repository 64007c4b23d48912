"""Per-process observability: the Prometheus endpoint and the consumer-lag sampler.

Every CareBus process (`carebus up`, or one `carebus run <role>…`) serves its registry
(bus.metrics.REGISTRY) at `http://<observability.metrics_host>:<metrics_port>/metrics`,
without a token (labels carry event types, channels, codes and group names, never patient
data; bind it to a private address). The ingress role also serves it at the FHIR API's
`/metrics`, behind the API token.

Consumer lag: every `lag_interval_s`, for the consumer groups this process runs (faust
processors and delivery workers), the committed offsets are compared with the end
offsets of their topics (the same arithmetic as `carebus status`), giving
`carebus_consumer_lag{group,topic}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bus import metrics
from bus.asgi import serve
from bus.settings import KafkaSettings

log = logging.getLogger("carebus.observability")


def metrics_app() -> Starlette:
    async def scrape(_: Request) -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/metrics", scrape), Route("/healthz", healthz)])


@contextlib.asynccontextmanager
async def serve_metrics(host: str, port: int) -> AsyncIterator[int]:
    """Serve /metrics until the block exits; yields the bound port (0 = any free port)."""
    async with serve(metrics_app(), host, port) as bound:
        yield bound


async def sample_lag(
    admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, groups: Iterable[str]
) -> dict[tuple[str, str], int]:
    """{(group, topic): records behind} for the groups' committed offsets."""
    committed = {g: await admin.list_consumer_group_offsets(g) for g in groups}
    tps = {tp for offsets in committed.values() for tp in offsets}
    ends = await probe.end_offsets(list(tps)) if tps else {}
    lag: dict[tuple[str, str], int] = {}
    for group, offsets in committed.items():
        for tp, meta in offsets.items():
            if tp in ends and meta.offset >= 0:
                key = (group, tp.topic)
                lag[key] = lag.get(key, 0) + max(0, ends[tp] - meta.offset)
    return lag


async def run_lag_sampler(
    bootstrap: str,
    kafka: KafkaSettings,
    groups: Iterable[str],
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Update carebus_consumer_lag every `interval_s` until `stop` (errors: retried)."""
    groups = tuple(groups)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.client_options())
    probe = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **kafka.client_options()
    )
    await admin.start()
    await probe.start()
    try:
        while not stop.is_set():
            try:
                for (group, topic), behind in (await sample_lag(admin, probe, groups)).items():
                    metrics.CONSUMER_LAG.labels(group, topic).set(behind)
            except Exception as exc:  # noqa: BLE001 - a broker hiccup: try again next time
                log.warning("consumer lag sampling failed: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        await probe.stop()
        await admin.close()

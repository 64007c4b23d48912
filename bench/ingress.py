"""Ingress benchmarks: MLLP and HTTP time-to-answer at fixed offered loads, and the
sustained maximum, against the real listeners writing to the embedded broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator

from adapters.fhir_api.app import ApiContext, create_app
from adapters.fhir_api.auth import TokenRegistry
from adapters.hl7.listener import MllpListener
from adapters.ingress import Ingress
from bus.asgi import serve
from bus.producer import EventProducer
from bus.settings import ApiClient, MllpSettings, Settings

TOKEN = "bench-token-0123456789"


@contextlib.asynccontextmanager
async def listeners(bootstrap: str, settings: Settings) -> AsyncIterator[tuple[int, int]]:
    producer = EventProducer(bootstrap, settings.kafka)
    await producer.start()
    ingress = Ingress(producer)
    mllp = MllpListener(ingress, MllpSettings(port=0))
    mport = await mllp.start()
    tokens = TokenRegistry([ApiClient(id="bench", token=TOKEN)])  # type: ignore[arg-type]
    app = create_app(ApiContext(ingress, tokens, 2_000_000, "http://127.0.0.1/fhir"))
    try:
        async with serve(app, "127.0.0.1", 0) as hport:
            yield mport, hport
    finally:
        await mllp.stop()
        await producer.stop()


async def loadgen(kind: str, port: int, rate: float, seconds: float, conns: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        kind,
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
        "--connections",
        str(conns),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


async def run(
    bootstrap: str, settings: Settings, *, seconds: float = 8.0, runs: int = 3
) -> list[dict]:
    results: list[dict] = []
    async with listeners(bootstrap, settings) as (mport, hport):
        for kind, port in (("mllp", mport), ("http", hport)):
            for rate, conns in ((100, 4), (200, 4), (500, 8), (0, 8)):
                for _ in range(runs):
                    results.append(await loadgen(kind, port, rate, seconds, conns))
    return results

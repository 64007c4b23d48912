"""Run an ASGI app with uvicorn inside CareBus's own event loop (no extra threads)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn


@contextlib.asynccontextmanager
async def serve(app: object, host: str, port: int, **options: object) -> AsyncIterator[int]:
    """Serve `app` until the block exits; yields the bound port (useful with port 0)."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        **options,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    # CareBus owns SIGINT/SIGTERM and stops every component in order; uvicorn must not
    # replace those handlers (it would, and re-raise the signal after its own shutdown).
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield int(bound)
    finally:
        server.should_exit = True
        await task

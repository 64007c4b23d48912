"""Run an ASGI app with uvicorn inside CareBus's own event loop (no extra threads)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
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
    # Bind here: a taken port is then an OSError for the caller. Left to uvicorn, it is a
    # sys.exit(1) inside a task, which asyncio re-raises out of the event loop and kills
    # the whole process (a second worker on one host died of its metrics port).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted connections: without it a response waits ~40 ms for the
    # client's delayed ACK (Nagle), as uvicorn's own binding avoids
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    task = asyncio.create_task(server.serve(sockets=[sock]))
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

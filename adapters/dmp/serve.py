"""Run the DMP-like document store on its own: `python -m adapters.dmp.serve`.

The same store `carebus run adapters` embeds when `dmp.base_url` is empty, as a separate
service (compose, Kubernetes) so that several adapter workers share one record. Settings
as everywhere: `CAREBUS_DMP__STORE_HOST`, `CAREBUS_DMP__STORE_PORT`, `CAREBUS_DMP__TOKEN`
(required off loopback), `CAREBUS_DATA_DIR` (the SQLite file is `<data_dir>/dmp/`).
Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal

from adapters.dmp.store import embedded_store, store_path
from bus.settings import Settings


async def run(settings: Settings, stop: asyncio.Event) -> None:
    store_path(settings).parent.mkdir(parents=True, exist_ok=True)
    async with embedded_store(settings) as url:
        print(f"document store (IHE MHD ITI-65/67/68) on {url}", flush=True)
        await stop.wait()


def main() -> None:
    settings = Settings()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(serve())


if __name__ == "__main__":  # pragma: no cover
    main()

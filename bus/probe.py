"""Container health probe: `python -m bus.probe [URL] [--kafka]` exits 0 when healthy.

- with a URL (or `HEALTHCHECK_URL` in the environment): HTTP GET must answer 2xx, e.g. the
  ingress's `/healthz` or `/readyz`, the dashboard's page;
- with `--tcp HOST:PORT`: a TCP connection must open (a listener without a health route);
- with `--kafka` (or none of these): a metadata round trip to the configured brokers with the
  configured security (SASL/TLS), i.e. what a worker role needs to make progress.

Used by the image's HEALTHCHECK and the Kubernetes exec probes; standard library + the
project's own settings, no shell needed in the image.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import urllib.request


def check_http(url: str, timeout_s: float) -> str | None:
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - checked
            status = resp.status
    except OSError as exc:  # URLError, HTTPError (non-2xx), timeouts
        return f"{url}: {exc}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check_tcp(address: str, timeout_s: float) -> str | None:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"{address}: {exc}"


async def check_kafka(timeout_s: float) -> str | None:
    from bus.errors import BrokerUnavailable
    from bus.producer import EventProducer
    from bus.settings import Settings

    settings = Settings()
    if not settings.kafka.bootstrap:
        return "CAREBUS_KAFKA__BOOTSTRAP is empty: nothing to probe"
    producer = EventProducer(settings.kafka.bootstrap, settings.kafka, timeout_s=timeout_s)
    try:
        await producer.ping()
    except BrokerUnavailable as exc:
        return str(exc)
    finally:
        await producer.stop()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bus.probe", description=__doc__)
    parser.add_argument("url", nargs="?", default=os.environ.get("HEALTHCHECK_URL", ""))
    parser.add_argument("--tcp", metavar="HOST:PORT", help="a TCP listener must accept")
    parser.add_argument("--kafka", action="store_true", help="probe the brokers")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    problems = []
    if args.url:
        problems.append(check_http(args.url, args.timeout))
    if args.tcp:
        problems.append(check_tcp(args.tcp, args.timeout))
    if args.kafka or not (args.url or args.tcp):
        problems.append(asyncio.run(check_kafka(args.timeout)))
    failed = [p for p in problems if p]
    for p in failed:
        print(f"unhealthy: {p}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

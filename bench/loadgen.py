"""Load generator for the ingress benchmarks, run as its own process (so the bus's event
loop is not also the client's): open-loop at a fixed offered rate, or closed-loop at max.

    python -m bench.loadgen mllp --port P --rate 200 --seconds 10 --connections 4
    python -m bench.loadgen http --port P --token T --rate 200 --seconds 10

Prints one JSON line: sent, acked, codes, achieved rate, p50/p99/max time-to-answer (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

import httpx
import orjson

DATA = Path(__file__).parents[1] / "tests" / "data" / "hl7" / "adt_a16_8859-1.hl7"
SB, EB = b"\x0b", b"\x1c\x0d"


def hl7_message() -> bytes:
    raw = DATA.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    first, sep, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields[9] = f"B-{uuid.uuid4().hex[:16]}".encode()
    return b"|".join(fields) + sep + rest


def fhir_message() -> bytes:
    from schemas.samples import sample_bundle

    return orjson.dumps(sample_bundle("expertise.requested"))


async def mllp_conn(port: int, queue: asyncio.Queue, lat: list, codes: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            msg, t0 = item
            writer.write(SB + msg + EB)
            await writer.drain()
            ack = await reader.readuntil(EB)
            lat.append(time.perf_counter() - t0)
            code = ack.split(b"MSA|", 1)[1][:2].decode() if b"MSA|" in ack else "??"
            codes[code] = codes.get(code, 0) + 1
    finally:
        writer.close()


async def http_worker(
    client: httpx.AsyncClient, token: str, queue: asyncio.Queue, lat: list, codes: dict
) -> None:
    while True:
        item = await queue.get()
        if item is None:
            return
        msg, t0 = item
        r = await client.post(
            "/fhir/$process-message",
            content=msg,
            headers={"content-type": "application/fhir+json", "authorization": f"Bearer {token}"},
        )
        lat.append(time.perf_counter() - t0)
        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1


async def run(args: argparse.Namespace) -> dict:
    make = hl7_message if args.kind == "mllp" else fhir_message
    pool = [make() for _ in range(min(2000, int(args.rate * args.seconds) + 10 or 2000))]
    queue: asyncio.Queue = asyncio.Queue()
    lat: list[float] = []
    codes: dict[str, int] = {}
    if args.kind == "mllp":
        workers = [
            asyncio.create_task(mllp_conn(args.port, queue, lat, codes))
            for _ in range(args.connections)
        ]
        client = None
    else:
        client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{args.port}",
            timeout=30,
            limits=httpx.Limits(max_connections=args.connections),
        )
        workers = [
            asyncio.create_task(http_worker(client, args.token, queue, lat, codes))
            for _ in range(args.connections)
        ]
    sent = 0
    start = time.perf_counter()
    end = start + args.seconds
    if args.rate > 0:  # open loop: one message every 1/rate s, latency from its due time
        interval = 1.0 / args.rate
        while (now := time.perf_counter()) < end:
            due = start + sent * interval
            if due > now:
                await asyncio.sleep(due - now)
            queue.put_nowait((pool[sent % len(pool)], start + sent * interval))
            sent += 1
    else:  # closed loop: keep every connection busy
        while time.perf_counter() < end:
            while queue.qsize() < args.connections * 2:
                queue.put_nowait((pool[sent % len(pool)], time.perf_counter()))
                sent += 1
            await asyncio.sleep(0.001)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - start
    if client is not None:
        await client.aclose()
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 100 else [max(lat or [0])] * 99
    return {
        "kind": args.kind,
        "offered": args.rate,
        "sent": sent,
        "answered": len(lat),
        "codes": codes,
        "rate": len(lat) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": (lat[-1] if lat else 0) * 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["mllp", "http"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", default="")
    p.add_argument("--rate", type=float, default=0, help="msgs/s offered; 0 = as fast as possible")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=4)
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()

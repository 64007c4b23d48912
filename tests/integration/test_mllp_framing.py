"""MLLP framing over real asyncio TCP sockets on 127.0.0.1.

A tiny echo server built only from `read_frame`/`write_frame` answers every frame; it
records what the framing layer reported (skipped bytes, oversize, truncation, idle
timeout) so each test can check both what the client saw and what the server saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.hl7.ack import build_ack
from adapters.hl7.adt import map_adt
from adapters.hl7.framing import (
    END_BLOCK,
    START_BLOCK,
    FrameError,
    FrameTooLarge,
    FrameTruncated,
    IdleTimeout,
    read_frame,
    write_frame,
)
from adapters.hl7.message import parse_message
from schemas.outcome import Issue, IssueCode, ValidationFailed

DATA = Path(__file__).parents[1] / "data" / "hl7"
TIMEOUT = 5.0

Handler = Callable[[bytes], Awaitable[bytes]]


async def echo(payload: bytes) -> bytes:
    return payload


@dataclass
class Server:
    port: int
    frames: list[bytes] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    errors: list[FrameError] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


def too_large_marker(exc: FrameTooLarge) -> bytes:
    return b"TOO-LARGE " + exc.head[:3]


@asynccontextmanager
async def mllp_server(
    handler: Handler = echo,
    *,
    max_bytes: int = 64_000,
    idle: float | None = 2.0,
    limit: int = 2**16,
    on_too_large: Callable[[FrameTooLarge], bytes] = too_large_marker,
) -> AsyncIterator[Server]:
    state = Server(port=0)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    frame = await read_frame(
                        reader, max_bytes=max_bytes, idle_timeout=idle,
                        on_skipped=state.skipped.append,
                    )  # fmt: skip
                except FrameTooLarge as exc:  # connection still usable: answer and go on
                    state.errors.append(exc)
                    await write_frame(writer, on_too_large(exc))
                    continue
                except FrameError as exc:
                    state.errors.append(exc)
                    break
                if frame is None:
                    break
                state.frames.append(frame)
                await write_frame(writer, await handler(frame))
        finally:
            writer.close()
            state.closed.set()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0, limit=limit)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def replies(reader: asyncio.StreamReader, count: int) -> list[bytes | None]:
    return [
        await asyncio.wait_for(read_frame(reader, max_bytes=10**7, idle_timeout=TIMEOUT), TIMEOUT)
        for _ in range(count)
    ]


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK


@pytest.mark.asyncio
async def test_pipelined_frames_in_one_write_are_answered_in_order() -> None:
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        writer.write(frame(b"MSH|one") + frame(b"MSH|two") + frame(b"MSH|three"))
        await writer.drain()
        assert await replies(reader, 3) == [b"MSH|one", b"MSH|two", b"MSH|three"]
        writer.close()
        await asyncio.wait_for(srv.closed.wait(), TIMEOUT)
    assert srv.frames == [b"MSH|one", b"MSH|two", b"MSH|three"] and srv.errors == []


@pytest.mark.asyncio
async def test_a_frame_split_over_many_segments_is_reassembled() -> None:
    payload = (DATA / "adt_a16_8859-1.hl7").read_bytes()
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        wire = frame(payload)
        for i in range(0, len(wire), 7):  # 7-byte TCP writes, end marker split too
            writer.write(wire[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        assert await replies(reader, 1) == [payload]
        writer.close()


@pytest.mark.asyncio
async def test_end_marker_split_between_two_writes() -> None:
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        writer.write(START_BLOCK + b"MSH|x\x1c")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"\x0d")
        assert await replies(reader, 1) == [b"MSH|x"]
        writer.close()


@pytest.mark.asyncio
async def test_bytes_before_the_start_block_are_skipped_and_reported() -> None:
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        writer.write(b"\r\nnoise" + frame(b"MSH|a") + b"xx" + frame(b"MSH|b"))
        assert await replies(reader, 2) == [b"MSH|a", b"MSH|b"]
        writer.close()
    assert srv.skipped == [7, 2]


@pytest.mark.asyncio
async def test_a_restarted_frame_keeps_the_last_one() -> None:
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        writer.write(START_BLOCK + b"MSH|abandoned" + frame(b"MSH|retry"))
        assert await replies(reader, 1) == [b"MSH|retry"]
        writer.close()
    assert srv.skipped == [len(b"MSH|abandoned") + 1]


@pytest.mark.asyncio
async def test_oversize_frame_is_discarded_and_the_connection_stays_usable() -> None:
    async with mllp_server(max_bytes=1000, limit=256) as srv:
        reader, writer = await connect(srv.port)
        writer.write(frame(b"MSH|" + b"x" * 5000) + frame(b"MSH|after"))
        assert await replies(reader, 2) == [b"TOO-LARGE MSH", b"MSH|after"]
        writer.close()
    [error] = srv.errors
    assert isinstance(error, FrameTooLarge) and error.size == 5004 and error.limit == 1000
    assert error.head.startswith(b"MSH|xxx") and len(error.head) <= 4096


@pytest.mark.asyncio
async def test_frames_larger_than_the_reader_limit_but_within_max_bytes() -> None:
    payload = b"MSH|" + bytes(range(32, 127)) * 3000  # ~285 kB, far above a 1 kB buffer
    async with mllp_server(max_bytes=1_000_000, limit=1024) as srv:
        reader, writer = await connect(srv.port)
        writer.write(frame(payload) + frame(b"MSH|next"))
        assert await replies(reader, 2) == [payload, b"MSH|next"]
        writer.close()
    assert srv.errors == []


@pytest.mark.asyncio
async def test_eof_inside_a_frame_is_reported_as_truncated() -> None:
    async with mllp_server() as srv:
        _, writer = await connect(srv.port)
        writer.write(START_BLOCK + b"MSH|^~\\&|half a mess")
        await writer.drain()
        writer.close()
        await asyncio.wait_for(srv.closed.wait(), TIMEOUT)
    [error] = srv.errors
    assert isinstance(error, FrameTruncated) and error.received == 20


@pytest.mark.asyncio
async def test_clean_eof_between_frames_is_not_an_error() -> None:
    async with mllp_server() as srv:
        reader, writer = await connect(srv.port)
        writer.write(frame(b"MSH|only"))
        assert await replies(reader, 1) == [b"MSH|only"]
        writer.close()
        await asyncio.wait_for(srv.closed.wait(), TIMEOUT)
    assert srv.errors == [] and srv.frames == [b"MSH|only"]


@pytest.mark.asyncio
async def test_idle_connection_times_out_and_is_closed() -> None:
    async with mllp_server(idle=0.2) as srv:
        reader, _ = await connect(srv.port)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # server hung up
        assert 0.15 <= loop.time() - started < TIMEOUT
    [error] = srv.errors
    assert isinstance(error, IdleTimeout) and isinstance(error, TimeoutError)


@pytest.mark.asyncio
async def test_stalled_frame_times_out_too() -> None:
    async with mllp_server(idle=0.2) as srv:
        reader, writer = await connect(srv.port)
        writer.write(START_BLOCK + b"MSH|never ending")
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        writer.close()
    assert [type(e) for e in srv.errors] == [IdleTimeout]


@pytest.mark.asyncio
async def test_write_frame_refuses_payloads_that_would_break_framing() -> None:
    async with mllp_server() as srv:
        _, writer = await connect(srv.port)
        for bad in (b"MSH|\x1c\r", b"MSH|\x0b"):
            with pytest.raises(ValueError, match="0x0B/0x1C"):
                await write_frame(writer, bad)
        writer.close()


async def adt_listener(payload: bytes) -> bytes:
    """What the real listener does, minus Kafka: parse, map, acknowledge."""
    try:
        msg = parse_message(payload)
    except ValidationFailed:
        return build_ack(payload)
    try:
        map_adt(msg)
    except ValidationFailed as exc:
        return build_ack(msg, exc.issues)
    return build_ack(msg)


@pytest.mark.asyncio
async def test_adt_messages_over_mllp_get_acks_echoing_msh_10() -> None:
    names = ["adt_a01_utf8.hl7", "adt_a16_8859-1.hl7", "adt_a03_8859-1.hl7",
             "adt_a08_unsupported.hl7", "adt_a16_no_date.hl7"]
    async with mllp_server(adt_listener) as srv:
        reader, writer = await connect(srv.port)
        for name in names:
            writer.write(frame((DATA / name).read_bytes()))
        writer.write(frame(b"not hl7 at all"))
        acks = [parse_message(a) for a in await replies(reader, len(names) + 1) if a]
        writer.close()
    assert [(a.value("MSA", 1), a.value("MSA", 2)) for a in acks] == [
        ("AA", "CHBA-A01-000101"),
        ("AA", "CHBA-A16-000102"),
        ("AA", "CHBA-A03-000105"),
        ("AR", "CHBA-A08-000108"),
        ("AE", "CHBA-A16-000109"),
        ("AR", ""),
    ]
    assert acks[1].charset == "8859/1" and acks[0].charset == "UNICODE UTF-8"
    assert acks[4].value("ERR", 2) == "PV2" and acks[4].value("ERR", 3) == "101"


@pytest.mark.asyncio
async def test_oversize_adt_gets_an_ar_built_from_the_frame_head() -> None:
    big = (DATA / "adt_a01_utf8.hl7").read_bytes() + b"NTE|1||" + b"x" * 20_000

    def reject(exc: FrameTooLarge) -> bytes:
        return build_ack(exc.head, [Issue(IssueCode.TOO_LONG, f"over {exc.limit} bytes")])

    async with mllp_server(adt_listener, max_bytes=8000, on_too_large=reject) as srv:
        reader, writer = await connect(srv.port)
        writer.write(frame(big) + frame((DATA / "adt_a11_utf8.hl7").read_bytes()))
        too_large, next_one = (parse_message(r or b"") for r in await replies(reader, 2))
        writer.close()
    assert [type(e) for e in srv.errors] == [FrameTooLarge]
    assert (too_large.value("MSA", 1), too_large.value("MSA", 2)) == ("AR", "CHBA-A01-000101")
    assert too_large.value("ERR", 3) == "102"
    assert (next_one.value("MSA", 1), next_one.value("MSA", 2)) == ("AA", "CHBA-A11-000107")

"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol), bytes only, apart from parsing.

A frame is ``0x0B payload 0x1C 0x0D``. Modelled on python-hl7's ``hl7/mllp/streams.py``
(``readblock`` / ``writeblock``) but written as helpers over a plain
`asyncio.StreamReader`, using only its public ``readuntil``, so the listener keeps
asyncio's own server and the unread bytes of pipelined frames stay in the reader's buffer
between calls. What python-hl7 does not do and a hospital link needs:

* bytes before ``0x0B`` (line noise, a sender's keep-alive, the tail of a broken frame)
  are skipped and reported (count only: they may hold patient data) instead of failing;
* several frames pipelined in one TCP segment, and one frame split over many segments;
* a size limit that *discards* the oversize frame up to its end marker before raising
  `FrameTooLarge`, so the listener can answer ``AR`` and keep the connection usable;
* an idle timeout (`IdleTimeout`) and EOF in the middle of a frame (`FrameTruncated`).

Decoding is not done here: the charset is declared inside the message (MSH-18).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
#: How much of an oversize frame `FrameTooLarge` keeps, enough to read MSH for the ACK.
HEAD_BYTES = 4096


class FrameError(Exception):
    """A framing problem on the connection (never about the HL7 content)."""


class FrameTooLarge(FrameError):
    """The frame exceeded `max_bytes`; it was discarded up to its end marker.

    The connection is still usable. `head` holds the first bytes of the frame so the
    listener can still read MSH (separators, MSH-10) to build its ``AR``.
    """

    def __init__(self, size: int, limit: int, head: bytes) -> None:
        super().__init__(f"MLLP frame of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit
        self.head = head


class FrameTruncated(FrameError):
    """The peer closed the connection in the middle of a frame."""

    def __init__(self, received: int) -> None:
        super().__init__(f"connection closed inside an MLLP frame after {received} bytes")
        self.received = received


class IdleTimeout(FrameError, TimeoutError):
    """No frame (or no progress inside a frame) within `idle_timeout` seconds."""


async def _readuntil(reader: asyncio.StreamReader, sep: bytes, idle: float | None) -> bytes:
    """`readuntil` bounded by `idle` seconds; cancelling it leaves the reader's buffer intact."""
    try:
        async with asyncio.timeout(idle):
            return await reader.readuntil(sep)
    except TimeoutError:
        raise IdleTimeout(f"no MLLP data for {idle} s") from None


async def _skip_to_start(
    reader: asyncio.StreamReader, idle_timeout: float | None
) -> tuple[bool, int]:
    """Consume bytes up to and including 0x0B; returns (frame started, bytes skipped)."""
    skipped = 0
    while True:
        try:
            chunk = await _readuntil(reader, START_BLOCK, idle_timeout)
            return True, skipped + len(chunk) - 1
        except asyncio.IncompleteReadError as exc:  # EOF before any start block
            return False, skipped + len(exc.partial)
        except asyncio.LimitOverrunError as exc:  # a long run of noise: drop it and go on
            skipped += len(await reader.readexactly(exc.consumed))


async def read_frame(
    reader: asyncio.StreamReader,
    *,
    max_bytes: int,
    idle_timeout: float | None,
    on_skipped: Callable[[int], None] | None = None,
) -> bytes | None:
    """Read the next MLLP frame's payload, or None on a clean EOF between frames.

    `idle_timeout` bounds the wait for a frame to start and, inside a frame, the wait
    for each further chunk of up to the reader's limit (64 KiB by default). `on_skipped`
    is told how many stray bytes were dropped (before ``0x0B``, or a frame that was
    restarted by a new ``0x0B`` before its end marker).

    Raises `FrameTooLarge` (connection still usable), `FrameTruncated`, `IdleTimeout`.
    """
    started, skipped = await _skip_to_start(reader, idle_timeout)
    if skipped:
        _report(skipped, on_skipped)
    if not started:
        return None
    parts: list[bytes] = []
    size = 0  # bytes of the frame consumed so far, end marker included
    head: bytes | None = None  # set once the frame is known to be too large
    while True:
        try:
            chunk = await _readuntil(reader, END_BLOCK, idle_timeout)
            last = True
        except asyncio.IncompleteReadError as exc:
            raise FrameTruncated(size + len(exc.partial)) from None
        except asyncio.LimitOverrunError as exc:
            # The frame is longer than the reader's buffer limit: take what is there
            # (minus a possibly split end marker) and keep reading.
            chunk = await reader.readexactly(exc.consumed)
            last = False
        size += len(chunk)
        if head is None:
            parts.append(chunk)
            if size - (len(END_BLOCK) if last else 0) > max_bytes:
                # keep the start for the ACK, drop the rest as it comes
                joined = b"".join(parts)
                head = (joined[: -len(END_BLOCK)] if last else joined)[:HEAD_BYTES]
                parts.clear()
        if last:
            break
    if head is not None:
        raise FrameTooLarge(size - len(END_BLOCK), max_bytes, head)
    payload = b"".join(parts)[: -len(END_BLOCK)]
    restart = payload.rfind(START_BLOCK)
    if restart != -1:
        # A new frame began before the previous one ended: the sender gave up on the
        # first one. Keep the last frame, report the abandoned bytes.
        _report(restart + 1, on_skipped)
        payload = payload[restart + 1 :]
    return payload


def _report(count: int, on_skipped: Callable[[int], None] | None) -> None:
    log.warning("MLLP: skipped %d stray bytes outside frames", count)
    if on_skipped is not None:
        on_skipped(count)


async def write_frame(writer: asyncio.StreamWriter, payload: bytes) -> None:
    """Write one MLLP frame and wait until the transport accepted it (back-pressure)."""
    if START_BLOCK in payload or b"\x1c" in payload:
        raise ValueError("an HL7 payload cannot contain the MLLP block characters 0x0B/0x1C")
    writer.write(START_BLOCK + payload + END_BLOCK)
    await writer.drain()

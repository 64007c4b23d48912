"""Hostile HL7 v2 over MLLP, against the real listener and the real broker.

Every case checks the three promises: the sender gets a clear answer (an ACK ``AR`` whose
ERR names the problem, or a closed connection for what is not even a frame), a refusal
that could be read is kept on care.rejected-input with its reason (read back by a real
consumer), and the listener keeps serving the next good message.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from adapters.hl7.listener import MllpListener
from bus import metrics
from bus.settings import IngressSettings, Settings
from tests.hostile.support import (
    SB,
    Client,
    frame,
    good,
    hl7,
    reason,
    rejected_records,
    start_listener,
    stop_listener,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]


@pytest.fixture
async def mllp(catalog_applied: str, settings: Settings) -> AsyncIterator[MllpListener]:
    listener = await start_listener(catalog_applied, settings, idle_timeout_s=10)
    yield listener
    await stop_listener(listener)


def _a01(control: str) -> bytes:
    return hl7("adt_a01_utf8.hl7", control)


def _pid_insert(raw: bytes, junk: bytes) -> bytes:
    at = raw.index(b"\rPID|") + 10
    return raw[:at] + junk + raw[at:]


# (case, how to break a good UTF-8 A01, ERR-2 location expected, words expected in ERR-8)
BROKEN: list[tuple[str, Callable[[bytes], bytes], str, str]] = [
    ("missing MSH", lambda m: m.partition(b"\r")[2], "MSH", "MSH"),
    ("field separator is a letter", lambda m: b"MSHa" + m[4:].replace(b"|", b"a"), "MSH^1^1", ""),
    ("encoding characters repeated", lambda m: m.replace(b"^~\\&", b"^^\\&", 1), "MSH^1^2", ""),
    ("encoding characters missing", lambda m: m.replace(b"^~\\&|", b"|", 1), "MSH^1^2", ""),
    (
        "Latin-1 bytes declared UNICODE UTF-8",
        lambda m: m.decode("utf-8").encode("latin-1"),
        "MSH^1^18",
        "UTF-8",
    ),
    ("invalid UTF-8 sequence", lambda m: _pid_insert(m, b"\xff\xfe\xc3("), "MSH^1^18", "UTF-8"),
    (
        "UTF-8 bytes declared 8859/1",
        lambda m: m.replace(b"UNICODE UTF-8", b"8859/1"),
        "MSH^1^18",
        "UTF-8",
    ),
    (
        "UTF-8 bytes with MSH-18 empty (PAM FR default 8859/1)",
        lambda m: m.replace(b"UNICODE UTF-8", b""),
        "MSH^1^18",
        "UTF-8",
    ),
    ("unknown charset", lambda m: m.replace(b"UNICODE UTF-8", b"KOI8-R"), "MSH^1^18", "charset"),
    ("message cut inside PID", lambda m: m[: m.index(b"\rPID|") + 25], "PV1", ""),
    ("a second MSH (batch)", lambda m: m + m.partition(b"\r")[0] + b"\r", "MSH", "batch"),
    ("segment id in lower case", lambda m: m.replace(b"\rPV1|", b"\rpv1|"), "", "segment"),
]


@pytest.mark.parametrize(("case", "breaker", "where", "words"), BROKEN, ids=[c[0] for c in BROKEN])
async def test_broken_message_is_refused_named_kept_and_the_next_one_served(
    mllp: MllpListener, catalog_applied: str, case: str, breaker, where: str, words: str
) -> None:
    control = f"B-{uuid.uuid4().hex[:10]}"
    bad = breaker(_a01(control))
    ok, ok_control = good()
    client = await Client.to(mllp)
    await client.send(bad, ok)
    refused, accepted = await client.ack(), await client.ack()
    await client.close()

    assert refused["code"] == "AR", (case, refused)
    assert refused["err_text"], f"{case}: the ERR segment must say what is wrong"
    assert where in refused["err_location"], (case, refused["err_location"], refused["err_text"])
    assert words.lower() in refused["err_text"].lower(), (case, refused["err_text"])
    assert "LEF" not in refused["raw"].upper(), "no patient data echoed in the ACK"
    assert accepted["code"] == "AA" and accepted["control"] == ok_control

    kept = await rejected_records(catalog_applied, [bad])
    assert bad in kept, f"{case}: the refused bytes are kept on care.rejected-input"
    assert reason(kept[bad])


async def test_bad_message_between_good_ones_in_one_pipelined_write(mllp: MllpListener) -> None:
    (first, c1), (third, c3) = good(), good()
    client = await Client.to(mllp)
    await client.send(first, b"MSH|^~\\&|truncated", third)
    acks = [await client.ack() for _ in range(3)]
    await client.close()
    assert [a["code"] for a in acks] == ["AA", "AR", "AA"]
    assert acks[0]["control"] == c1 and acks[2]["control"] == c3


async def test_garbage_between_frames_is_skipped(mllp: MllpListener) -> None:
    (first, c1), (second, c2) = good(), good()
    noise = b"\x00\xff garbage \r\n" * 50 + b"\x1c\x0d"  # even a stray end marker
    client = await Client.to(mllp)
    junk = os.urandom(3000).replace(SB, b"")
    client.writer.write(noise + frame(first) + noise + junk + frame(second))
    await client.writer.drain()
    a1, a2 = await client.ack(), await client.ack()
    await client.close()
    assert (a1["code"], a1["control"], a2["code"], a2["control"]) == ("AA", c1, "AA", c2)


async def test_truncated_frame_then_eof_closes_without_ack_and_next_client_served(
    mllp: MllpListener,
) -> None:
    msg, _ = good()
    client = await Client.to(mllp)
    client.writer.write(SB + msg[: len(msg) // 2])  # the hospital's link drops mid-frame
    await client.writer.drain()
    client.writer.write_eof()
    assert await client.closed_by_peer(10), "the half frame gets no ACK: the sender retransmits"
    await client.close()
    ok, control = good()
    other = await Client.to(mllp)
    await other.send(ok)
    ack = await other.ack()
    await other.close()
    assert ack["code"] == "AA" and ack["control"] == control


async def test_abandoned_frame_restarted_by_a_new_start_block(mllp: MllpListener) -> None:
    half, _ = good()
    ok, control = good()
    client = await Client.to(mllp)
    client.writer.write(SB + half[:300] + frame(ok))
    await client.writer.drain()
    ack = await client.ack()
    await client.close()
    assert ack["code"] == "AA" and ack["control"] == control


async def test_ten_megabyte_message_refused_by_the_size_limit_connection_kept(
    catalog_applied: str, settings: Settings
) -> None:
    listener = await start_listener(
        catalog_applied, settings, max_message_bytes=1_000_000, idle_timeout_s=10
    )
    try:
        control = f"X-{uuid.uuid4().hex[:10]}"
        huge = _a01(control) + b"NTE|1||" + b"A" * (10 * 1024 * 1024)
        ok, ok_control = good()
        client = await Client.to(listener)
        started = time.monotonic()
        await client.send(huge)
        refused = await client.ack()
        await client.send(ok)
        accepted = await client.ack()
        await client.close()
        assert refused["code"] == "AR" and refused["control"] == control
        assert "exceeds" in refused["err_text"] and "1000000" in refused["err_text"]
        assert accepted["code"] == "AA" and accepted["control"] == ok_control
        assert time.monotonic() - started < 60
        # what is kept is the head of the frame (enough to identify it), not 10 MB
        kept = await rejected_records(catalog_applied, [huge[:4096]])
        assert "exceeds" in reason(kept[huge[:4096]])
    finally:
        await stop_listener(listener)


async def test_slow_loris_is_cut_by_the_read_timeout_others_unaffected(
    catalog_applied: str, settings: Settings
) -> None:
    idle = 2.0
    listener = await start_listener(catalog_applied, settings, idle_timeout_s=idle)
    try:
        slow = await Client.to(listener)
        msg, _ = good()
        trickle = SB + msg  # a frame that would take minutes at one byte per second
        started = time.monotonic()

        async def one_byte_per_second() -> float:
            for byte in trickle:
                if slow.reader.at_eof():
                    break
                try:
                    slow.writer.write(bytes([byte]))
                    await slow.writer.drain()
                except (ConnectionError, OSError):
                    break
                await asyncio.sleep(1.0)
            return time.monotonic() - started

        sender = asyncio.create_task(one_byte_per_second())
        # meanwhile a well-behaved hospital is answered at once, several times
        for _ in range(4):
            ok, control = good()
            client = await Client.to(listener)
            t0 = time.monotonic()
            await client.send(ok)
            ack = await client.ack()
            await client.close()
            assert ack["code"] == "AA" and ack["control"] == control
            assert time.monotonic() - t0 < 10
            await asyncio.sleep(0.5)
        assert await slow.closed_by_peer(idle + 10), "the trickling connection is closed"
        closed_after = time.monotonic() - started
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await slow.close()
        # bytes kept arriving every second, yet the connection was cut about `idle` s in
        assert closed_after < idle + 8, closed_after
        assert len(listener._connections) == 0
    finally:
        await stop_listener(listener)


def _refused_connections() -> float:
    labels = {"channel": "mllp", "code": "too-many-connections"}
    return metrics.REGISTRY.get_sample_value("carebus_ingress_rejected_total", labels) or 0.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


async def test_thousands_of_idle_connections_hold_the_limit_and_memory(
    catalog_applied: str, settings: Settings
) -> None:
    limit, total = 300, 2000
    listener = await start_listener(
        catalog_applied, settings, max_connections=limit, idle_timeout_s=15
    )  # idle timeout longer than the flood takes: nothing is reaped before the checks
    clients: list[Client] = []
    refusals = _refused_connections()
    try:
        before = _rss_mb()
        for _ in range(total // 200):  # in waves: the accept backlog is ~100
            clients += await asyncio.gather(*(Client.to(listener) for _ in range(200)))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert len(listener._connections) <= limit
        # every connection over the limit is refused at once: closed by the server
        closed = await asyncio.gather(*(c.closed_by_peer(0.2) for c in clients))
        assert sum(closed) >= total - limit, sum(closed)
        assert _refused_connections() - refusals >= total - limit  # visible in /metrics
        assert _rss_mb() - before < 200, "memory grows with the limit, not with the flood"
        # a good client meanwhile: refused clearly (closed) or served, never left hanging
        ok, control = good()
        probe = await Client.to(listener)
        try:
            await probe.send(ok)
            ack = await probe.ack(timeout=5)
            assert ack["code"] == "AA" and ack["control"] == control
        except AssertionError as exc:  # EOF: refused
            assert "closed without an ACK" in str(exc)
        except ConnectionError:  # RST: refused (the server closed with our bytes unread)
            pass
        await probe.close()
        # the idle ones are reaped by the idle timeout; then the listener serves again
        deadline = time.monotonic() + 40
        while listener._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert not listener._connections
        ok, control = good()
        after = await Client.to(listener)
        await after.send(ok)
        ack = await after.ack()
        await after.close()
        assert ack["code"] == "AA" and ack["control"] == control
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await stop_listener(listener)


async def test_reused_control_id_with_other_content_is_refused_not_dropped(
    mllp: MllpListener, catalog_applied: str
) -> None:
    """Same MSH-10, same facility, other content: the event id is the same, so an AA
    would be a lie (every consumer drops it as a duplicate). AR 205 on MSH-10, kept."""
    control = f"D-{uuid.uuid4().hex[:10]}"
    first = hl7("adt_a16_8859-1.hl7", control)
    other = first.replace(b"PV2|||||||||20240515", b"PV2|||||||||20240517")  # other date
    assert other != first
    client = await Client.to(mllp)
    await client.send(first, first, other)
    acks = [await client.ack() for _ in range(3)]
    await client.close()
    assert [a["code"] for a in acks] == ["AA", "AA", "AR"]  # a retransmission is fine
    assert acks[2]["control"] == control
    assert "MSH^1^10" in acks[2]["err_location"] and acks[2]["err_code"].startswith("205")
    assert "different content" in acks[2]["err_text"]
    kept = await rejected_records(catalog_applied, [other])
    assert "different content" in reason(kept[other])


def _dated(raw: bytes, when: datetime) -> bytes:
    """The message with MSH-7 set to `when` (in Paris time, as PAM FR senders write it)."""
    first, sep, rest = raw.partition(b"\r")
    fields = first.split(b"|")
    fields[6] = when.astimezone(ZoneInfo("Europe/Paris")).strftime("%Y%m%d%H%M%S").encode()
    return b"|".join(fields) + sep + rest


async def test_message_dated_ahead_of_the_clock_or_long_ago_is_refused_on_msh7(
    catalog_applied: str, settings: Settings
) -> None:
    """The `[ingress]` clock rule as `carebus up` applies it: a sender whose clock is a day
    ahead (or whose queue replays 2024) hears AR on MSH-7 saying which; a message dated
    now, and one 10 min ahead (within the tolerance), are accepted."""
    listener = await start_listener(catalog_applied, settings, rules=IngressSettings())
    now = datetime.now(UTC)
    ahead = _dated(_a01(f"F-{uuid.uuid4().hex[:10]}"), now + timedelta(days=1))
    stale = _a01(f"P-{uuid.uuid4().hex[:10]}")  # the sample's own MSH-7: May 2024
    drift = _dated(_a01(f"S-{uuid.uuid4().hex[:10]}"), now + timedelta(minutes=10))
    fresh = _dated(_a01(f"N-{uuid.uuid4().hex[:10]}"), now)
    try:
        client = await Client.to(listener)
        await client.send(ahead, stale, drift, fresh)
        acks = [await client.ack() for _ in range(4)]
        await client.close()
    finally:
        await stop_listener(listener)
    assert [a["code"] for a in acks] == ["AR", "AR", "AA", "AA"], acks
    assert all("MSH^1^7" in a["err_location"] for a in acks[:2]), acks[:2]
    assert "ahead of the bus clock" in acks[0]["err_text"] and "clock" in acks[0]["err_text"]
    assert "old" in acks[1]["err_text"] and "replay" in acks[1]["err_text"]
    kept = await rejected_records(catalog_applied, [ahead, stale])
    assert "ahead" in reason(kept[ahead]) and "old" in reason(kept[stale])

"""The embedded MSSanté-style mailbox: what a user gets when no SMTP relay is configured.

An aiosmtpd server on loopback that behaves like the real service where it matters to
the bus: TLS is required (STARTTLS with `require_starttls`, so a plaintext MAIL gets
`530`, or implicit TLS), the client presents a certificate chained to the local CA
(mutual TLS, as with IGC Santé certificates), and messages above a size limit are
refused. Each accepted message is written once per recipient mailbox as
`<data_dir>/mailbox/<address>/<timestamp>-<message-id-hash>.eml`.

Writes are durable and idempotent, because the bus delivers at least once:
- the message is written to a hidden temporary file and fsynced, then a per-mailbox
  claim `.ids/<hash>` is created with O_EXCL, then the file is renamed into place and
  the directory fsynced: a reader never sees a partial file;
- a redelivery with the same Message-ID finds the claim and is accepted (`250`, the
  sender must not retry) without a second file, so the receiver sees one effect;
- a claim left by a crash before the rename points at no file and is replaced.

Concurrent sessions (the delivery worker sends `mssante.concurrency` mails at once over
up to `mssante.pool_size` connections): each session is its own aiosmtpd protocol; the
blocking write + fsyncs run on the handler's own thread pool (`writers` threads, so the
fsyncs of parallel sessions overlap instead of queueing behind the loop's default pool),
serialised only per mailbox address (`_lock_for`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import re
import secrets
import ssl
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from adapters.mssante.tls import LocalPki, ensure_local_pki, server_context
from bus.settings import Settings

log = logging.getLogger("carebus.mailbox")

_ADDRESS = re.compile(
    r"[a-z0-9!#$%&'*+=?^_`{|}~-][a-z0-9!#$%&'*+=?^_`{|}~.-]{0,63}@[a-z0-9][a-z0-9.-]{0,252}"
)
_IDS = ".ids"


def normalise_address(address: str) -> str:
    """The mailbox name for an address, or ValueError. Lower case (one mailbox per
    person whatever the capitalisation) and a strict charset: it becomes a directory
    name, so no `/`, no leading dot, no `..` can get through."""
    text = address.strip().strip("<>").lower()
    if not _ADDRESS.fullmatch(text) or ".." in text:
        raise ValueError(f"not a mailbox address: {address!r}")
    return text


def mailbox_root(data_dir: Path) -> Path:
    return Path(data_dir) / "mailbox"


def mailbox_path(data_dir: Path, address: str) -> Path:
    return mailbox_root(data_dir) / normalise_address(address)


def message_key(raw: bytes) -> str:
    """Hash of the Message-ID (of the content when there is none): the idempotency key."""
    headers = BytesHeaderParser(policy=policy.compat32).parsebytes(raw)
    mid = " ".join(str(headers.get("Message-ID", "")).split())
    basis = f"mid:{mid}".encode() if mid else b"raw:" + raw
    return hashlib.sha256(basis).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Stored:
    path: Path
    created: bool  # False: the same Message-ID was already in this mailbox


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(box: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(box), threading.Lock())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _claimed(box: Path, claim: Path) -> Path | None:
    try:
        name = claim.read_text().strip()
    except FileNotFoundError:
        return None
    target = box / name
    if name and "/" not in name and target.is_file():
        return target
    claim.unlink(missing_ok=True)  # a crash between claim and rename: not stored
    return None


def store_message(
    data_dir: Path, address: str, raw: bytes, *, now: datetime | None = None
) -> Stored:
    """Write `raw` into `address`'s mailbox once per Message-ID (blocking: fsyncs)."""
    box = mailbox_path(data_dir, address)
    ids = box / _IDS
    ids.mkdir(parents=True, exist_ok=True)
    key = message_key(raw)
    claim = ids / key
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    with _lock_for(box):
        existing = _claimed(box, claim)
        if existing is not None:
            return Stored(existing, created=False)
        final = box / f"{stamp}-{key}.eml"
        tmp = box / f".tmp-{key}-{secrets.token_hex(4)}"
        try:
            _write_durable(tmp, raw)
        except OSError:  # e.g. ENOSPC: leave no half-written file behind
            tmp.unlink(missing_ok=True)
            raise
        try:
            _write_durable(claim, final.name.encode(), exclusive=True)
        except FileExistsError:  # another process: keep its copy
            tmp.unlink(missing_ok=True)
            return Stored(_claimed(box, claim) or final, created=False)
        os.replace(tmp, final)
        _fsync_dir(box)
        _fsync_dir(ids)
    return Stored(final, created=True)


def sweep_partial(data_dir: Path) -> int:
    """Remove the temporary files a killed writer left (written, never renamed, never
    answered 250: the sender resends them); returns how many. Call before serving: the
    mailbox must be the only writer of its data directory."""
    root = mailbox_root(data_dir)
    swept = 0
    for tmp in root.glob("*/.tmp-*") if root.is_dir() else ():
        tmp.unlink(missing_ok=True)
        swept += 1
    return swept


def message_files(data_dir: Path, address: str) -> list[Path]:
    """The .eml files of a mailbox, oldest first (names start with the arrival time)."""
    box = mailbox_path(data_dir, address)
    if not box.is_dir():
        return []
    return sorted(p for p in box.glob("*.eml") if not p.name.startswith("."))


def list_messages(data_dir: Path, address: str) -> list[EmailMessage]:
    """The messages of a mailbox, parsed, oldest first (for tests, demo, dashboard)."""
    parser = BytesParser(policy=policy.default)
    return [parser.parsebytes(p.read_bytes()) for p in message_files(data_dir, address)]  # type: ignore[misc]


def _tls_info(server: SMTP) -> tuple[bool, Any]:
    transport = server.transport
    if transport is None or transport.get_extra_info("ssl_object") is None:
        return False, None
    return True, transport.get_extra_info("peercert")


class MailboxHandler:
    """aiosmtpd handler: TLS and client-certificate checks, per-recipient storage.

    Subclass and override `handle_DATA` to simulate a failing server in tests.
    """

    def __init__(
        self, data_dir: Path, *, require_client_cert: bool = True, writers: int = 16
    ) -> None:
        self.data_dir = Path(data_dir)
        self.require_client_cert = require_client_cert
        self.writers = max(1, writers)
        self._pool: ThreadPoolExecutor | None = None

    async def store(self, address: str, raw: bytes, now: datetime) -> Stored:
        """`store_message` on the writer threads (the event loop never waits on fsync)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="mailbox-write")
        call = functools.partial(store_message, self.data_dir, address, raw, now=now)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Let the writer threads go once their writes are done (a later store starts
        new ones)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        secure, peercert = _tls_info(server)
        if not secure:  # implicit-TLS listeners never get here in clear; belt and braces
            return "530 5.7.0 Must issue a STARTTLS command first"
        if self.require_client_cert and not peercert:
            return "530 5.7.1 Client certificate required (mutual TLS)"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list
    ) -> str:
        try:
            normalise_address(address)
        except ValueError:
            return "553 5.1.3 Mailbox name not allowed"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        ssl_obj = server.transport.get_extra_info("ssl_object") if server.transport else None
        proto = f"{ssl_obj.version()}:{ssl_obj.cipher()[0]}" if ssl_obj else "none"
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        now = datetime.now(UTC)
        created = 0
        for rcpt in envelope.rcpt_tos:
            trace = (
                f"Return-Path: <{envelope.mail_from}>\r\nDelivered-To: {rcpt}\r\n"
                f"Received: from {session.host_name} ([{peer}]) by {server.hostname} "
                f"(CareBus mailbox) with ESMTPS ({proto}) for <{rcpt}>; "
                f"{format_datetime(now)}\r\n"
            ).encode("utf-8", "replace")
            try:
                stored = await self.store(rcpt, trace + raw, now)
            except OSError as exc:  # disk full, quota, I/O error: the sender must retry
                log.error("mailbox %s: cannot store a message: %s", rcpt, exc)
                return "452 4.3.1 Insufficient system storage, try again later"
            created += stored.created
        return f"250 2.0.0 OK stored {created}/{len(envelope.rcpt_tos)}"


class LocalMailbox:
    """The embedded SMTP server, run in the caller's event loop."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        implicit_tls: bool = False,
        require_client_cert: bool = True,
        max_bytes: int = 25_000_000,
        handler: MailboxHandler | None = None,
        pki: LocalPki | None = None,
        hostname: str = "localhost",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.implicit_tls = implicit_tls
        self.require_client_cert = require_client_cert
        self.max_bytes = max_bytes
        self.handler = handler or MailboxHandler(
            self.data_dir, require_client_cert=require_client_cert
        )
        self.pki = pki
        self.hostname = hostname
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()  # open connections

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalMailbox:
        ms = settings.mssante
        return cls(
            settings.data_dir,
            host=ms.mailbox_host,
            port=ms.mailbox_port,
            implicit_tls=ms.tls == "implicit",
            require_client_cert=ms.mailbox_require_client_cert,
            max_bytes=ms.mailbox_max_bytes,
        )

    def tls_context(self) -> ssl.SSLContext:
        pki = self.pki or ensure_local_pki(self.data_dir)
        self.pki = pki
        return server_context(
            pki.server_cert,
            pki.server_key,
            client_ca=pki.ca_cert,
            require_client_cert=self.require_client_cert,
        )

    def _protocol(self, ctx: ssl.SSLContext) -> SMTP:
        smtp = SMTP(
            self.handler,
            data_size_limit=self.max_bytes,
            hostname=self.hostname,
            tls_context=None if self.implicit_tls else ctx,
            require_starttls=not self.implicit_tls,
            auth_require_tls=True,
            timeout=300,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(smtp)
        return smtp

    async def start(self) -> None:
        if self._server is not None:
            return
        ctx = await asyncio.to_thread(self.tls_context)
        if swept := await asyncio.to_thread(sweep_partial, self.data_dir):
            log.warning("local mailbox: %d partial file(s) of an interrupted write removed", swept)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self._protocol(ctx),
            self.host,
            self.port,
            ssl=ctx if self.implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "local MSSanté mailbox on %s:%d (%s, client certificate %s) storing under %s",
            self.host,
            self.port,
            "implicit TLS" if self.implicit_tls else "STARTTLS required",
            "required" if self.require_client_cert else "optional",
            mailbox_root(self.data_dir),
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for smtp in list(self._sessions):
            if smtp.transport is not None:
                smtp.transport.close()
        self._sessions.clear()
        await server.wait_closed()
        self.handler.close()

    async def __aenter__(self) -> LocalMailbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

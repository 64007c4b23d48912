"""MSSanté outbound adapter: one work item → one mail over mutually-authenticated TLS.

Plugs into `adapters.delivery.DeliveryWorker` (which owns retries, status events and
dead letters); this module only sends and says truthfully what happened:
- **TLS is never optional.** Implicit TLS, or STARTTLS with aiosmtplib's
  `start_tls=True` (never `None`, which would silently stay in clear when the server
  offers no STARTTLS); the session is checked to be encrypted before MAIL FROM. The
  server certificate is verified against the configured CA with hostname checking,
  and our client certificate is presented (mutual TLS).
- **Classification** (`classify_error`): 4xx, refused connection, timeout, dropped
  connection → transient (the worker retries with backoff); 5xx → permanent; a
  certificate that does not verify (theirs or, as the server reports it, ours), or a
  server without STARTTLS → permanent: that is misconfiguration or an attack, and
  retrying would only hide it (logged as an error; delivery.failed alerts the
  coordinator).
- **Connection reuse**: up to `pool_size` connections are kept open between messages
  (TLS handshakes dominate the cost of small mails); a pooled connection the server
  has since closed is replaced once, transparently. `reuse=False` opens one
  connection per message (the benchmark compares both).
- **Parallel sessions**: `pool_size` is also how many SMTP transactions run at once
  (the delivery worker hands over `mssante.concurrency` items at a time; more than
  `pool_size` wait for a connection). The mail is built before a connection is taken.
- The password is a `SecretStr`, unwrapped only when handed to aiosmtplib; it never
  reaches a log line or an outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
from aiosmtplib.errors import (
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from pydantic import SecretStr

from adapters.delivery import Outcome
from adapters.mssante.mail import build_mail, build_notice_mail, mail_address
from adapters.mssante.sent_index import H_CASE, SentIndex, SentRef
from adapters.mssante.tls import mssante_client_context
from bus.settings import Settings
from schemas.codes import EventType
from schemas.workitem import WorkItem

log = logging.getLogger("carebus.mssante")

IDLE_S = 60.0  # a pooled connection idle longer is closed (servers drop them anyway)
#: OpenSSL alert reasons meaning "the server refused the certificate we presented"
_OUR_CERT_REFUSED = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


class TlsUnavailable(SMTPException):
    """The server offers no STARTTLS (or the session is not encrypted): never send."""


class ClosedAfterTls(SMTPServerDisconnected):
    """The server hung up as soon as TLS was up. Under TLS 1.3 that is how a refused
    client certificate looks from our side (the alert is often lost), but a restart
    looks the same: transient, with a diagnostic that points at the certificate."""


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to connect: everything TLS- and auth-related in one place."""

    host: str
    port: int
    tls_context: ssl.SSLContext
    implicit_tls: bool = False
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = 30.0

    def __repr__(self) -> str:  # no context internals, never the password
        mode = "implicit-tls" if self.implicit_tls else "starttls"
        return f"SmtpTarget({self.host}:{self.port}, {mode}, user={self.username!r})"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def classify_error(exc: BaseException) -> Outcome:
    """Map a failed send to an Outcome (pure; the rules are in the module docstring)."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            why = getattr(e, "verify_message", None) or str(e)
            return Outcome.permanent(
                f"TLS: server certificate not verified ({why}); check mssante.ca_file and host"
            )
        if isinstance(e, ssl.SSLError) and (e.reason or "") in _OUR_CERT_REFUSED:
            return Outcome.permanent(
                f"TLS: the server refused our client certificate ({e.reason}); "
                "check mssante.client_cert/client_key"
            )
        if isinstance(e, TlsUnavailable):
            return Outcome.permanent(f"TLS required, refusing plaintext: {e}")
    if isinstance(exc, SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return Outcome.permanent(f"recipient refused: {text}")
        return Outcome.transient(f"recipient deferred: {text}")
    if isinstance(exc, SMTPResponseException):
        text = f"{exc.code} {exc.message}".strip()
        if 500 <= exc.code < 600:
            return Outcome.permanent(f"SMTP {text}")
        return Outcome.transient(f"SMTP {text}")
    if isinstance(exc, SMTPException) and "STARTTLS" in str(exc).upper():
        return Outcome.permanent(f"TLS required, refusing plaintext: {exc}")
    # refused, timeout, reset, DNS, TLS handshake cut short, unknown: try again later
    return Outcome.transient(f"{type(exc).__name__}: {exc}")


def _stale(exc: BaseException) -> bool:
    """A reused connection the server had already closed (idle timeout, 421)."""
    if isinstance(exc, SMTPServerDisconnected):
        return True
    return isinstance(exc, SMTPResponseException) and exc.code == 421


class MssanteAdapter:
    """`ChannelAdapter` for MSSanté mail (name "mssante")."""

    name = "mssante"

    def __init__(
        self,
        target: SmtpTarget,
        *,
        sender: str,
        read_receipt_to: str | None = None,
        product_ref: str = "",
        reuse: bool = True,
        pool_size: int = 8,
        index: SentIndex | None = None,
    ) -> None:
        self.target = target
        self.sender = sender
        self.read_receipt_to = read_receipt_to or sender
        self.product_ref = product_ref
        self.reuse = reuse
        self.index = index
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots = asyncio.Semaphore(max(1, pool_size))
        self._pool_size = max(1, pool_size)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, mailbox_port: int | None = None, reuse: bool | None = None
    ) -> MssanteAdapter:
        """Relay from settings; host "" targets the embedded mailbox (pass its bound
        port when it was started on port 0)."""
        ms = settings.mssante
        embedded = not ms.host
        target = SmtpTarget(
            host=ms.mailbox_host if embedded else ms.host,
            port=(mailbox_port or ms.mailbox_port) if embedded else ms.port,
            tls_context=mssante_client_context(settings),
            implicit_tls=ms.tls == "implicit",
            username=None if embedded or ms.password is None else (ms.username or ms.sender),
            password=None if embedded else ms.password,
            timeout_s=ms.timeout_s,
        )
        return cls(
            target,
            sender=ms.sender,
            read_receipt_to=ms.read_receipt_to,
            product_ref=ms.product_ref,
            reuse=ms.reuse_connection if reuse is None else reuse,
            pool_size=ms.pool_size,
            index=SentIndex(settings.data_dir),
        )

    def build(self, item: WorkItem, bundle: dict) -> EmailMessage:
        """The message for `item` (bus notices get the short alert form)."""
        now = datetime.now(UTC)
        try:
            notice = not EventType(item.event.type).inbound
        except ValueError:
            notice = False
        builder = build_notice_mail if notice else build_mail
        msg = builder(
            item,
            bundle,
            sender=self.sender,
            now=now,
            read_receipt_to=self.read_receipt_to,
            product_ref=self.product_ref,
        )
        if item.event.subject:  # lets a bounce that quotes our headers find its case
            msg[H_CASE] = " ".join(item.event.subject.split())[:200]
        return msg

    async def deliver(self, item: WorkItem, bundle: dict) -> Outcome:
        if not item.recipient.address:
            return Outcome.permanent(
                f"no MSSanté address for recipient {item.recipient.kind}:{item.recipient.id}"
            )
        try:
            msg = self.build(item, bundle)
            rcpt = mail_address(item.recipient.address)
        except ValueError as exc:  # BundleError included: bad data never gets better
            return Outcome.permanent(f"mail cannot be built: {exc}")
        if self.index is not None:
            await asyncio.to_thread(self.index.record, SentRef.of(item))
        async with self._slots:
            outcome = await self._send(msg, rcpt)
        if outcome.status == "failed" and not outcome.retry and outcome.detail.startswith("TLS"):
            log.error("MSSanté TLS misconfiguration for %s: %s", self.target, outcome.detail)
        return outcome

    async def _send(self, msg: EmailMessage, recipient: str) -> Outcome:
        for _ in range(2):  # the second turn only after a stale pooled connection
            try:
                smtp, reused = await self._acquire()
            except Exception as exc:  # noqa: BLE001 - classified, never raised
                return classify_error(exc)
            try:
                _, reply = await smtp.send_message(msg, sender=self.sender, recipients=[recipient])
            except Exception as exc:  # noqa: BLE001
                keep = isinstance(exc, SMTPResponseException | SMTPRecipientsRefused)
                await self._release(smtp, keep=keep and not _stale(exc))
                if reused and _stale(exc):
                    continue
                return classify_error(exc)
            await self._release(smtp, keep=True)
            return Outcome.sent(f"250 {reply}".strip())
        return Outcome.transient("SMTP connection dropped twice")

    async def _connect(self) -> aiosmtplib.SMTP:
        t = self.target
        smtp = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.implicit_tls,
            start_tls=not t.implicit_tls,  # True, never None: no opportunistic fallback
            validate_certs=True,
            tls_context=t.tls_context,
            username=t.username,
            password=t.password.get_secret_value() if t.password else None,
            timeout=t.timeout_s,
        )
        try:
            await smtp.connect()
            if smtp.get_transport_info("sslcontext") is None:  # paranoia: never MAIL in clear
                raise TlsUnavailable(f"{t.host}:{t.port}: session is not encrypted")
            if smtp.is_ehlo_or_helo_needed:
                try:  # the first command under TLS: where a refused certificate shows
                    await smtp.ehlo()
                except SMTPServerDisconnected as exc:
                    raise ClosedAfterTls(
                        f"{t.host}:{t.port} closed the connection right after the TLS "
                        "handshake (a server refusing our client certificate does this; "
                        "check mssante.client_cert if it persists)"
                    ) from exc
        except SMTPException as exc:
            smtp.close()
            if not isinstance(exc, SMTPResponseException | ConnectionError | TimeoutError) and (
                "STARTTLS" in str(exc).upper()
            ):
                raise TlsUnavailable(f"{t.host}:{t.port} does not offer STARTTLS") from exc
            raise
        except BaseException:
            smtp.close()
            raise
        return smtp

    async def _acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        now = time.monotonic()
        while self._idle:
            smtp, since = self._idle.pop()
            if smtp.is_connected and now - since < IDLE_S:
                return smtp, True
            await self._close(smtp)
        return await self._connect(), False

    async def _release(self, smtp: aiosmtplib.SMTP, *, keep: bool) -> None:
        if keep and self.reuse and smtp.is_connected and len(self._idle) < self._pool_size:
            self._idle.append((smtp, time.monotonic()))
        else:
            await self._close(smtp)

    @staticmethod
    async def _close(smtp: aiosmtplib.SMTP) -> None:
        if smtp.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(smtp.quit(), 2.0)
        smtp.close()

    async def aclose(self) -> None:
        """Close every pooled connection (QUIT, then drop)."""
        idle, self._idle = self._idle, []
        for smtp, _ in idle:
            await self._close(smtp)

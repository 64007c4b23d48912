"""Pure parts of the MSSanté transport, no sockets: MDN/DSN parsing and the events they
become, the sent-mail index, SMTP failure classification, the mailbox's idempotent store."""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path

import orjson
import pytest
from aiosmtplib.errors import (
    SMTPConnectError,
    SMTPConnectTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from adapters.mssante.mailbox import message_files, normalise_address, store_message
from adapters.mssante.receipts import receipt_event, resolve
from adapters.mssante.reports import ReceiptKind, item_of, parse_report
from adapters.mssante.sender import TlsUnavailable, classify_error
from adapters.mssante.sent_index import SentIndex, SentRef
from schemas.codes import EventType
from tests.mssante_reports import dsn, mdn

ITEM = "3f2b8c1e-9d4a-5b6c-8e7f-0a1b2c3d4e5f"
EVENT = "0b8f6e0e-2f4e-4a51-8d0c-3f1b2a9c7d10"
CASE = "referral/https://carebus.fr/fhir/sid/referral|ADR-2025-000123"
CARDIO = "anais.gerard-moreau@cardio-vichy.mssante.fr"
QUOTED = f"""From: CareBus <carebus@carebus.mssante.fr>
To: Dr Anais Gerard-Moreau <{CARDIO}>
Subject: [CareBus] Demande d'adressage
Message-ID: <{ITEM}@carebus.mssante.fr>
X-CareBus-Item: {ITEM}
X-CareBus-Event: {EVENT}
X-CareBus-Case: {CASE}"""


def ref(**kw: str) -> SentRef:
    base = dict(
        item_id=ITEM,
        event_id=EVENT,
        event_type="referral.requested",
        subject=CASE,
        correlation_id=CASE,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        address=CARDIO,
        recipient_kind="practitioner",
        recipient_id="10012345673",
        role="performer",
    )
    base.update(kw)
    return SentRef(**base)  # type: ignore[arg-type]


class TestMdn:
    def test_displayed_is_a_read_receipt_for_our_item(self) -> None:
        raw = mdn(
            message_id="<mdn-1@cardio-vichy.mssante.fr>",
            original_message_id=f"<{ITEM}@carebus.mssante.fr>",
            final_recipient=CARDIO.upper(),
        )
        (r,) = parse_report(raw)
        assert r.kind is ReceiptKind.READ
        assert r.item_id == ITEM
        assert r.recipient == CARDIO
        assert r.receipt_id == "<mdn-1@cardio-vichy.mssante.fr>"
        assert "displayed" in r.detail

    @pytest.mark.parametrize(
        "disposition",
        [
            "manual-action/MDN-sent-manually; deleted",
            "automatic-action/MDN-sent-automatically; processed",
        ],
    )
    def test_other_dispositions_are_not_reads(self, disposition: str) -> None:
        raw = mdn(
            message_id="<mdn-2@x>",
            original_message_id=f"<{ITEM}@carebus.mssante.fr>",
            final_recipient=CARDIO,
            disposition=disposition,
        )
        assert parse_report(raw) == []

    def test_quoted_headers_name_the_item_and_case(self) -> None:
        raw = mdn(
            message_id="<mdn-3@x>",
            original_message_id="<rewritten-by-gateway@relay>",
            final_recipient=CARDIO,
            original_headers=QUOTED,
        )
        (r,) = parse_report(raw)
        assert (r.item_id, r.case, r.event_id) == (ITEM, CASE, EVENT)

    def test_foreign_message_id_names_no_item(self) -> None:
        raw = mdn(
            message_id="<m@x>", original_message_id=f"<{ITEM}@elsewhere.fr>", final_recipient=CARDIO
        )
        (r,) = parse_report(raw)
        assert r.item_id == ""


class TestDsn:
    def test_failed_recipient_is_a_failed_receipt(self) -> None:
        raw = dsn(message_id="<bounce-1@relay>", original_headers=QUOTED, final_recipient=CARDIO)
        (r,) = parse_report(raw)
        assert r.kind is ReceiptKind.FAILED
        assert (r.item_id, r.case, r.event_id, r.recipient) == (ITEM, CASE, EVENT, CARDIO)
        assert "5.1.1" in r.detail and "User unknown" in r.detail
        assert r.event_type is EventType.DELIVERY_FAILED

    @pytest.mark.parametrize("action", ["delayed", "delivered", "relayed"])
    def test_non_final_actions_are_ignored(self, action: str) -> None:
        raw = dsn(
            message_id="<b@r>", original_headers=QUOTED, final_recipient=CARDIO, action=action
        )
        assert parse_report(raw) == []

    def test_plain_mail_is_not_a_report(self) -> None:
        raw = b"From: a@b.fr\r\nTo: c@d.fr\r\nSubject: RE: adressage\r\n\r\nMerci, jeudi.\r\n"
        assert parse_report(raw) == []

    def test_report_without_message_id_gets_a_stable_id(self) -> None:
        raw = dsn(message_id="<x@y>", original_headers=QUOTED, final_recipient=CARDIO)
        raw = raw.replace(b"Message-ID: <x@y>\r\n", b"")
        first, again = parse_report(raw)[0], parse_report(raw)[0]
        assert first.receipt_id.startswith("sha256:")
        assert first.status_event_id == again.status_event_id


class TestItemIds:
    def test_untrusted_item_ids_are_refused(self) -> None:
        assert item_of("<../../etc/passwd@carebus.mssante.fr>") == ""
        assert item_of("<x@y>", "../../../etc/passwd") == ""
        assert item_of(f"<{ITEM.upper()}@CAREBUS.MSSANTE.FR>") == ITEM

    def test_index_round_trip_and_traversal(self, tmp_path: Path) -> None:
        index = SentIndex(tmp_path)
        index.record(ref())
        assert index.lookup(ITEM) == ref()
        assert index.lookup("../../x") is None
        assert index.lookup(str(uuid.uuid4())) is None
        with pytest.raises(ValueError):
            index.record(ref(item_id="../evil"))


class TestReceiptEvents:
    def test_event_is_keyed_by_case_caused_by_routed_event(self) -> None:
        raw = mdn(
            message_id="<mdn-9@x>",
            original_message_id=f"<{ITEM}@carebus.mssante.fr>",
            final_recipient=CARDIO,
        )
        (r,) = parse_report(raw)
        env = receipt_event(r, ref())
        assert env.type == "delivery.read"
        assert env.subject == CASE and env.key == CASE.encode()
        assert env.causation_id == EVENT
        assert env.traceparent.split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
        bundle = orjson.loads(env.data)
        header = bundle["entry"][0]["resource"]
        assert header["eventCoding"]["code"] == "delivery.read"
        assert "10012345673" in env.data.decode()  # the recipient whose deadline it meets
        again = receipt_event(parse_report(raw)[0], ref())
        assert again.id == env.id  # same report, same event: consumers dedup

    def test_resolve_prefers_index_then_quoted_headers(self, tmp_path: Path) -> None:
        index = SentIndex(tmp_path)
        bounce = parse_report(
            dsn(message_id="<b@r>", original_headers=QUOTED, final_recipient=CARDIO)
        )[0]
        fallback = resolve(bounce, index)
        assert fallback is not None and fallback.subject == CASE and fallback.event_id == EVENT
        index.record(ref(role="declared-gp"))
        found = resolve(bounce, index)
        assert found is not None and found.role == "declared-gp"
        read = parse_report(
            mdn(message_id="<m@x>", original_message_id="<a@b>", final_recipient=CARDIO)
        )[0]
        assert resolve(read, index) is None


class TestClassification:
    @pytest.mark.parametrize(
        ("exc", "status", "retry"),
        [
            (SMTPResponseException(451, "4.3.0 try later"), "failed", True),
            (SMTPResponseException(421, "closing"), "failed", True),
            (SMTPResponseException(554, "5.7.1 rejected"), "failed", False),
            (
                SMTPRecipientsRefused([SMTPRecipientRefused(550, "unknown", CARDIO)]),
                "failed",
                False,
            ),
            (SMTPRecipientsRefused([SMTPRecipientRefused(452, "full", CARDIO)]), "failed", True),
            (ConnectionRefusedError(111, "refused"), "failed", True),
            (SMTPConnectTimeoutError("timed out"), "failed", True),
            (SMTPServerDisconnected("lost"), "failed", True),
            (TlsUnavailable("no STARTTLS"), "failed", False),
        ],
    )
    def test_rules(self, exc: Exception, status: str, retry: bool) -> None:
        out = classify_error(exc)
        assert (out.status, out.retry) == (status, retry)

    def test_certificate_verification_failure_is_permanent(self) -> None:
        try:
            try:
                raise ssl.SSLCertVerificationError(1, "certificate verify failed")
            except ssl.SSLError as inner:
                raise SMTPConnectError("Error connecting") from inner
        except SMTPConnectError as exc:
            out = classify_error(exc)
        assert not out.retry and out.detail.startswith("TLS")

    def test_client_certificate_refused_is_permanent(self) -> None:
        err = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
        err.reason = "TLSV1_ALERT_UNKNOWN_CA"
        out = classify_error(err)
        assert not out.retry and "client certificate" in out.detail


class TestMailboxStore:
    def msg(self, mid: str) -> bytes:
        return f"Message-ID: <{mid}@carebus.mssante.fr>\r\nSubject: x\r\n\r\nbody\r\n".encode()

    def test_same_message_id_stored_once(self, tmp_path: Path) -> None:
        first = store_message(tmp_path, CARDIO, self.msg("a"))
        again = store_message(tmp_path, CARDIO.upper(), self.msg("a"))
        other = store_message(tmp_path, CARDIO, self.msg("b"))
        assert first.created and not again.created and other.created
        assert again.path == first.path
        assert len(message_files(tmp_path, CARDIO)) == 2

    def test_claim_left_by_a_crash_does_not_lose_the_message(self, tmp_path: Path) -> None:
        first = store_message(tmp_path, CARDIO, self.msg("c"))
        first.path.unlink()  # as if the process died between claim and rename
        retry = store_message(tmp_path, CARDIO, self.msg("c"))
        assert retry.created and retry.path.is_file()

    @pytest.mark.parametrize(
        "bad", ["../x@y.fr", "a/b@c.fr", ".hidden@c.fr", "no-at-sign", "a@b/../c"]
    )
    def test_addresses_cannot_escape_the_mailbox_root(self, bad: str) -> None:
        with pytest.raises(ValueError):
            normalise_address(bad)

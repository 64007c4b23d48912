"""MSSanté mail building: headers, idempotent Message-ID, French body, attachments, safety."""

from __future__ import annotations

import email
import io
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.generator import BytesGenerator
from email.message import EmailMessage

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.bundle_view import BundleView
from adapters.mssante.mail import (
    build_mail,
    build_notice_mail,
    clean_header,
    mail_address,
    message_id,
)
from adapters.mssante.xdm import build_xdm
from schemas.cases import case_id
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.samples import sample_bundle
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

EVENT_ID = "0b8f6e0e-2f4e-4a51-8d0c-3f1b2a9c7d10"
SENDER = "carebus@cpts-bords-allier.mssante.fr"
CARDIO = "anais.gerard-moreau@cardio-vichy.mssante.fr"
NOW = datetime(2025, 3, 17, 8, 41, tzinfo=UTC)
PATIENT_WORDS = ("Lefèvre", "LEFÈVRE", "Hélène", "Helene", "Lefevre", "258030319004510")
ALLOWED_HEADERS = {
    "from", "to", "subject", "date", "message-id", "references", "disposition-notification-to",
    "x-mailer", "x-mss-nil", "x-mss-ins", "x-mss-codecda", "x-carebus-item", "x-carebus-event",
    "mime-version", "content-type", "content-transfer-encoding",
}  # fmt: skip


def make(
    event: str = "referral.requested",
    *,
    display: str = "Dr Anaïs Gérard-Moreau",
    address: str = CARDIO,
    due: str = "2025-03-17T11:30:00+01:00",
    subject: str | None = None,
    recipient_id: str = "10012345673",
) -> tuple[WorkItem, dict]:
    b = sample_bundle(event, event_id=EVENT_ID, timestamp="2025-03-17T09:40:00+01:00")
    env = Envelope(
        id=EVENT_ID,
        type=event,
        source="urn:carebus:producer:sdk",
        subject=subject if subject is not None else case_id(event, b),
        data=orjson.dumps(b),
    )
    recipient = Recipient(RecipientKind.PRACTITIONER, recipient_id, address, "performer", display)
    return WorkItem(event=env, channel=Channel.MSSANTE, recipient=recipient, due=due), b


def mail(event: str = "referral.requested", **kw: object) -> tuple[WorkItem, EmailMessage]:
    item, b = make(event, **kw)  # type: ignore[arg-type]
    msg = build_mail(
        item, b, sender=SENDER, now=NOW, read_receipt_to=SENDER, product_ref="DEV935997"
    )
    return item, msg


def reparse(msg: EmailMessage) -> EmailMessage:
    return email.message_from_bytes(msg.as_bytes(), policy=policy.default)  # type: ignore[return-value]


def body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


def test_headers_of_a_referral_request() -> None:
    item, msg = mail()
    m = reparse(msg)
    assert m["From"].addresses[0].addr_spec == SENDER
    assert m["To"].addresses[0].addr_spec == CARDIO
    assert m["To"].addresses[0].display_name == "Dr Anaïs Gérard-Moreau"
    assert m["Subject"] == "[CareBus] URGENT — Demande d'adressage — réf. ADR-2025-000123"
    assert m["Message-ID"] == f"<{item.id}@carebus.mssante.fr>"
    assert m["Disposition-Notification-To"] == SENDER
    assert m["X-MSS-NIL"] == "DEV935997"
    assert m["X-MSS-INS"] == "O"
    assert m["X-MSS-CODECDA"] == "96349-6"
    assert m["X-CareBus-Item"] == item.id
    assert m["Date"].datetime == NOW
    assert {k.lower() for k in m} <= ALLOWED_HEADERS


def test_message_id_is_stable_per_item_and_distinct_per_recipient() -> None:
    item, first = mail()
    _, again = mail()
    assert first["Message-ID"] == again["Message-ID"] == message_id(item.id)
    _, other = mail(address="francois.benard@medecin.mssante.fr", recipient_id="10003456125")
    assert other["Message-ID"] != first["Message-ID"]
    assert first.as_bytes() == again.as_bytes()  # same item, same clock: same bytes


def test_patient_identity_never_in_any_header() -> None:
    for event in ("referral.requested", "discharge.completed", "expertise.requested"):
        _, msg = mail(event)
        for part in reparse(msg).walk():
            for name, value in part.items():
                for word in PATIENT_WORDS:
                    assert word not in str(value), (event, name)


def test_body_says_who_which_patient_what_and_by_when() -> None:
    item, msg = mail()
    text = body(reparse(msg))
    assert "Bonjour Dr Anaïs Gérard-Moreau," in text
    assert "Dr François Bénard" in text
    assert "Patiente : Hélène LEFÈVRE, née le 14/03/1958 — INS 258030319004510" in text
    assert "Dossier : ADR-2025-000123" in text
    assert "Dyspnée d'effort" in text
    assert "accepter ou refuser la demande d'adressage, avant le 17/03/2025 à 11:30." in text
    assert item.id in text


def test_documents_and_xdm_are_attached() -> None:
    item, b = make("referral.completed")
    msg = reparse(build_mail(item, b, sender=SENDER, now=NOW, read_receipt_to=SENDER))
    files = {p.get_filename(): p.get_content() for p in msg.iter_attachments()}
    letters = {d.doc_type: d.content for d in BundleView(b).documents()}
    assert files["Lettre_d_adressage.txt"] == letters["96349-6"].decode()
    assert files["Compte_rendu_de_consultation.txt"] == letters["11488-4"].decode()
    xdm = next(p for p in msg.iter_attachments() if p.get_filename() == "IHE_XDM.ZIP")
    assert xdm.get_content_type() == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(xdm.get_content())).namelist()
    assert "IHE_XDM/SUBSET01/METADATA.XML" in names
    assert msg["X-MSS-CODECDA"] == "96349-6,11488-4"
    assert msg["X-MSS-NIL"] is None  # no product reference configured: header omitted


def test_discharge_letter_mail() -> None:
    _, msg = mail("discharge.completed")
    text = body(reparse(msg))
    assert "La patiente est sortie le 19/03/2025 à 11:30" in text
    assert "Centre hospitalier de Moulins-Yzeure" in text
    assert "lettre de liaison" in text
    assert [p.get_filename() for p in msg.iter_attachments()] == [
        "Lettre_de_liaison_a_la_sortie_d_un_etablissement_de_soins.txt",
        "IHE_XDM.ZIP",
    ]


@pytest.mark.parametrize("event", [e.value for e in EventType])
def test_every_event_type_builds(event: str) -> None:
    _, msg = mail(event)
    assert msg["Subject"].startswith("[CareBus] ")
    assert body(msg).strip()


def test_malicious_display_name_cannot_inject_headers() -> None:
    _, msg = mail(display="Evil\r\nBcc: victim@evil.example\r\n\r\nbody")
    raw = msg.as_bytes()
    m = reparse(msg)
    assert m["Bcc"] is None
    assert b"\nBcc:" not in raw
    assert {k.lower() for k in m} <= ALLOWED_HEADERS
    assert m["To"].addresses[0].addr_spec == CARDIO


def test_malicious_case_id_cannot_inject_into_subject() -> None:
    _, msg = mail(subject="referral/https://x|ADR-1\r\nBcc: victim@evil.example")
    m = reparse(msg)
    assert m["Bcc"] is None
    assert "\n" not in m["Subject"] and "\r" not in m["Subject"]


def test_malicious_address_is_refused() -> None:
    with pytest.raises(ValueError, match="mailbox"):
        mail(address="dr@x.mssante.fr\r\nBcc: victim@evil.example")
    with pytest.raises(ValueError, match="mailbox"):
        mail_address("Someone <a@b.fr>, other@c.fr")
    with pytest.raises(ValueError):
        mail(address="")


def test_naive_clock_refused() -> None:
    item, b = make()
    with pytest.raises(ValueError, match="timezone"):
        build_mail(item, b, sender=SENDER, now=datetime(2025, 3, 17), read_receipt_to=SENDER)


def test_notice_mail_for_reminder() -> None:
    item, b = make("sla.reminder", due="")
    msg = reparse(build_notice_mail(item, b, sender=SENDER, now=NOW))
    assert msg["Subject"] == "[CareBus] Relance — réf. ADR-2025-000123"
    assert msg["Disposition-Notification-To"] is None
    text = body(msg)
    assert "attend votre réponse depuis 2 h ouvrées" in text
    assert "répondre à la demande en attente, avant le 17/03/2025 à 13:30." in text
    assert list(msg.iter_attachments()) == []


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("sla.escalated", "reprendre la demande"),
        ("discharge.late-notice", "retour à domicile en priorité"),
        ("discharge.followup-due", "actions prévues après la sortie"),
        ("delivery.failed", "par un autre moyen"),
    ],
)
def test_notice_mails_say_what_to_do(event: str, expected: str) -> None:
    item, b = make(event, due="")
    msg = build_mail(item, b, sender=SENDER, now=NOW, read_receipt_to=SENDER)  # dispatches
    assert expected in body(msg)
    assert msg["Message-ID"] == message_id(item.id)


def test_notice_builder_refuses_clinical_events() -> None:
    item, b = make()
    with pytest.raises(ValueError, match="not a bus notice"):
        build_notice_mail(item, b, sender=SENDER, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_clean_header_never_leaves_a_line_break(text: str) -> None:
    out = clean_header(text)
    assert not any(c in out for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_arbitrary_display_name_yields_no_extra_header(display: str) -> None:
    item, b = make("referral.accepted", display=display)
    msg = build_mail(item, b, sender=SENDER, now=NOW, read_receipt_to=SENDER)
    m = reparse(msg)
    assert {k.lower() for k in m} <= ALLOWED_HEADERS
    assert m["To"].addresses[0].addr_spec == CARDIO
    for value in m.values():
        assert "\n" not in str(value) and "\r" not in str(value)


# --- the mail is the one the stdlib's high-level API builds ------------------------
# build_mail writes the MIME parts itself (headers set once, base64 precomputed) and
# its policy stores plain one-line values verbatim; these tests rebuild each mail the
# straightforward way (EmailMessage(), set_content, add_attachment, set_boundary with
# policy.default) and require the very same bytes.


def stdlib_rebuild(built: EmailMessage) -> EmailMessage:
    parsed = reparse(built)
    ref = EmailMessage()
    for name, value in parsed.items():
        if name.lower() not in ("mime-version", "content-type", "content-transfer-encoding"):
            ref[name] = str(value)
    ref.set_content(body(parsed), charset="utf-8")
    for part in parsed.iter_attachments():
        params = (
            {"charset": part.get_param("charset")}
            if part.get_content_maintype() == "text"
            else None
        )
        ref.add_attachment(
            part.get_payload(decode=True),
            maintype=part.get_content_maintype(),
            subtype=part.get_content_subtype(),
            filename=part.get_filename(),
            params=params,
        )
    if parsed.is_multipart():
        ref.set_boundary(parsed.get_boundary())
    return ref


def smtp_bytes(msg: EmailMessage) -> bytes:
    out = io.BytesIO()
    BytesGenerator(out, policy=policy.SMTP).flatten(msg)  # what aiosmtplib sends
    return out.getvalue()


@pytest.mark.parametrize(
    ("event", "display"),
    [
        ("referral.requested", "Dr Anaïs Gérard-Moreau"),
        ("referral.completed", ""),
        ("discharge.completed", 'Evil "Bob" <x@y>, Bcc: z@evil.example'),
        ("expertise.requested", "Dr Plain Ascii"),
        ("referral.accepted", ""),
        ("sla.reminder", "Dr Anaïs Gérard-Moreau"),
    ],
)
def test_same_bytes_as_the_stdlib_construction(event: str, display: str) -> None:
    item, built = mail(event, display=display)
    ref = stdlib_rebuild(built)
    for msg in (built, ref):  # as the sender adds it after building
        msg["X-CareBus-Case"] = item.event.subject
    assert built.as_bytes() == ref.as_bytes()
    assert smtp_bytes(built) == smtp_bytes(ref)
    # and the payloads are the event's documents and its archive, untouched
    item, b = make(event, display=display)
    parsed = reparse(built)
    files = {p.get_filename(): p.get_payload(decode=True) for p in parsed.iter_attachments()}
    docs = BundleView(b).documents()
    assert sorted(files.get(n) for n in files if n != "IHE_XDM.ZIP") == sorted(
        d.content for d in docs
    )
    if "IHE_XDM.ZIP" in files:
        assert files["IHE_XDM.ZIP"] == build_xdm(
            BundleView(b), submission_key=item.id, recipients=(item.recipient,), documents=docs
        )


_HEADER_NAMES = [
    "X-CareBus-Case", "References", "Subject", "Disposition-Notification-To", "Date",
    "Message-ID", "To", "From", "MIME-Version", "Content-Type", "Content-Disposition",
    "Content-Transfer-Encoding",
]  # fmt: skip
_HEADER_TEXT = st.lists(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    | st.sampled_from(["é", "\r", "\n", "\t", "=?utf-8?q?x?=", "  ", "@", "<", ">", ".", "a"]),
    max_size=60,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_HEADER_NAMES),
    _HEADER_TEXT
    | st.sampled_from(
        [
            "Mon, 17 Mar 2025 08:41:00 +0000",
            "Mon, 17 Mar 2025 08:41:00 -0000",
            "Tue, 17 Mar 2025 08:41:00 +0000",  # wrong weekday: not canonical
            "<a.b-c@carebus.mssante.fr>",
            "dr.x@cardio.mssante.fr",
            "CareBus <carebus@x.mssante.fr>",
            '"A, B" <a@b.fr>',
            'text/plain; charset="utf-8"',
            "text/plain;charset=utf-8",
            'attachment; filename="Lettre.txt"',
            "1.0",
        ]
    ),
)
def test_any_header_value_is_stored_read_and_written_as_policy_default_does(
    name: str, value: str
) -> None:
    _, built = mail()
    ours = EmailMessage(policy=built.policy)  # the policy build_mail gives its mails
    assert outcome(ours, name, value) == outcome(EmailMessage(), name, value)


def outcome(msg: EmailMessage, name: str, value: str) -> list[object]:
    """What storing, reading and writing a header gives (or which error it raises)."""

    def attempt(step: Callable[[], object]) -> object:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - both policies must fail alike
            return type(exc)

    def store() -> None:
        msg[name] = value

    seen: list[object] = [attempt(store)]
    if seen[0] is None:
        header = msg[name]
        seen += [str(header), type(header).__mro__[1], [type(d) for d in header.defects]]
        seen += [attempt(msg.as_bytes), attempt(lambda: smtp_bytes(msg))]
    return seen


def test_crlf_still_refused_on_a_built_mail() -> None:
    _, built = mail()
    for name in ("X-CareBus-Case", "Subject", "To", "Message-ID", "Content-Type"):
        del built[name]
        with pytest.raises(ValueError, match=r"linefeed|carriage"):
            built[name] = "x\r\nBcc: victim@evil.example"

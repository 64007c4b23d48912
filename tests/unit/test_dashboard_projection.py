"""The dashboard projection, pure: records in, case list / timeline / deadlines out."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import orjson

from adapters.dashboard.auth import (
    LoginThrottle,
    csrf_ok,
    csrf_token,
    decode_session,
    encode_session,
    hash_password,
    new_session,
    verify_password,
)
from adapters.dashboard.projection import Projection
from adapters.dashboard.views import Record, case_row, since
from adapters.delivery import Outcome, status_event
from bus.deadletter import dead_letter, replay_target
from processors.notices import notice_envelope
from processors.sla.machine import on_due
from processors.sla.policy import SlaPolicies
from schemas.codes import EventType
from schemas.envelope import Envelope
from schemas.events import build_event
from schemas.sample_data import CARDIOLOGIST, PATIENT, T0
from schemas.samples import referral_info, stay_info
from schemas.topics import topic_for
from schemas.validate import validate_message
from schemas.workitem import Channel, Recipient, RecipientKind, WorkItem

E = EventType
POLICIES = SlaPolicies()
_offsets: dict[str, int] = {}


def event(et: EventType, info: object, at: datetime) -> Envelope:
    bundle = build_event(et, info, timestamp=at)
    msg = validate_message(orjson.dumps(bundle))
    return Envelope(
        id=msg.event_id,
        type=et.value,
        source="urn:test",
        subject=msg.case_id,
        data=msg.raw,
        time=at.astimezone(UTC).isoformat(),
    )


def record(topic: str, env: Envelope, at: datetime) -> Record:
    key, value, headers = env.encode()
    return raw(topic, key, value, headers, at)


def raw(topic: str, key: bytes | None, value: bytes | None, headers: list, at: datetime) -> Record:
    offset = _offsets[topic] = _offsets.get(topic, -1) + 1
    return Record(topic, 0, offset, int(at.timestamp() * 1000), key, value, tuple(headers))


def referral(ref_id: str, priority: str) -> object:
    return dataclasses.replace(referral_info(), referral_id=ref_id, priority=priority)


def publish(p: Projection, et: EventType, info: object, at: datetime) -> Envelope:
    env = event(et, info, at)
    assert p.apply(record(topic_for(et), env, at))
    return env


def test_late_and_escalated_cases_come_first_with_their_next_deadline() -> None:
    p = Projection(POLICIES)
    publish(p, E.REFERRAL_REQUESTED, referral("ADR-ROUTINE", "routine"), T0)
    urgent = publish(p, E.REFERRAL_REQUESTED, referral("ADR-URGENT", "urgent"), T0)
    publish(p, E.REFERRAL_REQUESTED, referral("ADR-LATE", "urgent"), T0 - timedelta(days=3))
    # an hour later: the urgent one is due at 11:30 (2 business hours), reminder at the due
    # date then escalation 2 h later; the routine one is due 5 business days later
    now = T0 + timedelta(hours=1)
    rows = {r.view.reference: r for r in p.open_rows(now)}
    assert [r.view.reference for r in p.open_rows(now)] == ["ADR-LATE", "ADR-URGENT", "ADR-ROUTINE"]
    assert rows["ADR-LATE"].late and not rows["ADR-URGENT"].late
    assert rows["ADR-URGENT"].due_at == T0 + timedelta(hours=2)
    assert rows["ADR-URGENT"].next_at == T0 + timedelta(hours=2)
    assert rows["ADR-URGENT"].next_label == "Relance"
    # a deadline past its time but still pending has not been sent: shown, as overdue
    assert rows["ADR-LATE"].next_label == "Relance (pas encore partie)"
    stalled = {r.view.reference: r for r in p.open_rows(T0 + timedelta(hours=3))}
    assert stalled["ADR-URGENT"].late
    assert stalled["ADR-URGENT"].next_label == "Relance (pas encore partie)"
    assert rows["ADR-ROUTINE"].due_at == T0 + timedelta(days=7)  # Mon + 5 business days
    # the processors fire the reminder then the escalation: the replica follows them
    state = p.case(urgent.subject).sla
    for hours in (2, 4):
        fire = T0 + timedelta(hours=hours, seconds=1)
        token = min(state.pending, key=lambda d: d.fire_at).token
        state, notices, _ = on_due(state, token, fire)
        for notice in notices:
            assert p.apply(record("care.sla.events", notice_envelope(notice, urgent), fire))
    later = T0 + timedelta(hours=5)
    rows = p.open_rows(later)
    assert [r.view.reference for r in rows][:1] == ["ADR-URGENT"]  # escalated beats late
    top = rows[0]
    assert top.escalated and top.late and top.next_at is None  # nothing pending any more
    assert p.case(urgent.subject).sla.pending == []
    titles = [e.title for e in p.case(urgent.subject).entries()]
    assert titles == ["Demande d'adressage", "Relance", "Escalade"]


def test_timeline_has_work_items_deliveries_reads_and_failures() -> None:
    p = Projection(POLICIES)
    env = publish(p, E.REFERRAL_REQUESTED, referral("ADR-TL", "routine"), T0)
    who = Recipient(
        RecipientKind.PRACTITIONER,
        CARDIOLOGIST.rpps,
        CARDIOLOGIST.mailbox or "",
        "performer",
        "Dr Anaïs Gérard-Moreau",
    )
    item = WorkItem(env, Channel.MSSANTE, who, due=(T0 + timedelta(days=7)).isoformat())
    t1, t2, t3 = (T0 + timedelta(minutes=m) for m in (1, 2, 3))
    p.apply(record("care.delivery.mssante", item.envelope(), t1))
    p.apply(record("care.delivery.status", status_event(item, Outcome.sent("250 ok"), 1), t2))
    failed = status_event(item, Outcome.permanent("550 5.1.1 boîte inconnue"), 3)
    failed = dataclasses.replace(failed, id="other-id")
    p.apply(record("care.delivery.status", failed, t3))
    view = p.case(env.subject)
    entries = view.entries()
    assert [e.kind for e in entries] == ["event", "work-item", "sent", "failed"]
    assert "Dr Anaïs Gérard-Moreau" in entries[1].detail and "MSSanté" in entries[1].detail
    assert "réponse attendue avant le 24/03/2025 09:30" in entries[1].detail
    assert entries[2].detail == "MSSanté → Dr Anaïs Gérard-Moreau"
    assert "550 5.1.1" in entries[3].detail and entries[3].tone == "alert"
    assert [f.reference for f in p.failure_list()] == ["ADR-TL"]
    assert p.failure_list()[0].attempts == 3
    assert p.failure_list()[0].recipient == "Dr Anaïs Gérard-Moreau"
    assert case_row(view, t3).attention  # a failure needs the coordinator
    assert view.person("requester") == "Dr François Bénard"
    # the same record twice (a redelivery) is shown once
    p.apply(record("care.delivery.mssante", item.envelope(), t1))
    assert len(view.entries()) == 4


def test_read_receipt_stops_the_discharge_ack_reminder() -> None:
    p = Projection(POLICIES)
    info = stay_info()
    at = info.planned_discharge - timedelta(days=3)  # announced in time: no late notice
    env = publish(p, E.DISCHARGE_PLANNED, info, at)
    view = p.case(env.subject)
    assert view.establishment == "Centre hospitalier de Moulins-Yzeure"
    assert view.state.startswith("Sortie prévue le 19/03/2025")
    acks = [d for d in view.sla.pending if d.kind == "ack-reminder"]
    assert {d.recipient for d in acks} >= {info.declared_gp.rpps}
    gp = Recipient(RecipientKind.PRACTITIONER, info.declared_gp.rpps, "", "gp", "Dr GP")
    item = WorkItem(env, Channel.MSSANTE, gp)
    read = status_event(item, Outcome.sent(), 1)
    bundle = build_event(
        E.DELIVERY_READ,
        dataclasses.replace(
            _notice_of(read), text="Accusé de lecture", recipient_id=info.declared_gp.rpps
        ),
    )
    read_env = dataclasses.replace(
        read, id="read-1", type="delivery.read", data=orjson.dumps(bundle)
    )
    p.apply(record("care.delivery.status", read_env, at + timedelta(hours=1)))
    left = {d.recipient for d in view.sla.pending if d.kind == "ack-reminder"}
    assert info.declared_gp.rpps not in left
    assert view.entries()[-1].title == "Lu"


def _notice_of(env: Envelope) -> object:
    from schemas.cases import case_ref
    from schemas.model import BusNoticeInfo

    return BusNoticeInfo(about=case_ref(env.subject), text="", channel="mssante")


def test_dead_letter_listed_then_marked_replayed() -> None:
    p = Projection(POLICIES)
    env = publish(p, E.REFERRAL_REQUESTED, referral("ADR-DLQ", "routine"), T0)
    key, value, headers = env.encode()
    out = dead_letter(
        topic="care.referral.events",
        partition=2,
        offset=41,
        key=key,
        value=value,
        headers=headers,
        reason="recipient unresolved: performer 10012345673",
        group="carebus-routing",
        attempts=1,
    )
    p.apply(raw(out.topic, out.key, out.value, out.headers, T0 + timedelta(minutes=1)))
    [dl] = p.dead_letter_list()
    assert (dl.origin_topic, dl.origin, dl.event_id) == ("care.referral.events", "2@41", env.id)
    assert dl.replayed_at is None and dl.event_label == "Demande d'adressage"
    target, back = replay_target(out.headers)
    later = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    p.apply(raw(target, out.key, out.value, back, later))
    assert p.dead_letter(dl.partition, dl.offset).replayed_at == later
    titles = [e.title for e in p.case(env.subject).entries()]
    assert titles == [
        "Demande d'adressage",
        "Mis de côté (lettre morte)",
        "Rejoué par un opérateur",
    ]


def test_bounds_and_unreadable_records() -> None:
    p = Projection(POLICIES, max_cases=2, max_timeline=3)
    closed = referral("ADR-1", "routine")
    publish(p, E.REFERRAL_REQUESTED, closed, T0)
    publish(p, E.REFERRAL_CANCELLED, closed, T0 + timedelta(minutes=1))
    publish(p, E.REFERRAL_REQUESTED, referral("ADR-2", "routine"), T0)
    publish(p, E.REFERRAL_REQUESTED, referral("ADR-3", "routine"), T0)
    assert sorted(v.reference for v in p.cases.values()) == ["ADR-2", "ADR-3"]  # closed first
    assert not p.apply(Record("care.referral.events", 0, 99, 0, b"k", b"not json", ()))
    assert p.unreadable == 1
    p.apply(
        Record(
            "care.rejected-input",
            0,
            0,
            0,
            b"ch",
            b"MSH|...",
            (
                (b"rejected_channel".decode(), b"mllp"),
                ("rejected_sender", b"ch-moulins"),
                ("rejected_reason", b"PV2-9 missing"),
            ),
        )
    )
    assert p.rejected[0].sender == "ch-moulins" and p.rejected[0].channel == "mllp"


def test_no_patient_identity_in_a_case_view() -> None:
    p = Projection(POLICIES)
    env = publish(p, E.REFERRAL_REQUESTED, referral("ADR-PII", "urgent"), T0)
    view = p.case(env.subject)
    shown = repr(
        (
            view.state,
            view.people,
            view.reference,
            [vars(e) if hasattr(e, "__dict__") else e for e in view.entries()],
        )
    )
    assert PATIENT.family not in shown and PATIENT.given not in shown
    assert PATIENT.ins not in shown


def test_since_in_french() -> None:
    now = datetime(2025, 3, 17, 10, 0, tzinfo=UTC)
    assert since(now + timedelta(hours=3), now) == "dans 3 h"
    assert since(now - timedelta(days=3), now) == "il y a 3 j"
    assert since(now - timedelta(minutes=5), now) == "il y a 5 min"


def test_password_session_and_csrf() -> None:
    encoded = hash_password("s3cret long", salt=b"0123456789abcdef")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret long", encoded)
    assert not verify_password("s3cret lonG", encoded)
    assert not verify_password("x", "md5$abc") and not verify_password("x", "scrypt$1$2")
    secret, now = b"k" * 32, datetime(2025, 3, 17, 10, 0, tzinfo=UTC)
    session = new_session("camille", now, timedelta(hours=1))
    token = encode_session(secret, session)
    assert decode_session(secret, token, now) == session
    assert decode_session(secret, token, now + timedelta(hours=2)) is None  # expired
    assert decode_session(b"other" * 8, token, now) is None  # other key
    _, _, sig = token.partition(".")
    forged = encode_session(secret, dataclasses.replace(session, login="admin")).split(".")[0]
    assert decode_session(secret, f"{forged}.{sig}", now) is None
    assert decode_session(secret, "garbage", now) is None
    assert csrf_ok(secret, session.sid, csrf_token(secret, session.sid))
    assert not csrf_ok(secret, session.sid, csrf_token(secret, "another-session"))
    assert not csrf_ok(secret, session.sid, None)


def test_login_throttle() -> None:
    t = LoginThrottle(free=2, delay=timedelta(seconds=30), size=2)
    now = datetime(2025, 3, 17, 10, 0, tzinfo=UTC)
    for _ in range(2):
        assert t.allowed("a", now)
        t.failed("a", now)
    assert not t.allowed("a", now + timedelta(seconds=10))
    assert t.allowed("a", now + timedelta(seconds=31))
    t.failed("b", now)
    t.failed("c", now)  # bounded: "a" is forgotten
    assert t.allowed("a", now)
    t.succeeded("b")
    assert t.allowed("b", now)


def test_a_status_read_before_its_work_item_still_names_the_recipient() -> None:
    """At start the feed reads topics in any order: names are resolved when shown."""
    p = Projection(POLICIES)
    env = publish(p, E.REFERRAL_REQUESTED, referral("ADR-ORDER", "routine"), T0)
    who = Recipient(
        RecipientKind.PRACTITIONER, CARDIOLOGIST.rpps, "cardio@x.mssante.fr", "performer", "Dr C"
    )
    item = WorkItem(env, Channel.MSSANTE, who)
    failed = status_event(item, Outcome.permanent("550 unknown"), 2)
    p.apply(record("care.delivery.status", failed, T0 + timedelta(minutes=2)))
    assert p.failure_list()[0].recipient == "cardio@x.mssante.fr"  # not known yet
    p.apply(record("care.delivery.mssante", item.envelope(), T0 + timedelta(minutes=1)))
    assert p.failure_list()[0].recipient == "Dr C"
    failed_entry = p.case(env.subject).entries()[-1]
    assert failed_entry.detail == "MSSanté → Dr C : mssante → performer: 550 unknown"


def test_hash_password_command_prints_a_verifiable_account() -> None:
    import tomllib

    from typer.testing import CliRunner

    from bus.cli import app

    out = CliRunner().invoke(
        app, ["dashboard", "hash-password", "--login", "camille"], input="tres-long-secret\n" * 2
    )
    assert out.exit_code == 0, out.output
    toml = out.output[out.output.index("[[dashboard.users]]") :]
    [user] = tomllib.loads(toml)["dashboard"]["users"]
    assert user["login"] == "camille"
    assert verify_password("tres-long-secret", user["password_scrypt"])
    assert "tres-long-secret" not in out.output
    short = CliRunner().invoke(app, ["dashboard", "hash-password"], input="court\ncourt\n")
    assert short.exit_code == 2


def test_accounts_a_server_needs_configured_accounts() -> None:
    import pytest

    from adapters.dashboard.service import DashboardConfigError, accounts_for, is_loopback
    from bus.settings import DashboardSettings, DashboardUser, Settings

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("coordination.example.fr")
    local, generated = accounts_for(Settings(dashboard=DashboardSettings()))
    assert generated is not None and list(local) == [generated[0]]
    assert verify_password(generated[1], local[generated[0]].password_hash)
    with pytest.raises(DashboardConfigError, match="not loopback"):
        accounts_for(Settings(dashboard=DashboardSettings(host="0.0.0.0")))
    user = DashboardUser(login="camille", password_scrypt=hash_password("un secret assez long"))
    server = Settings(dashboard=DashboardSettings(host="0.0.0.0", users=[user]))
    accounts, generated = accounts_for(server)
    assert generated is None and list(accounts) == ["camille"]

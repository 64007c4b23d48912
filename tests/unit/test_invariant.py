"""The invariant's pure comparison (tests/reliability/invariant.py check()), no sockets."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.invariant import (
    DMP,
    EPARCOURS,
    MSSANTE,
    DeadLetter,
    Effect,
    Expect,
    Failure,
    Observed,
    Rejected,
    Sent,
    check,
    notification_effects,
    read_mailbox,
)

GP, COORD = "gp@x.mssante.fr", "coord@x.mssante.fr"


def base() -> tuple[list[Sent], list[Expect], Observed]:
    sent = [Sent("M1", "AA", "e1", "mllp"), Sent("B2", "202", "e2", "http")]
    expected = [
        Expect(MSSANTE, GP, "e1", "e1", "10101234567"),
        Expect(MSSANTE, COORD, "e1", "e1", "territory/t"),
        Expect(DMP, "dmp", "hash2", "e2", "dmp"),
    ]
    observed = Observed(
        effects=[
            Effect(MSSANTE, GP, "e1", "<i1@x>"),
            Effect(MSSANTE, COORD, "e1", "<i2@x>"),
            Effect(DMP, "dmp", "hash2", "1.2.3"),
        ],
        stored_events={"e1", "e2"},
    )
    return sent, expected, observed


def test_all_delivered_is_ok() -> None:
    report = check(*base())
    assert report.ok, report.summary()
    assert report.delivered == 3


def test_acknowledged_but_not_on_topic_is_lost() -> None:
    sent, expected, observed = base()
    observed.stored_events.discard("e2")
    report = check(sent, expected, observed)
    assert not report.ok
    assert [s.marker for s in report.lost_at_ingress] == ["B2"]


def test_missing_effect_without_failure_is_a_violation() -> None:
    sent, expected, observed = base()
    observed.effects.pop(0)
    report = check(sent, expected, observed)
    assert [x.recipient for x in report.missing] == [GP]


def test_missing_effect_explained_by_delivery_failed() -> None:
    sent, expected, observed = base()
    observed.effects.pop(0)
    observed.failures.append(Failure("f1", "e1", MSSANTE, GP.upper(), "10101234567"))
    report = check(sent, expected, observed)
    assert report.ok and report.failed == 1
    # the failure owes the coordinator an alert mail, when the coordinator is known
    report = check(sent, expected, observed, coordinator=COORD)
    assert [x.key for x in report.missing] == ["f1"]
    observed.effects.append(Effect(MSSANTE, COORD, "f1", "<i3@x>"))
    assert check(sent, expected, observed, coordinator=COORD).ok


def test_failure_matched_by_recipient_id() -> None:
    sent, expected, observed = base()
    observed.effects.pop(2)
    observed.failures.append(Failure("f2", "e2", DMP, "dmp", "dmp"))
    assert check(sent, expected, observed).ok


def test_failure_of_another_event_does_not_explain() -> None:
    sent, expected, observed = base()
    observed.effects.pop(0)
    observed.failures.append(Failure("f1", "other", MSSANTE, GP, "10101234567"))
    assert len(check(sent, expected, observed).missing) == 1


def test_duplicate_mail_with_other_message_id_or_second_file() -> None:
    sent, expected, observed = base()
    observed.effects.append(Effect(MSSANTE, GP, "e1", "<other@x>"))
    report = check(sent, expected, observed)
    assert len(report.duplicates) == 1 and not report.ok
    sent, expected, observed = base()
    observed.effects.append(Effect(MSSANTE, GP, "e1", "<i1@x>", "second file"))
    assert len(check(sent, expected, observed).duplicates) == 1


def test_platform_redelivery_with_same_event_number_is_one_effect() -> None:
    sent, expected, observed = base()
    expected.append(Expect(EPARCOURS, "sub1", "h1", "e2", "sub1"))
    observed.effects += [Effect(EPARCOURS, "sub1", "h1", "7"), Effect(EPARCOURS, "sub1", "h1", "7")]
    assert check(sent, expected, observed).ok
    observed.effects.append(Effect(EPARCOURS, "sub1", "h1", "8"))
    assert len(check(sent, expected, observed).duplicates) == 1


def test_unexpected_effect() -> None:
    sent, expected, observed = base()
    observed.effects.append(Effect(MSSANTE, "someone@x.fr", "e1", "<z@x>"))
    report = check(sent, expected, observed)
    assert [e.recipient for e in report.unexpected] == ["someone@x.fr"]


def test_refused_needs_rejected_record_and_transient_needs_nothing() -> None:
    sent, expected, observed = base()
    sent += [Sent("BAD-1", "AR", via="mllp"), Sent("bundle-9", "422", via="http")]
    sent += [Sent("LATER-1", "AE", via="mllp"), Sent("b-10", "503", via="http")]
    report = check(sent, expected, observed)
    assert [s.marker for s in report.refused_unrecorded] == ["BAD-1", "bundle-9"]
    observed.rejected += [Rejected(b"MSH|...|BAD-1|..."), Rejected(b'{"id":"bundle-9"}')]
    assert check(sent, expected, observed).ok


def test_unanswered_partial_and_unexplained_dead_letters() -> None:
    sent, expected, observed = base()
    sent.append(Sent("M3", ""))
    observed.partial_files.append("/mailbox/x/.tmp-abc")
    observed.dead_letters += [
        DeadLetter("e1", "delivery failed: 550"),
        DeadLetter("e2", "ValueError: boom"),
    ]
    report = check(sent, expected, observed)
    assert len(report.unanswered) == 1
    assert report.partial_files == ["/mailbox/x/.tmp-abc"]
    assert [d.key for d in report.unexplained_dead_letters] == ["e2"]


def test_effect_and_failure_together_is_reported_not_failed() -> None:
    sent, expected, observed = base()
    observed.failures.append(Failure("f1", "e1", MSSANTE, GP, "10101234567"))
    report = check(sent, expected, observed)
    assert report.ok and len(report.failed_but_delivered) == 1


def test_read_mailbox_counts_files_and_half_written_ones(tmp_path: Path) -> None:
    box = tmp_path / "mailbox" / GP
    box.mkdir(parents=True)
    raw = b"Message-ID: <i1@x>\r\nX-CareBus-Event: e1\r\nSubject: s\r\n\r\nbody\r\n"
    (box / "20250101T000000Z-abc.eml").write_bytes(raw)
    (box / ".tmp-abc-1234").write_bytes(raw[:10])
    effects, partial = read_mailbox(tmp_path)
    assert effects == [Effect(MSSANTE, GP, "e1", "<i1@x>", str(box / "20250101T000000Z-abc.eml"))]
    assert partial == [str(box / ".tmp-abc-1234")]


def test_notification_effects_from_full_resource_bundle() -> None:
    status = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "type", "valueCode": "event-notification"},
            {
                "name": "notification-event",
                "part": [{"name": "event-number", "valueString": "3"}],
            },
        ],
    }
    bundle = {
        "entry": [
            {"resource": status},
            {"resource": {"resourceType": "Task", "id": "t"}},
            {"resource": {"resourceType": "MessageHeader", "id": "h1"}},
        ]
    }
    heartbeat = {
        "entry": [
            {"resource": {"parameter": [{"name": "type", "valueCode": "heartbeat"}]}},
        ]
    }
    effects = notification_effects([("sub1", bundle), ("sub1", heartbeat)])
    assert effects == [Effect(EPARCOURS, "sub1", "h1", "3")]

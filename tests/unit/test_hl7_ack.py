"""HL7 ACK building: the sender's dialect, MSA-2 echo, ERR per Issue, and broken input."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7.ack import ack_code_for, build_ack, error_location, escape, hl7_error_code
from adapters.hl7.adt import map_adt
from adapters.hl7.framing import FrameTooLarge
from adapters.hl7.message import DEFAULT_SEPARATORS, Message, Separators, parse_message, unescape
from schemas.outcome import Issue, IssueCode, ValidationFailed

DATA = Path(__file__).parents[1] / "data" / "hl7"
NOW = datetime(2024, 5, 6, 10, 15, 3, tzinfo=UTC)


def incoming(name: str) -> Message:
    return parse_message((DATA / name).read_bytes())


def ack_of(data: bytes) -> Message:
    """Every ACK must parse with our parser, and with python-hl7 as an independent check."""
    msg = parse_message(data)
    assert hl7.parse(data.decode(msg.codec)).segment("MSA")[1][0] in ("AA", "AE", "AR")
    return msg


def test_aa_ack_swaps_sender_and_receiver_and_echoes_msh_10() -> None:
    raw = build_ack(incoming("adt_a01_utf8.hl7"), control_id="ACK-1", now=NOW)
    ack = ack_of(raw)
    assert ack.value("MSH", 3) == "CAREBUS" and ack.value("MSH", 4) == "CPTS-BA"
    assert ack.value("MSH", 5) == "SIH-PAM" and ack.value("MSH", 6, 2) == "1.2.250.1.71.4.2.2"
    assert ack.value("MSH", 7) == "20240506101503+0000"
    assert [ack.value("MSH", 9, c) for c in (1, 2, 3)] == ["ACK", "A01", "ACK"]
    assert ack.control_id == "ACK-1" and ack.version == "2.5" and ack.value("MSH", 11) == "P"
    assert ack.value("MSA", 1) == "AA" and ack.value("MSA", 2) == "CHBA-A01-000101"
    assert ack.all("ERR") == []
    assert raw.endswith(b"\r") and b"\n" not in raw


def test_ack_gets_a_fresh_control_id_each_time() -> None:
    msg = incoming("adt_a01_utf8.hl7")
    ids = {ack_of(build_ack(msg)).control_id for _ in range(5)}
    assert len(ids) == 5 and "CHBA-A01-000101" not in ids


@pytest.mark.parametrize(
    ("name", "charset", "codec"),
    [("adt_a01_utf8.hl7", "UNICODE UTF-8", "utf-8"), ("adt_a01_8859-1.hl7", "8859/1", "latin-1")],
)
def test_ack_uses_the_incoming_charset(name: str, charset: str, codec: str) -> None:
    issue = Issue(IssueCode.VALUE, "Donnée invalide", "PID-7")
    raw = build_ack(incoming(name), [issue])
    assert "Donnée invalide".encode(codec) in raw
    ack = ack_of(raw)
    assert ack.charset == charset and ack.value("ERR", 8) == "Donnée invalide"


def test_ack_uses_the_incoming_separators() -> None:
    msg = parse_message("MSH#$*!%#SIH#FAC#CB#CPTS#20240101##ADT$A16#CTL$1#P#2.5\rPID###1")
    issue = Issue(IssueCode.REQUIRED, "a # b $ c * d ! e % f", "PV2-9")
    raw = build_ack(msg, [issue])
    assert raw.startswith(b"MSH#$*!%#CB#CPTS#SIH#FAC#")
    ack = ack_of(raw)
    assert ack.separators == Separators("#", "$", "*", "!", "%")
    assert msg.control_id == "CTL$1"
    assert ack.segment("MSA").raw(2) == "CTL$1"  # type: ignore[union-attr]
    assert ack.value("ERR", 8) == "a # b $ c * d ! e % f"
    assert ack.value("ERR", 2) == "PV2" and ack.value("ERR", 2, 3) == "9"


def test_ae_ack_has_one_err_per_issue() -> None:
    issues = [
        Issue(IssueCode.REQUIRED, "A16 needs the planned discharge date", "PV2-9"),
        Issue(IssueCode.CODE_INVALID, "PID-8 is not in HL7 table 0001", "PID-8"),
        Issue(IssueCode.REQUIRED, "the PV1 segment is required", "PV1"),
        Issue(IssueCode.VALUE, "line one\nline | two ^ & ~ \\", None),
    ]
    ack = ack_of(build_ack(incoming("adt_a16_8859-1.hl7"), issues))
    assert ack.value("MSA", 1) == "AE" and ack.value("MSA", 2) == "CHBA-A16-000102"
    errs = ack.all("ERR")
    assert len(errs) == 4
    assert [e.raw(2) for e in errs] == ["PV2^1^9", "PID^1^8", "PV1^1", ""]
    assert [e.value(3) for e in errs] == ["101", "103", "100", "102"]
    assert errs[0].value(3, 2) == "Required field missing" and errs[0].value(3, 3) == "HL70357"
    assert {e.value(4) for e in errs} == {"E"}
    assert [e.value(5) for e in errs] == ["required", "code-invalid", "required", "value"]
    assert errs[3].value(8) == "line one\nline | two ^ & ~ \\"


def test_unsupported_event_is_rejected_with_201() -> None:
    msg = incoming("adt_a08_unsupported.hl7")
    with pytest.raises(ValidationFailed) as exc:
        map_adt(msg)
    ack = ack_of(build_ack(msg, exc.value.issues))
    assert ack.value("MSA", 1) == "AR" and ack.value("MSA", 2) == "CHBA-A08-000108"
    assert ack.value("MSH", 9, 2) == "A08"
    assert ack.value("ERR", 3) == "201" and ack.value("ERR", 2) == "MSH"


@pytest.mark.parametrize(
    ("code", "where", "hl7_code"),
    [
        (IssueCode.REQUIRED, "PID-3", "101"),
        (IssueCode.REQUIRED, "ZBE", "100"),
        (IssueCode.STRUCTURE, None, "100"),
        (IssueCode.STRUCTURE, "MSH-2", "102"),
        (IssueCode.VALUE, "PID-7", "102"),
        (IssueCode.TOO_LONG, None, "102"),
        (IssueCode.CODE_INVALID, "PID-8", "103"),
        (IssueCode.NOT_SUPPORTED, "MSH-9.1", "200"),
        (IssueCode.NOT_SUPPORTED, "MSH-9", "201"),
        (IssueCode.NOT_SUPPORTED, "MSH-12", "202"),
        (IssueCode.NOT_SUPPORTED, "MSH-11", "203"),
        (IssueCode.DUPLICATE, "MSH-10", "205"),
        (IssueCode.TRANSIENT, None, "207"),
        (IssueCode.PROCESSING, None, "207"),
    ],
)
def test_issue_codes_map_to_table_0357(code: IssueCode, where: str | None, hl7_code: str) -> None:
    assert hl7_error_code(Issue(code, "x", where)) == hl7_code


@pytest.mark.parametrize(
    ("expression", "location"),
    [("PID-3", "PID^1^3"), ("MSH-9.2", "MSH^1^9^1^2"), ("ZBE", "ZBE^1"), (None, ""),
     ("Bundle.entry[0]", ""), ("pid-3", "")],
)
def test_error_location(expression: str | None, location: str) -> None:
    assert error_location(expression) == location


def test_ack_code_rules() -> None:
    assert ack_code_for([]) == "AA"
    assert ack_code_for([Issue(IssueCode.VALUE, "w", "PID-7", severity="warning")]) == "AA"
    assert ack_code_for([Issue(IssueCode.REQUIRED, "r", "PV2-9")]) == "AE"
    assert ack_code_for([Issue(IssueCode.TRANSIENT, "broker down")]) == "AE"
    assert ack_code_for([Issue(IssueCode.VALUE, "v"), Issue(IssueCode.NOT_SUPPORTED, "n")]) == "AR"
    assert ack_code_for([Issue(IssueCode.STRUCTURE, "s")]) == "AR"


def test_transient_refusal_is_ae_without_err() -> None:
    ack = ack_of(build_ack(incoming("adt_a01_utf8.hl7"), code="AE"))
    assert ack.value("MSA", 1) == "AE" and ack.all("ERR") == []


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"MSH", b"MSH\rPID|||1", b"MSH|^^\\&|A|B|C|D|2024||ADT^A01|CTL42|P|2.5\r",
     b"\x0bMSH|^~\\&|", "MSH|^~\\&|A|B|C|D|2024||ADT^A01|é|P|2.5\rbad".encode()],
)
def test_unreadable_msh_10_gives_ar_with_empty_msa_2(data: bytes) -> None:
    ack = ack_of(build_ack(data, now=NOW))
    assert ack.value("MSA", 1) == "AR" and ack.value("MSA", 2) == ""
    assert len(ack.all("ERR")) >= 1


def test_broken_body_still_echoes_a_readable_msh_10() -> None:
    data = b"MSH|^~\\&|SIH|FAC|CB|CPTS|2024||ADT^A01|CTL42|P|2.5\rnot a segment"
    ack = ack_of(build_ack(data, code="AA"))  # AA cannot be kept for unparsable input
    assert (ack.value("MSA", 1), ack.value("MSA", 2)) == ("AR", "CTL42")
    assert ack.value("MSH", 3) == "CB" and ack.value("MSH", 9, 2) == "A01"
    assert ack.value("ERR", 3) == "100"


def test_oversize_frame_head_is_enough_for_the_ar() -> None:
    body = (DATA / "adt_a01_utf8.hl7").read_bytes() + b"NTE|1||" + b"x" * 10_000
    too_large = FrameTooLarge(len(body), 4096, body[:4096])
    issue = Issue(IssueCode.TOO_LONG, f"the frame exceeds {too_large.limit} bytes")
    ack = ack_of(build_ack(too_large.head, [issue]))
    assert (ack.value("MSA", 1), ack.value("MSA", 2)) == ("AR", "CHBA-A01-000101")
    assert ack.value("ERR", 3) == "102"


def test_no_patient_data_in_the_ack() -> None:
    msg = incoming("adt_a01_utf8.hl7")
    issues = [Issue(IssueCode.VALUE, "not an HL7 date/time", "PID-7")]
    raw = build_ack(msg, issues).decode("utf-8")
    for secret in ("LEFÈVRE", "Hélène", "256030331004597", "00012345", "19560312", "03200",
                   "MARTIN", "10101234567", "Église"):
        assert secret not in raw


@given(st.text(alphabet=st.characters(exclude_characters="\r"), max_size=80))
def test_escape_round_trips(text: str) -> None:
    assert unescape(escape(text, DEFAULT_SEPARATORS), DEFAULT_SEPARATORS) == "".join(
        c if c.isprintable() or c == "\n" else " " for c in text)


_ISSUES = st.lists(
    st.builds(
        Issue,
        code=st.sampled_from(list(IssueCode)),
        diagnostics=st.text(max_size=60),
        expression=st.one_of(st.none(), st.from_regex(r"[A-Z]{3}(-[0-9]{1,2}(\.[0-9])?)?",
                                                      fullmatch=True), st.text(max_size=10)),
    ),
    max_size=4,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=200).map(lambda b: b"MSH|^~\\&|A|B|C|D|2024||ADT^A16|" + b)),
       _ISSUES)
def test_ack_building_always_produces_a_parseable_ack(data: bytes, issues: list[Issue]) -> None:
    raw = build_ack(data, issues)
    assert b"\x0b" not in raw and b"\x1c" not in raw  # always frameable
    ack = parse_message(raw)
    assert ack.message_code == "ACK" and ack.version == "2.5"
    code = ack.value("MSA", 1)
    assert code in ("AA", "AE", "AR")
    assert len(ack.all("ERR")) == (0 if code == "AA" else len(issues) or len(ack.all("ERR")))

"""The minimal HL7 v2 parser: charsets, separators, escapes, limits, and python-hl7 as oracle."""

from __future__ import annotations

from pathlib import Path

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7.message import (
    DEFAULT_SEPARATORS,
    ParserSettings,
    Separators,
    parse_message,
    unescape,
)
from schemas.outcome import IssueCode, ValidationFailed

DATA = Path(__file__).parents[1] / "data" / "hl7"
MSH_UTF8 = "MSH|^~\\&|SIH|030000178|CAREBUS|CPTS|20240506101502||ADT^A01|C1|P|2.5|||||FRA|"


def _issues(data: bytes | str, **kw: object) -> list[tuple[IssueCode, str | None]]:
    with pytest.raises(ValidationFailed) as exc:
        parse_message(data, ParserSettings(**kw))  # type: ignore[arg-type]
    return [(i.code, i.expression) for i in exc.value.issues]


def test_parses_a_pam_fr_admission_in_utf8() -> None:
    msg = parse_message((DATA / "adt_a01_utf8.hl7").read_bytes())
    assert [s.name for s in msg] == ["MSH", "EVN", "PID", "PV1", "ZBE", "ZFA", "ROL", "ROL"]
    assert msg.charset == "UNICODE UTF-8" and msg.codec == "utf-8"
    assert msg.separators == DEFAULT_SEPARATORS
    assert (msg.control_id, msg.message_code) == ("CHBA-A01-000101", "ADT")
    assert msg.trigger_event == "A01"
    assert msg.version == "2.5"
    ids = msg.get("PID", 3)
    assert [r.comp(1) for r in ids] == ["256030331004597", "00012345"]
    assert ids[0].comp(4, 2) == "1.2.250.1.213.1.4.8"
    assert ids[1].subs(4) == ["CHBA", "1.2.250.1.211.10.200.2", "ISO"]
    assert msg.value("PID", 5) == "LEFÈVRE"
    assert msg.value("PID", 5, 2, rep=2) == "Hélène"
    assert msg.value("PID", 5, 7, rep=2) == "D"
    assert len(msg.all("ROL")) == 2 and msg.all("ROL")[1].value(4, 2) == "CHÂTEAU"


def test_iso_8859_1_variant_decodes_to_the_same_text() -> None:
    utf8 = parse_message((DATA / "adt_a01_utf8.hl7").read_bytes())
    latin = parse_message((DATA / "adt_a01_8859-1.hl7").read_bytes())
    assert latin.charset == "8859/1" and latin.codec == "iso-8859-1"
    for seg_u, seg_l in zip(utf8.segments[1:], latin.segments[1:], strict=True):
        assert seg_u.fields == seg_l.fields
    assert latin.value("PID", 11) == "12 rue de l'Église"


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_segment_terminators_are_all_tolerated(terminator: str) -> None:
    text = terminator.join([MSH_UTF8 + "UNICODE UTF-8", "EVN||20240506", "PID|||123"])
    msg = parse_message((text + terminator * 2).encode())
    assert [s.name for s in msg] == ["MSH", "EVN", "PID"]
    assert msg.value("PID", 3) == "123"


def test_escape_sequences_are_decoded_on_access_only() -> None:
    raw = "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\\.br\\G\\X41C3A9\\H\\H\\I\\N\\"
    msg = parse_message(f"{MSH_UTF8}UNICODE UTF-8\rNTE|1||{raw}^second".encode())
    rep = msg.get("NTE", 3)[0]
    assert rep.raw == f"{raw}^second"  # kept raw, so the decoded ^ cannot split it
    assert rep.comp(1) == "A|B^C&D~E\\F\nGAéHI"
    assert rep.comp(2) == "second"
    assert msg.value("NTE", 3) == rep.comp(1)


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("no escapes", "no escapes"),
        ("a\\Q\\b", "a\\Q\\b"),  # unknown sequence stays literal
        ("a\\Xzz\\b", "a\\Xzz\\b"),  # not hex
        ("a\\X4\\b", "a\\X4\\b"),  # odd number of digits
        ("dangling\\F", "dangling\\F"),  # escape character without its closing twin
        ("\\.sp999999999\\x", "\nx"),  # cannot be abused to allocate lines
        ("\\Zlocal\\x\\C2842\\y", "xy"),  # local and charset escapes are dropped
    ],
)
def test_unescape_edge_cases(raw: str, decoded: str) -> None:
    assert unescape(raw, DEFAULT_SEPARATORS, "utf-8") == decoded


def test_hex_escape_uses_the_message_charset() -> None:
    assert unescape("Unit\\XE9\\", DEFAULT_SEPARATORS, "iso-8859-1") == "Unité"
    assert unescape("Unit\\XE9\\", DEFAULT_SEPARATORS, "utf-8") == "Unit\\XE9\\"


def test_custom_separators_are_read_from_msh_1_and_msh_2() -> None:
    text = "MSH#$*!%#SIH#FAC#R#RF#20240101##ADT$A16#CTL#P#2.5\rPID###a!S!b$$$AUTH%1.2*d"
    msg = parse_message(text)
    assert msg.separators == Separators("#", "$", "*", "!", "%")
    assert msg.value("MSH", 1) == "#" and msg.value("MSH", 2) == "$*!%"
    assert msg.trigger_event == "A16"
    reps = msg.get("PID", 3)
    assert [r.comp(1) for r in reps] == ["a$b", "d"]
    assert reps[0].comp(4, 2) == "1.2" and reps[0].comp(4, 1) == "AUTH"
    assert reps[0].comp(4) == "AUTH"


def test_default_charset_applies_when_msh_18_is_empty() -> None:
    latin = f"{MSH_UTF8}\rPID|||1||NOËL".encode("iso-8859-1")
    assert parse_message(latin).value("PID", 5) == "NOËL"  # default 8859/1
    utf8 = f"{MSH_UTF8}\rPID|||1||NOËL".encode()
    msg = parse_message(utf8, ParserSettings(default_charset="UNICODE UTF-8"))
    assert msg.value("PID", 5) == "NOËL" and msg.charset == "UNICODE UTF-8"


def test_charset_mismatch_is_an_issue_on_msh_18_not_a_silent_replacement() -> None:
    latin_declared_utf8 = f"{MSH_UTF8}UNICODE UTF-8\rPID|||1||NOËL".encode("iso-8859-1")
    assert _issues(latin_declared_utf8) == [(IssueCode.VALUE, "MSH-18")]
    accents_declared_ascii = f"{MSH_UTF8}ASCII\rPID|||1||NOËL".encode()
    with pytest.raises(ValidationFailed) as exc:
        parse_message(accents_declared_ascii)
    assert "byte offset" in exc.value.issues[0].diagnostics


def test_unknown_charset_is_refused() -> None:
    assert _issues(f"{MSH_UTF8}ISO IR87\rPID|||1".encode()) == [
        (IssueCode.CODE_INVALID, "MSH-18")
    ]


@pytest.mark.parametrize(
    ("data", "where"),
    [
        (b"EVN||20240101\rMSH|^~\\&|", "MSH"),
        (b"", "MSH"),
        (b"MSHA^~\\&|X", "MSH-1"),  # a letter as field separator
        (b"MSH ^~\\&|X", "MSH-1"),
        (b"MSH|^^\\&|X|Y", "MSH-2"),  # duplicated encoding character
        (b"MSH|^~|X|Y", "MSH-2"),  # too short
        (b"MSH|^~\\|X|Y", "MSH-2"),
        (b"MSH|^~\\a|X|Y", "MSH-2"),  # a letter as sub-component separator
        (b"MSH|^~|&|X|Y", "MSH-2"),
    ],
)
def test_wrong_separators_point_at_msh_1_or_msh_2(data: bytes, where: str) -> None:
    assert _issues(data) == [(IssueCode.STRUCTURE, where)]


def test_bom_and_leading_blank_lines_are_tolerated() -> None:
    data = b"\xef\xbb\xbf" + f"{MSH_UTF8}UNICODE UTF-8\rPID|||1".encode()
    assert parse_message(data).value("PID", 3) == "1"
    assert parse_message(b"\r\n" + f"{MSH_UTF8}\rPID|||1".encode()).value("PID", 3) == "1"


def test_limits_protect_against_blowups() -> None:
    many_segments = MSH_UTF8 + "\r" + "\r".join(["NTE|1|x"] * 20)
    assert _issues(many_segments, max_segments=10) == [(IssueCode.TOO_LONG, None)]
    many_fields = MSH_UTF8 + "\rNTE" + "|x" * 50
    assert _issues(many_fields, max_fields=40) == [(IssueCode.TOO_LONG, "NTE")]
    assert _issues(MSH_UTF8 + "\rNTE|" + "x" * 500, max_bytes=200) == [
        (IssueCode.TOO_LONG, None)
    ]


def test_every_structural_problem_is_reported_at_once() -> None:
    text = MSH_UTF8 + "\rpid|||1\rMSH|^~\\&|again\rX|y\rPID|||2"
    issues = _issues(text)
    assert issues == [
        (IssueCode.STRUCTURE, None),
        (IssueCode.STRUCTURE, "MSH"),
        (IssueCode.STRUCTURE, None),
    ]


def test_accessors_are_total() -> None:
    msg = parse_message(MSH_UTF8 + '\rPID|||1~2||""^X|""')
    assert msg.get("PV1", 3) == [] and msg.value("PV1", 3) == "" and msg.segment("PV1") is None
    assert msg.value("PID", 3, rep=2) == "2" and msg.value("PID", 3, rep=3) == ""
    assert msg.value("PID", 3, comp=2) == "" and msg.value("PID", 3, sub=2) == ""
    assert msg.value("PID", 99) == "" and msg.value("PID", 0) == ""
    assert msg.value("PID", 5) == "" and msg.value("PID", 5, 2) == "X"  # "" is HL7 null
    assert msg.value("PID", 6) == ""
    rep = msg.get("PID", 3)[0]
    assert rep.comp(0) == "" and rep.comp(9) == "" and rep.subs(9) == [] and str(rep) == "1"


@pytest.mark.parametrize("path", sorted(DATA.glob("*.hl7")), ids=lambda p: p.name)
def test_python_hl7_agrees_on_every_field(path: Path) -> None:
    """python-hl7 is slow but independent: every raw field must match it."""
    ours = parse_message(path.read_bytes())
    text = path.read_bytes().decode(ours.codec).replace("\r\n", "\r").replace("\n", "\r")
    theirs = hl7.parse(text.strip())
    assert len(theirs) == len(ours.segments)
    for seg_theirs, seg_ours in zip(theirs, ours.segments, strict=True):
        assert str(seg_theirs[0]) == seg_ours.name
        for n in range(3 if seg_ours.name == "MSH" else 1, len(seg_ours.fields)):
            assert str(seg_theirs[n]) == seg_ours.raw(n), f"{seg_ours.name}-{n}"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_raise_only_validation_failed(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except ValidationFailed as exc:
        assert exc.issues and all(i.diagnostics for i in exc.issues)
        return
    assert msg.segments[0].name == "MSH"


_HEADER = MSH_UTF8.encode()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([b"", b"UNICODE UTF-8", b"8859/1", b"ASCII"]))
def test_any_body_after_a_valid_header_is_safe_to_read(body: bytes, charset: bytes) -> None:
    try:
        msg = parse_message(_HEADER + charset + b"\r" + body)
    except ValidationFailed:
        return
    for seg in msg:  # every accessor must stay total on whatever was accepted
        for n in range(len(seg.fields) + 1):
            for rep in seg.reps(n):
                rep.comp(1), rep.comp(2, 2), rep.subs(1)
            seg.value(n, 2, 2, 2)

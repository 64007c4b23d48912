"""ADT → AdtEvent mapping on realistic IHE PAM France messages, and every refusal it makes."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7.adt import AdtEvent, map_adt, parse_adt
from adapters.hl7.message import parse_message
from adapters.hl7.model import PARIS, looks_like_finess, nir_key_ok, parse_ts
from schemas.codes import INS_NIR, EventType
from schemas.outcome import IssueCode, ValidationFailed

DATA = Path(__file__).parents[1] / "data" / "hl7"


def load(name: str) -> AdtEvent:
    return parse_adt((DATA / name).read_bytes())


def lines(name: str) -> list[str]:
    """A UTF-8 data file as a list of segments, to derive broken variants from."""
    return (DATA / name).read_text("utf-8").splitlines()


def with_field(segs: list[str], seg: str, n: int, value: str) -> list[str]:
    """Set SEG-n (HL7 numbering) in the first `seg` segment."""
    out = list(segs)
    i = next(k for k, s in enumerate(out) if s.startswith(seg + "|"))
    fields = out[i].split("|")
    index = n - 1 if seg == "MSH" else n
    fields += [""] * (index + 1 - len(fields))
    fields[index] = value
    out[i] = "|".join(fields)
    return out


def without(segs: list[str], seg: str) -> list[str]:
    return [s for s in segs if not s.startswith(seg + "|")]


def refusal(segs: list[str]) -> list[tuple[IssueCode, str | None]]:
    with pytest.raises(ValidationFailed) as exc:
        parse_adt("\r".join(segs).encode())
    return [(i.code, i.expression) for i in exc.value.issues]


A01 = "adt_a01_utf8.hl7"


def test_admission_maps_every_field() -> None:
    e = load(A01)
    assert (e.trigger, e.event_type, e.event_type.value) == ("A01", EventType.ADMISSION_NOTIFIED,
                                                             "admission.notified")
    assert e.control_id == "CHBA-A01-000101"
    assert (e.sending_application, e.sending_facility) == ("SIH-PAM", "030000178")
    assert e.facility_finess == "030000178"
    assert e.message_time == datetime(2024, 5, 6, 10, 15, 2, tzinfo=PARIS)
    assert e.message_time.utcoffset() == timedelta(hours=2)  # summer time in Paris
    assert e.recorded_time == e.message_time
    assert e.occurred_time == datetime(2024, 5, 6, 10, 15, tzinfo=PARIS)
    assert e.planned_time is None and e.planned_discharge is None

    p = e.patient
    assert p.ins is not None and p.ins.value == "256030331004597" and p.ins.system == INS_NIR
    assert p.ins_trusted and p.identity_reliability == ("VALI",)
    assert p.ipp is not None and (p.ipp.value, p.ipp.authority, p.ipp.type_code) == (
        "00012345", "CHBA", "PI")
    assert p.ipp.system == "urn:oid:1.2.250.1.211.10.200.2"
    assert len(p.identifiers) == 2
    assert [(n.family, n.type_code, n.use) for n in p.names] == [
        ("LEFÈVRE", "L", "official"), ("MARTIN-LEFÈVRE", "D", "usual")]
    assert p.names[0].given == ("Hélène", "Hélène Marie Noëlle") and p.names[0].prefix == "Mme"
    assert (p.birth_date, p.gender, p.postal_code) == (date(1956, 3, 12), "female", "03200")

    v = e.visit
    assert v.patient_class == "I" and v.location is not None
    assert (v.location.point_of_care, v.location.room, v.location.bed) == ("CARDIO", "204", "1")
    assert v.visit_number is not None and v.visit_number.value == "2024000456"
    assert v.admit_time == datetime(2024, 5, 6, 10, 15, tzinfo=PARIS)
    assert v.discharge_time is None and v.discharge_disposition is None

    mv = e.movement
    assert mv is not None and [i.value for i in mv.ids] == ["MVT-000101"]
    assert (mv.action, mv.historic, mv.original_trigger) == ("INSERT", False, None)
    assert (mv.medical_unit, mv.medical_unit_name) == ("4012", "Cardiologie")
    assert mv.start_time == datetime(2024, 5, 6, 10, 15, tzinfo=PARIS)

    assert e.gp is not None and (e.gp.rpps, e.gp.family, e.gp.given) == ("10101234567", "MARTIN",
                                                                         "Jean")
    assert e.gp.id_nat_ps == "810101234567"
    assert [(c.role, c.practitioner.rpps) for c in e.care_team] == [("RT", "10107654321")]
    assert e.care_team[0].practitioner.family == "CHÂTEAU"
    assert e.dmp is not None and e.dmp.status == "ACTIF" and e.dmp.access_opposed is False


def test_iso_8859_1_admission_maps_to_the_same_event() -> None:
    assert load("adt_a01_8859-1.hl7") == load(A01)


def test_planned_discharge_takes_pv2_9_and_keeps_day_precision() -> None:
    e = load("adt_a16_8859-1.hl7")
    assert e.event_type is EventType.DISCHARGE_PLANNED
    assert e.planned_discharge == datetime(2024, 5, 15, tzinfo=PARIS)
    assert e.planned_discharge_date_only
    assert e.planned_time == datetime(2024, 5, 15, 11, tzinfo=PARIS)  # EVN-3 is not used
    assert e.movement is not None and e.movement.medical_unit_name == "Unité de cardiologie"
    assert e.gp is not None and e.gp.rpps == "10101234567"
    msg = parse_message((DATA / "adt_a16_8859-1.hl7").read_bytes())
    assert msg.value("PID", 11) == "Résidence Tilleuls & Lilas\nBât. B"  # \T\ and \.br\


def test_planned_discharge_falls_back_to_evn_3_with_optional_data_missing() -> None:
    e = load("adt_a16_evn3_prov.hl7")
    assert e.planned_discharge == datetime(2024, 5, 16, 14, tzinfo=PARIS)
    assert not e.planned_discharge_date_only
    assert e.patient.ins is not None and e.patient.ins.value == "148112A00412325"  # Corsica
    assert not e.patient.ins_trusted and e.patient.identity_reliability == ("PROV",)
    assert e.patient.ipp is not None and e.patient.ipp.value == "00067890"
    assert e.facility_finess is None  # MSH-4 is a local code only
    assert (e.movement, e.gp, e.care_team, e.dmp) == (None, None, (), None)
    assert e.patient.postal_code is None and e.visit.location is None
    assert e.patient.gender == "male"


@pytest.mark.parametrize(
    ("name", "event_type", "original"),
    [
        ("adt_a25_utf8.hl7", "discharge.cancelled", "A16"),
        ("adt_a13_utf8.hl7", "discharge.reverted", "A03"),
        ("adt_a11_utf8.hl7", "admission.cancelled", "A01"),
    ],
)
def test_cancellations_carry_the_cancelled_movement(
    name: str, event_type: str, original: str
) -> None:
    e = load(name)
    assert e.event_type == event_type
    assert e.movement is not None
    assert (e.movement.action, e.movement.original_trigger) == ("CANCEL", original)


def test_discharge_with_idnatps_gp_adeli_and_opposition() -> None:
    e = load("adt_a03_8859-1.hl7")
    assert e.event_type is EventType.DISCHARGE_COMPLETED
    assert e.visit.discharge_time == datetime(2024, 5, 15, 14, tzinfo=PARIS)
    assert e.visit.discharge_disposition == "01"
    assert e.gp is not None and e.gp.rpps == "10109876543" and e.gp.family == "DUPONT"
    assert [(i.value, i.type_code) for i in e.gp.identifiers] == [("031012345", "ADELI")]
    assert e.dmp is not None and e.dmp.break_glass_opposed and e.dmp.access_opposed is True


def test_new_zfa_layout_is_kept_raw_and_not_interpreted() -> None:
    e = load("adt_a13_utf8.hl7")
    assert e.dmp is not None
    assert (e.dmp.feeding_code, e.dmp.consultation_code) == ("NA", "NA")
    assert e.dmp.access_opposed is None  # unknown, never a guessed "no opposition"
    assert not e.patient.ins_trusted  # PID-32 PROV: INS kept but untrusted
    assert e.patient.ins is not None


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [("A01", "admission.notified"), ("A11", "admission.cancelled"),
     ("A16", "discharge.planned"), ("A25", "discharge.cancelled"),
     ("A03", "discharge.completed"), ("A13", "discharge.reverted")],
)
def test_trigger_to_event_type(trigger: str, expected: str) -> None:
    segs = with_field(without(lines(A01), "ZBE"), "MSH", 9, f"ADT^{trigger}")
    segs = with_field(segs, "EVN", 3, "20240515")
    assert parse_adt("\r".join(segs)).event_type == expected


def test_unsupported_event_and_message_type_point_at_msh_9() -> None:
    assert refusal(lines("adt_a08_unsupported.hl7")) == [(IssueCode.NOT_SUPPORTED, "MSH-9")]
    assert refusal(with_field(lines(A01), "MSH", 9, "ORU^R01")) == [
        (IssueCode.NOT_SUPPORTED, "MSH-9.1")]


def test_a16_without_any_planned_date_names_pv2_9() -> None:
    assert refusal(lines("adt_a16_no_date.hl7")) == [(IssueCode.REQUIRED, "PV2-9")]


def test_a03_needs_the_discharge_time() -> None:
    segs = with_field(with_field(lines(A01), "MSH", 9, "ADT^A03"), "EVN", 6, "")
    assert refusal(without(segs, "ZBE")) == [(IssueCode.REQUIRED, "PV1-45")]


@pytest.mark.parametrize(
    ("seg", "n", "value", "expected"),
    [
        ("MSH", 10, "", (IssueCode.REQUIRED, "MSH-10")),
        ("MSH", 7, "2024-05-06", (IssueCode.VALUE, "MSH-7")),
        ("MSH", 12, "3.0", (IssueCode.NOT_SUPPORTED, "MSH-12")),
        ("MSH", 4, "X^1.2.250.1.71.4.2.2^ISO", (IssueCode.VALUE, "MSH-4")),
        ("EVN", 2, "", (IssueCode.REQUIRED, "EVN-2")),
        ("PID", 3, "", (IssueCode.REQUIRED, "PID-3")),
        ("PID", 3, "256030331004598^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.8&ISO^INS~1^^^A^PI",
         (IssueCode.VALUE, "PID-3")),
        ("PID", 3, "00012345^^^^PI", (IssueCode.REQUIRED, "PID-3")),
        ("PID", 5, "", (IssueCode.REQUIRED, "PID-5")),
        ("PID", 7, "19561312", (IssueCode.VALUE, "PID-7")),
        ("PID", 8, "X", (IssueCode.CODE_INVALID, "PID-8")),
        ("PV1", 2, "", (IssueCode.REQUIRED, "PV1-2")),
        ("PV1", 44, "2024050625", (IssueCode.VALUE, "PV1-44")),
        ("ZBE", 4, "DELETE", (IssueCode.CODE_INVALID, "ZBE-4")),
        ("ZBE", 4, "CANCEL", (IssueCode.VALUE, "ZBE-4")),
        ("ZBE", 1, "", (IssueCode.REQUIRED, "ZBE-1")),
        ("ZBE", 2, "", (IssueCode.REQUIRED, "ZBE-2")),
        ("ZFA", 6, "O", (IssueCode.CODE_INVALID, "ZFA-6")),
        ("ROL", 4, "123^MARTIN^Jean^^^^^^^^^^RPPS", (IssueCode.VALUE, "ROL-4")),
    ],
)
def test_each_broken_field_is_named(seg: str, n: int, value: str, expected: tuple) -> None:
    assert refusal(with_field(lines(A01), seg, n, value)) == [expected]


@pytest.mark.parametrize("seg", ["EVN", "PID", "PV1"])
def test_missing_required_segment_is_named(seg: str) -> None:
    assert (IssueCode.REQUIRED, seg) in refusal(without(lines(A01), seg))


def test_cancel_must_name_the_cancelled_trigger() -> None:
    segs = with_field(lines("adt_a25_utf8.hl7"), "ZBE", 6, "A01")
    assert refusal(segs) == [(IssueCode.VALUE, "ZBE-6")]


def test_all_issues_are_collected_and_hold_no_patient_data() -> None:
    segs = with_field(lines(A01), "PID", 8, "Z")
    segs = with_field(segs, "PID", 7, "19560399")
    segs = with_field(segs, "MSH", 10, "")
    with pytest.raises(ValidationFailed) as exc:
        parse_adt("\r".join(segs))
    assert {i.expression for i in exc.value.issues} == {"PID-8", "PID-7", "MSH-10"}
    text = exc.value.reason  # what goes to logs, headers and the ACK
    for secret in ("LEFÈVRE", "Hélène", "256030331004597", "00012345", "19560399", "03200"):
        assert secret not in text
    assert "Z" not in text  # the refused sex code itself is not echoed either


def test_deleted_gp_is_not_the_declared_gp() -> None:
    segs = lines(A01)
    segs = [s.replace("ROL||UC|ODRP", "ROL||DE|ODRP") for s in segs]
    e = parse_adt("\r".join(segs))
    assert e.gp is None and [c.role for c in e.care_team] == ["RT"]


def test_trusted_identity_codes_are_a_setting() -> None:
    msg = parse_message("\r".join(with_field(lines(A01), "PID", 32, "QUAL")))
    assert not map_adt(msg).patient.ins_trusted
    assert map_adt(msg, trusted_identity_codes=frozenset({"VALI", "QUAL"})).patient.ins_trusted


@pytest.mark.parametrize(
    ("msh4", "finess"),
    [
        ("030000178", "030000178"),
        ("1030000178^1.2.250.1.71.4.2.2^ISO", "030000178"),  # idNatStruct form
        ("CHBA^1.2.250.1.71.4.2.2.1030000178^ISO", "030000178"),  # rooted OID
        ("CHBA^1.2.250.1.211.10.200.2^ISO", None),
        ("030000179", None),  # wrong Luhn key: not a FINESS
    ],
)
def test_finess_lookup_in_msh_4(msh4: str, finess: str | None) -> None:
    assert parse_adt("\r".join(with_field(lines(A01), "MSH", 4, msh4))).facility_finess == finess


def test_parse_ts() -> None:
    assert parse_ts("20240115083000") == (datetime(2024, 1, 15, 8, 30, tzinfo=PARIS), False)
    assert parse_ts("20240115")[1] is True  # type: ignore[index]
    winter, _ = parse_ts("20240115083000")  # type: ignore[misc]
    assert winter.utcoffset() == timedelta(hours=1)
    with_offset, _ = parse_ts("20240115083000.25-0500")  # type: ignore[misc]
    assert with_offset.utcoffset() == timedelta(hours=-5)
    assert with_offset.microsecond == 250000
    bad_values = ("２０２４0101", "2024011", "20241301", "20240230", "2024.5", "x")
    for bad in (*bad_values, "20240101120000+2500"):
        assert parse_ts(bad) is None, bad


def test_identifier_checks() -> None:
    assert nir_key_ok("256030331004597") and nir_key_ok("148112A00412325")
    assert not nir_key_ok("256030331004598") and not nir_key_ok("25603033100459")
    assert not nir_key_ok("2560303310045AB") and not nir_key_ok("１56030331004597")
    assert not nir_key_ok("2560303310045²³")  # isdigit() but not int()-able
    assert looks_like_finess("030000178") and looks_like_finess("2A0000001")
    assert not looks_like_finess("030000179") and not looks_like_finess("03000017")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_map_or_raise_only_validation_failed(data: bytes) -> None:
    try:
        parse_adt(data)
    except ValidationFailed as exc:
        assert exc.issues


_BASE = lines(A01)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(_BASE) - 1),
    st.integers(min_value=1, max_value=50),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40),
)
def test_any_field_content_maps_or_raises_only_validation_failed(
    seg_index: int, n: int, value: str
) -> None:
    segs = list(_BASE)
    name = segs[seg_index][:3]
    segs = with_field(segs, name, n, value) if (name, n) not in (("MSH", 1), ("MSH", 2)) else segs
    try:
        event = parse_adt("\r".join(segs).encode())
    except ValidationFailed as exc:
        assert exc.issues and all(i.expression is None or i.expression[:3].isupper()
                                  for i in exc.issues)
        return
    assert event.control_id and event.event_type in EventType

"""Ingress validation: each way a message can be wrong is refused with the precise
location (FHIRPath-like expression) and issue code, and nothing but ValidationFailed
ever escapes, whatever the bytes."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.builders import build_referral_requested
from schemas.codes import FINESS, INS_NIR, RPPS, EventType
from schemas.model import PatientInfo
from schemas.outcome import IssueCode, ValidationFailed, operation_outcome
from schemas.rules import nir_is_valid, nir_key
from schemas.samples import referral_info, sample_bundle
from schemas.task_states import TaskStatus
from schemas.validate import ValidatedMessage, validate_message

STAMP = "2025-03-17T09:30:00+01:00"


def bundle_of(event: str = "referral.requested") -> dict:
    return sample_bundle(event, event_id="0d4a7c3e-5b8f-4e21-9c6d-7a1b2c3d4e5f", timestamp=STAMP)


def index_of(bundle: dict, kind: str) -> int:
    return next(i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == kind)


def refused(bundle: dict | bytes, **options: object) -> ValidationFailed:
    raw = bundle if isinstance(bundle, bytes) else orjson.dumps(bundle)
    with pytest.raises(ValidationFailed) as info:
        validate_message(raw, **options)  # type: ignore[arg-type]
    assert info.value.issues, "a refusal always says why"
    return info.value


def has(failure: ValidationFailed, code: IssueCode, expression: str) -> bool:
    return any(i.code == code and i.expression == expression for i in failure.issues)


def mutated(event: str, change: Callable[[dict], None]) -> dict:
    bundle = bundle_of(event)
    change(bundle)
    return bundle


# --- what a valid message yields ---------------------------------------------------------
def test_valid_referral_yields_its_summary() -> None:
    raw = orjson.dumps(bundle_of())
    msg = validate_message(raw)
    assert isinstance(msg, ValidatedMessage)
    assert msg.event_type is EventType.REFERRAL_REQUESTED
    assert msg.event_id == "0d4a7c3e-5b8f-4e21-9c6d-7a1b2c3d4e5f"
    assert msg.case_id == "referral/https://carebus.fr/fhir/sid/referral|ADR-2025-000123"
    assert msg.source == "urn:carebus:producer:sdk" and msg.timestamp == STAMP
    assert msg.sender_ids == ((RPPS, "810003456125"),)
    assert (INS_NIR, "258030319004510") in msg.patient_ids
    assert msg.task_status is TaskStatus.REQUESTED and msg.priority == "urgent"
    assert msg.planned_discharge is None and msg.raw == raw
    assert "Lefèvre" not in repr(msg), "repr must not leak patient data into logs"


def test_summary_of_stay_and_expertise_events() -> None:
    planned = validate_message(orjson.dumps(bundle_of("discharge.planned")))
    assert planned.planned_discharge == "2025-03-19T10:30:00+01:00"
    assert planned.sender_ids == ((FINESS, "1030780100"),)
    assert planned.task_status is None
    answered = validate_message(orjson.dumps(bundle_of("expertise.answered")))
    assert answered.case_id == "expertise/https://carebus.fr/fhir/sid/expertise|TLX-2025-0042"
    assert (RPPS, "810035715928") in answered.sender_ids


def test_structural_flag_skips_only_the_model_validation() -> None:
    bundle = mutated("referral.requested", lambda b: b["entry"][1]["resource"].update(foo=1))
    failure = refused(bundle)
    assert has(failure, IssueCode.STRUCTURE, "Bundle.entry[1].resource.foo")
    assert validate_message(orjson.dumps(bundle), structural=False).event_type.family == "referral"


# --- envelope ------------------------------------------------------------------------------
def test_oversize_is_refused_before_parsing() -> None:
    failure = refused(b"{" * 5000, max_bytes=1000)
    assert [i.code for i in failure.issues] == [IssueCode.TOO_LONG]
    assert "5000 bytes" in failure.issues[0].diagnostics


def test_malformed_json_says_where() -> None:
    failure = refused(b'{"resourceType": "Bundle",\n  "type": message}')
    issue = failure.issues[0]
    assert issue.code is IssueCode.STRUCTURE and issue.expression == "Bundle"
    assert "line 2" in issue.diagnostics


def test_not_a_bundle_or_not_a_message() -> None:
    assert has(refused(b"[1, 2]"), IssueCode.STRUCTURE, "Bundle")
    wrong = mutated("referral.requested", lambda b: b.update(type="collection"))
    assert has(refused(wrong), IssueCode.STRUCTURE, "Bundle.type")


def test_missing_message_header() -> None:
    bundle = mutated("referral.requested", lambda b: b["entry"].pop(0))
    failure = refused(bundle)
    assert has(failure, IssueCode.REQUIRED, "Bundle.entry[0].resource")
    assert "MessageHeader" in failure.issues[0].diagnostics


def test_message_header_not_first() -> None:
    bundle = bundle_of()
    bundle["entry"][0], bundle["entry"][2] = bundle["entry"][2], bundle["entry"][0]
    failure = refused(bundle)
    assert has(failure, IssueCode.STRUCTURE, "Bundle.entry[0].resource")
    assert "found at entry[2]" in failure.issues[0].diagnostics


def test_unknown_event_code_lists_the_allowed_ones() -> None:
    bundle = bundle_of()
    bundle["entry"][0]["resource"]["eventCoding"]["code"] = "referral.teleported"
    failure = refused(bundle)
    assert has(failure, IssueCode.NOT_SUPPORTED, "Bundle.entry[0].resource.eventCoding.code")
    assert "referral.requested" in failure.issues[0].diagnostics
    assert "sla.reminder" not in failure.issues[0].diagnostics


def test_bus_events_are_forbidden_to_producers() -> None:
    raw = orjson.dumps(bundle_of("sla.reminder"))
    assert has(refused(raw), IssueCode.FORBIDDEN, "Bundle.entry[0].resource.eventCoding.code")
    assert validate_message(raw, allow_bus_events=True).case_id.startswith("referral/")


# --- focus and references ------------------------------------------------------------------
NOWHERE = "urn:uuid:00000000-0000-0000-0000-000000000000"


def test_dangling_focus() -> None:
    bundle = bundle_of()
    bundle["entry"][0]["resource"]["focus"][0]["reference"] = NOWHERE
    assert has(refused(bundle), IssueCode.INVARIANT, "Bundle.entry[0].resource.focus[0].reference")


def test_wrong_focus_type() -> None:
    bundle = bundle_of()
    patient_url = bundle["entry"][index_of(bundle, "Patient")]["fullUrl"]
    bundle["entry"][0]["resource"]["focus"][0]["reference"] = patient_url
    failure = refused(bundle)
    assert has(failure, IssueCode.VALUE, "Bundle.entry[0].resource.focus[0].reference")
    assert "must be a Task, got Patient" in str(failure)


def test_dangling_reference_inside_a_resource() -> None:
    bundle = bundle_of()
    task = index_of(bundle, "Task")
    bundle["entry"][task]["resource"]["for"]["reference"] = NOWHERE
    assert has(refused(bundle), IssueCode.INVARIANT, f"Bundle.entry[{task}].resource.for.reference")


def test_duplicate_full_url() -> None:
    bundle = bundle_of()
    bundle["entry"][3]["fullUrl"] = bundle["entry"][2]["fullUrl"]
    assert has(refused(bundle), IssueCode.INVARIANT, "Bundle.entry[3].fullUrl")


# --- one wrong field → one precise issue ----------------------------------------------------
# (event, resource type, path inside the resource, new value or DELETE, code, words in the text)
DELETE = object()
# fmt: off
SINGLE_FIELD_CASES = [
    # French identifiers
    ("referral.requested", "Practitioner", ("identifier", 0, "system"),
     "urn:oid:1.2.250.1.71.4.2.9", IssueCode.VALUE, RPPS),
    ("referral.requested", "Practitioner", ("identifier", 0, "value"), "10003456125",
     IssueCode.VALUE, "RPPS"),
    ("discharge.planned", "Organization", ("identifier", 0, "value"), "030780100",
     IssueCode.VALUE, "FINESS"),
    ("referral.requested", "Patient", ("identifier", 0, "value"), "258030319004511",
     IssueCode.VALUE, "control key"),
    ("referral.requested", "Patient", ("identifier",), [{"value": "12345"}],
     IssueCode.REQUIRED, "INS identifier"),
    # code bindings
    ("referral.requested", "Task", ("status",), "bogus", IssueCode.CODE_INVALID, "value set"),
    ("referral.requested", "Patient", ("gender",), "xx", IssueCode.CODE_INVALID, "female"),
    ("referral.requested", "Task", ("priority",), "whenever", IssueCode.CODE_INVALID, "stat"),
    ("referral.requested", "DocumentReference", ("type", "coding", 0, "code"), "12345-6",
     IssueCode.CODE_INVALID, "96349-6"),
    ("expertise.answered", "Communication", ("status",), "sent", IssueCode.CODE_INVALID,
     "not-done"),
    # flow rules: the focus must say what the event says
    ("referral.accepted", "Task", ("status",), "in-progress", IssueCode.BUSINESS_RULE,
     "'accepted'"),
    ("discharge.completed", "Encounter", ("status",), "in-progress", IssueCode.BUSINESS_RULE,
     "'finished'"),
    ("expertise.declined", "Communication", ("status",), "completed", IssueCode.BUSINESS_RULE,
     "'not-done'"),
    ("referral.rejected", "Task", ("statusReason",), DELETE, IssueCode.REQUIRED, "why"),
    ("referral.completed", "Task", ("output",), DELETE, IssueCode.REQUIRED, "report"),
    ("discharge.planned", "Encounter", ("extension",), DELETE, IssueCode.REQUIRED,
     "planned date"),
    ("discharge.completed", "Encounter", ("period", "end"), DELETE, IssueCode.REQUIRED,
     "discharge time"),
    ("expertise.answered", "Communication", ("basedOn", 0, "identifier"), DELETE,
     IssueCode.REQUIRED, "case identifier"),
]
# fmt: on


@pytest.mark.parametrize(
    ("event", "kind", "path", "value", "code", "words"),
    SINGLE_FIELD_CASES,
    ids=[f"{c[0]}:{c[1]}.{'.'.join(map(str, c[2]))}" for c in SINGLE_FIELD_CASES],
)
def test_single_wrong_field_is_pinpointed(
    event: str, kind: str, path: tuple, value: object, code: IssueCode, words: str
) -> None:
    bundle = bundle_of(event)
    i = index_of(bundle, kind)
    parent = bundle["entry"][i]["resource"]
    for step in path[:-1]:
        parent = parent[step]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    expression = f"Bundle.entry[{i}].resource." + ".".join(map(str, path)).replace(".0", "[0]")
    for structural in (True, False):
        failure = refused(bundle, structural=structural)
        matching = [x for x in failure.issues if x.code == code and x.expression == expression]
        assert matching, f"{code} at {expression} not in {failure.issues}"
        assert words in matching[0].diagnostics


def test_bogus_status_is_a_binding_error_not_a_transition_error() -> None:
    bundle = bundle_of()
    i = index_of(bundle, "Task")
    bundle["entry"][i]["resource"]["status"] = "bogus"
    assert not has(refused(bundle), IssueCode.BUSINESS_RULE, f"Bundle.entry[{i}].resource.status")


def test_nir_key_handles_corsica() -> None:
    assert nir_key("175052A012345") == 84 and nir_key("175052B012345") == 14
    assert nir_is_valid("175052A01234584") and not nir_is_valid("175052A01234585")
    assert nir_is_valid("279035121518989")  # the ANS test INS of the FR Core examples
    corsican = replace(referral_info().patient, ins="175052A01234584", gender="male")
    info = replace(referral_info(), patient=corsican)
    assert validate_message(orjson.dumps(build_referral_requested(info))).patient_ids


def test_local_identifier_is_enough_without_ins() -> None:
    local_only = PatientInfo(
        family="Dupont",
        given="Zoé",
        birth_date=referral_info().patient.birth_date,
        gender="female",
        local_id=("urn:oid:1.2.250.1.71.4.2.2.1030780100", "IPP1"),
    )
    info = replace(referral_info(), patient=local_only)
    assert validate_message(orjson.dumps(build_referral_requested(info))).patient_ids == (
        ("urn:oid:1.2.250.1.71.4.2.2.1030780100", "IPP1"),
    )


def test_missing_required_resource() -> None:
    bundle = bundle_of()
    i = index_of(bundle, "ServiceRequest")
    bundle["entry"].pop(i)
    failure = refused(bundle, structural=False)
    assert has(failure, IssueCode.REQUIRED, "Bundle.entry")
    assert "requires a ServiceRequest" in str(failure)


# --- attachments ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("data", "not base64!!", IssueCode.VALUE),
        ("size", 12, IssueCode.VALUE),
        ("hash", "AAAA", IssueCode.VALUE),
    ],
)
def test_attachment_integrity(field: str, value: object, code: IssueCode) -> None:
    bundle = bundle_of()
    i = index_of(bundle, "DocumentReference")
    bundle["entry"][i]["resource"]["content"][0]["attachment"][field] = value
    expression = f"Bundle.entry[{i}].resource.content[0].attachment.{field}"
    assert has(refused(bundle, structural=False), code, expression)


# --- structure (fhir.resources) ------------------------------------------------------------
def test_structural_errors_become_fhirpath_expressions() -> None:
    bundle = bundle_of()
    i = index_of(bundle, "Patient")
    bundle["entry"][i]["resource"]["birthDate"] = "1958-13-45"
    bundle["entry"][index_of(bundle, "Task")]["resource"].pop("intent")
    failure = refused(bundle)
    assert has(failure, IssueCode.VALUE, f"Bundle.entry[{i}].resource.birthDate")
    task = index_of(bundle, "Task")
    assert has(failure, IssueCode.REQUIRED, f"Bundle.entry[{task}].resource.intent")


def test_unknown_resource_type() -> None:
    bundle = bundle_of()
    bundle["entry"].append({"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Teleporter"}})
    last = len(bundle["entry"]) - 1
    failure = refused(bundle)
    assert has(failure, IssueCode.NOT_SUPPORTED, f"Bundle.entry[{last}].resource.resourceType")


def test_all_issues_are_reported_at_once_and_render_as_operation_outcome() -> None:
    bundle = bundle_of()
    bundle["entry"][index_of(bundle, "Patient")]["resource"]["gender"] = "xx"
    bundle["entry"][index_of(bundle, "Task")]["resource"]["status"] = "bogus"
    bundle["entry"][index_of(bundle, "Practitioner")]["resource"]["identifier"][0]["value"] = "8"
    failure = refused(bundle)
    assert len({i.expression for i in failure.issues}) >= 3
    outcome = operation_outcome(failure.issues)
    assert outcome["resourceType"] == "OperationOutcome"
    assert all(issue["expression"] for issue in outcome["issue"])


# --- whatever the input, only ValidationFailed escapes -------------------------------------
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=12)
    | st.sampled_from(["", "bogus", "urn:uuid:x", "Patient", "Task", "requested", "#a"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_BASE = {e.value: bundle_of(e.value) for e in EventType}


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "data":
                out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for j, value in enumerate(node):
            out += _paths(value, (*prefix, j))
    return out


@settings(
    max_examples=int(os.environ.get("CAREBUS_FUZZ", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    event=st.sampled_from(sorted(_BASE)),
    pick=st.integers(min_value=0),
    action=st.sampled_from(["replace", "delete"]),
    value=json_values,
    structural=st.booleans(),
)
def test_random_mutations_only_ever_raise_validation_failed(
    event: str, pick: int, action: str, value: object, structural: bool
) -> None:
    bundle = copy.deepcopy(_BASE[event])
    paths = _paths(bundle)
    path = paths[pick % len(paths)]
    if not path:
        bundle = value  # type: ignore[assignment]
    else:
        parent = bundle
        for step in path[:-1]:
            parent = parent[step]
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    try:
        msg = validate_message(orjson.dumps(bundle), structural=structural, allow_bus_events=True)
    except ValidationFailed as failure:
        assert failure.issues and all(isinstance(i.code, IssueCode) for i in failure.issues)
    else:
        assert msg.event_type.value and msg.case_id


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255))
def test_random_byte_damage_only_ever_raises_validation_failed(cut: int, byte: int) -> None:
    raw = bytearray(orjson.dumps(_BASE["referral.requested"]))
    position = cut % len(raw)
    raw[position] = byte
    try:
        validate_message(bytes(raw))
    except ValidationFailed as failure:
        assert failure.issues

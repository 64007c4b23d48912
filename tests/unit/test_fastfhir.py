"""Differential test: schemas.fastfhir gives fhir.resources' verdict, on every sample event,
on a corpus of tricky cases and on generated mutations of the samples.

The reference verdict is "`Bundle.model_validate(bundle)` returns without raising". The
fast lane must also *handle* the ordinary messages itself: the samples are checked with
pydantic's fallback disabled, else "same verdict" could hide "always asks pydantic".
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

import schemas.fastfhir.primitives as primitives
import schemas.fastfhir.walker as walker
from schemas.codes import EventType
from schemas.fastfhir import fast_verdict, is_valid, reference_is_valid
from schemas.samples import sample_bundle
from schemas.validate import fast_path_disagreements, structural_issues

STAMP = "2025-03-17T09:30:00+01:00"
CORPUS = Path(__file__).parents[1] / "data" / "fhir_corpus"
SAMPLES = {
    et.value: sample_bundle(et, event_id="0d4a7c3e-5b8f-4e21-9c6d-7a1b2c3d4e5f", timestamp=STAMP)
    for et in EventType
}


def same_verdict(bundle: Any) -> bool:
    expected = reference_is_valid(copy.deepcopy(bundle))
    assert is_valid(bundle) is expected, f"fastfhir disagrees (reference: {expected})"
    return expected


# --- the samples: accepted, by the fast lane alone ------------------------------------------
@pytest.mark.parametrize("event", sorted(SAMPLES))
def test_every_sample_is_accepted_without_pydantic(
    event: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert reference_is_valid(copy.deepcopy(SAMPLES[event]))

    def no_pydantic(annotation: object, value: object) -> bool:
        raise AssertionError(f"fast lane fell back to pydantic for {annotation!r}")

    monkeypatch.setattr(walker, "exact", no_pydantic)
    monkeypatch.setattr(primitives, "exact", no_pydantic)
    assert fast_verdict(SAMPLES[event]) is True


# --- the corpus of tricky cases (tests/data/fhir_corpus/*.json) ----------------------------
def _corpus() -> list[tuple[str, dict]]:
    cases = []
    for path in sorted(CORPUS.glob("*.json")):
        for name, case in json.loads(path.read_text()).items():
            cases.append((f"{path.stem}:{name}", case))
    return cases


def _apply(case: dict) -> dict:
    """A corpus case: an event sample, then `set` {json-pointer-ish path: value} and
    `delete` [paths]; the expected verdict is recorded in the file for readers."""
    bundle = copy.deepcopy(SAMPLES[case["event"]])
    for path, value in case.get("set", {}).items():
        parent, key = _walk(bundle, path)
        parent[key] = value
    for path in case.get("delete", []):
        parent, key = _walk(bundle, path)
        del parent[key]
    return bundle


def _walk(bundle: dict, path: str) -> tuple[Any, Any]:
    steps: list[Any] = [int(p) if p.isdigit() else p for p in path.split("/")]
    node: Any = bundle
    for step in steps[:-1]:
        node = node[step]
    return node, steps[-1]


@pytest.mark.parametrize(("name", "case"), _corpus(), ids=[n for n, _ in _corpus()])
def test_corpus_case(name: str, case: dict) -> None:
    assert same_verdict(_apply(case)) is case["valid"], "the corpus records the verdict"


# --- generated mutations -----------------------------------------------------------------
def _dict_paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(node, dict):
        out.append(path)
        for k, v in node.items():
            out += _dict_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _dict_paths(v, (*path, i))
    return out


_PATHS = {event: _dict_paths(bundle) for event, bundle in SAMPLES.items()}

_nasty_text = st.sampled_from(
    ["", " ", "\t", "\u3000", "\x0b", "\x1c", "a  b", "a\nb", "é", "😀", "x" * 5000, "a b"]
)
_dates = st.from_regex(
    r"\A[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,8})?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?\Z"
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 1.0, 1.5, -0.0, 1e20]),
    st.sampled_from(["true", "1", "05", "1.50", "1e5", "YQ", "YQ==", "urn:oid:1.2.3", "id-1.x"]),
    _nasty_text,
    _dates,
    st.text(max_size=12),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=3),
    st.sampled_from(
        [
            {},
            [],
            [None],
            [{}],
            {"extension": [{"url": "http://x", "valueString": "y"}]},
            {"id": "x"},
            {"resourceType": "Patient"},
            {"resourceType": "Coding", "code": "x"},
            {"resourceType": "Nope"},
            {"system": "http://x", "value": "y"},
            {"reference": "Patient/1"},
            {"coding": [{"code": "x"}]},
            '{"versionId": "1"}',
        ]
    ),
)
_KEYS = st.sampled_from(
    [
        "resourceType",
        "resource_type",
        "fhir_comments",
        "extension",
        "id",
        "unknownKey",
        "class",
        "class_fhir",
        "_status",
        "status__ext",
        "valueString",
        "valueBoolean",
        "valueDateTime",
        "status",
        "value",
        "code",
        "text",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), event=st.sampled_from(sorted(SAMPLES)))
def test_mutations_get_the_reference_verdict(data: st.DataObject, event: str) -> None:
    bundle = copy.deepcopy(SAMPLES[event])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        paths = _dict_paths(bundle)
        node: Any = bundle
        for step in data.draw(st.sampled_from(paths), label="at"):
            node = node[step]
        keys = sorted(node)
        action = data.draw(
            st.sampled_from(["delete", "replace", "add", "wrap", "unwrap", "retype"]),
            label="action",
        )
        key = data.draw(st.sampled_from(keys) if keys else _KEYS, label="key")
        if action == "delete" and key in node:
            del node[key]
        elif action == "replace" and keys:
            node[key] = copy.deepcopy(data.draw(_values, label="value"))
        elif action == "add":
            node[data.draw(_KEYS, label="new key")] = copy.deepcopy(
                data.draw(_values, label="value")
            )
        elif action == "wrap" and key in node:
            node[key] = [node[key]]
        elif action == "unwrap" and isinstance(node.get(key), list) and node[key]:
            node[key] = node[key][0]
        elif action == "retype":
            node["resourceType"] = data.draw(
                st.sampled_from(["Patient", "Task", "Coding", "Resource", "Bundle", "X", 5])
            )
    expected = same_verdict(bundle)
    note_event(f"reference verdict: {'valid' if expected else 'invalid'}")
    note_event(f"walker alone sure: {fast_verdict(bundle) is not None}")


# --- the fast primitive checks are sound -------------------------------------------------
def _leaves() -> list[Any]:
    from fhir.resources.R4B import fhirtypes as ft

    return [
        ft.StringType,
        ft.CodeType,
        ft.IdType,
        ft.UriType,
        ft.UrlType,
        ft.MarkdownType,
        ft.OidType,
        ft.BooleanType,
        ft.DecimalType,
        ft.IntegerType,
        ft.PositiveIntType,
        ft.UnsignedIntType,
        ft.Base64BinaryType,
        ft.DateType,
        ft.DateTimeType,
        ft.InstantType,
        ft.TimeType,
    ]


_leaf_values = st.one_of(
    _scalars,
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.from_regex(r"\A[A-Za-z0-9+/=\s]{0,12}\Z"),
    st.from_regex(r"\A[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,8})?\Z"),
    st.from_regex(r"\Aurn:oid:[0-9](\.[0-9]{1,3}){0,3}\n?\Z"),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=1500, deadline=None)
@given(leaf=st.sampled_from(_leaves()), value=_leaf_values)
def test_primitive_fast_checks_agree_with_pydantic(leaf: Any, value: Any) -> None:
    try:
        primitives._adapter(leaf).validate_python(value)
        expected = True
    except Exception:  # noqa: BLE001 - any failure is a rejection
        expected = False
    note(f"pydantic: {expected}")
    if primitives.fast_check(leaf)(value):
        assert expected, f"fast check accepts {value!r} that pydantic refuses"
    assert primitives.field_check(leaf, leaf, nullable=False)(value) is expected


# --- the integration in schemas.validate -------------------------------------------------
def test_structural_issues_fast_and_reference_paths_agree() -> None:
    good = SAMPLES["referral.requested"]
    assert structural_issues(good) == [] == structural_issues(good, reference=True)
    bad = copy.deepcopy(good)
    bad["entry"][1]["resource"]["authoredOn"] = "2025-02-30T10:00:00+01:00"
    before = fast_path_disagreements()
    issues = structural_issues(bad)
    assert issues == structural_issues(bad, reference=True)
    assert [i.expression for i in issues] == ["Bundle.entry[1].resource.authoredOn"]
    assert fast_path_disagreements() == before


def test_bytes_round_trip_keeps_the_verdict() -> None:
    for bundle in SAMPLES.values():
        assert fast_verdict(orjson.loads(orjson.dumps(bundle))) is True


def test_operator_switch_forces_the_reference_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas.fastfhir
    import schemas.validate

    def refuse(bundle: object) -> bool:
        raise AssertionError("the fast path ran although the reference path was forced")

    monkeypatch.setattr(schemas.fastfhir, "fast_verdict", refuse)
    monkeypatch.setattr(schemas.validate, "_REFERENCE_ONLY", False)
    with pytest.raises(AssertionError):
        structural_issues(SAMPLES["referral.requested"])
    schemas.validate.use_reference_structural(True)
    assert structural_issues(SAMPLES["referral.requested"]) == []


def test_every_r4b_model_compiles_to_a_transparent_table() -> None:
    """No class of fhir.resources R4B falls back to pydantic wholesale (opaque), so every
    resource type gets the fast path, not only the ones in the samples."""
    import fhir.resources.R4B.fhirtypes  # noqa: F401 - registers the type names
    from fhir_core.constraints import FHIR_TYPES_MAPS

    from schemas.fastfhir.tables import model_for

    paths = {p for k, p in FHIR_TYPES_MAPS.items() if k.startswith("R4.")}
    assert len(paths) > 600
    opaque = [p for p in sorted(paths) if model_for(p).build().opaque]
    assert opaque == []

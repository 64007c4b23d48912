"""CPU cost per event of the contract: FHIR validation per event type, HL7 parse/map (µs)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson

from bench.stats import micro
from schemas.builders import build_referral_requested
from schemas.codes import EventType
from schemas.fastfhir import fast_verdict
from schemas.samples import referral_info, sample_bundle
from schemas.validate import structural_issues, validate_message

HL7 = Path(__file__).parents[1] / "tests" / "data" / "hl7" / "adt_a16_8859-1.hl7"


def large_referral() -> dict:
    """The sample referral with a 3x longer letter: a ~25 KB message (issue 8's case)."""
    info = referral_info()
    letter = replace(info.letter, content=info.letter.content * 3)
    return build_referral_requested(replace(info, letter=letter))


def structural() -> dict[str, list[float]]:
    """The FHIR structure check: fast path (schemas.fastfhir) against fhir.resources, and
    validate_message in full (parse + rules + fast structural) per sample event."""
    out: dict[str, list[float]] = {}
    samples = [(et.value, sample_bundle(et), not et.inbound) for et in EventType]
    samples.append(("referral.requested large", large_referral(), False))
    for name, bundle, bus in samples:
        raw = orjson.dumps(bundle)
        size = f"{len(raw) // 1024} KB"
        out[f"fast structural validation {name} ({size})"] = micro(
            lambda bundle=bundle: fast_verdict(bundle), runs=5
        )
        out[f"validate_message full (fast path) {name} ({size})"] = micro(
            lambda raw=raw, bus=bus: validate_message(raw, allow_bus_events=bus), runs=5
        )
    for name, bundle, _ in samples[:1] + samples[-1:]:
        size = f"{len(orjson.dumps(bundle)) // 1024} KB"
        out[f"reference structural (fhir.resources) {name} ({size})"] = micro(
            lambda bundle=bundle: structural_issues(bundle, reference=True), runs=3
        )
    return out


def run() -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for et in EventType:
        raw = orjson.dumps(sample_bundle(et))
        bus = not et.inbound
        out[f"validate {et.value} ({len(raw) // 1024} KB, full)"] = micro(
            lambda raw=raw, bus=bus: validate_message(raw, allow_bus_events=bus), runs=3
        )
    raw = orjson.dumps(sample_bundle(EventType.REFERRAL_REQUESTED))
    out["validate referral.requested (rules only)"] = micro(
        lambda: validate_message(raw, structural=False), runs=3
    )
    out.update(structural())
    from adapters.hl7.adt import parse_adt
    from adapters.hl7.message import parse_message
    from adapters.hl7.to_fhir import to_bundle

    data = HL7.read_bytes()
    out["HL7 A16 parse"] = micro(lambda: parse_message(data), runs=3)
    out["HL7 A16 parse + map"] = micro(lambda: parse_adt(data), runs=3)
    out["HL7 A16 → FHIR bundle + rules"] = micro(
        lambda: validate_message(orjson.dumps(to_bundle(parse_adt(data))), structural=False),
        runs=3,
    )
    return out

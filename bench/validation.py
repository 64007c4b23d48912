"""CPU cost per event of the contract: FHIR validation per event type, HL7 parse/map (µs)."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.stats import micro
from schemas.codes import EventType
from schemas.samples import sample_bundle
from schemas.validate import validate_message

HL7 = Path(__file__).parents[1] / "tests" / "data" / "hl7" / "adt_a16_8859-1.hl7"


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

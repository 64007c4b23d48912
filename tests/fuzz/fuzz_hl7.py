"""Coverage-guided fuzzing (atheris/libFuzzer) of the HL7 v2 path: parse → map → FHIR → ACK.

Property: for any bytes, the listener's pipeline (`parse_message`, `map_adt`, `to_bundle`,
`validate_message(structural=False)`) either yields a valid message or raises the
documented refusal, `ValidationFailed`; and an ACK can always be built for the input and
parses back with MSA-1 in AA/AE/AR. Anything else (IndexError, UnicodeError, ...) is a
crash: libFuzzer stops and writes the input to the artifact prefix.

    .venv/bin/python tests/fuzz/fuzz_hl7.py -max_total_time=60 WORK_DIR tests/fuzz/corpus/hl7
    make fuzz            # longer runs of both harnesses
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["adapters.hl7", "schemas"]):
    import orjson

    from adapters.hl7.ack import build_ack
    from adapters.hl7.adt import map_adt
    from adapters.hl7.message import ParserSettings, parse_message
    from adapters.hl7.to_fhir import to_bundle
    from schemas.outcome import Issue, IssueCode, ValidationFailed
    from schemas.validate import validate_message

#: the listener's own limits, smaller so that the fuzzer spends its time on structure
SETTINGS = ParserSettings(max_bytes=64 * 1024, refuse_utf8_as_8859=True)
REFUSED = Issue(IssueCode.VALUE, "fuzz refusal")


def check_ack(incoming, issues, code) -> None:
    ack = build_ack(incoming, issues, code=code, settings=SETTINGS)
    parsed = parse_message(ack)  # the ACK must always be readable by the sender
    assert parsed.value("MSA", 1) in {"AA", "AE", "AR"}, ack


def test_one_input(data: bytes) -> None:
    try:
        msg = parse_message(data, SETTINGS)
    except ValidationFailed as exc:
        assert exc.issues, "a refusal names at least one problem"
        check_ack(data, list(exc.issues), "AR")
        return
    try:
        adt = map_adt(msg)
        raw = orjson.dumps(to_bundle(adt))
        validate_message(raw, structural=False)
    except ValidationFailed as exc:
        assert exc.issues, "a refusal names at least one problem"
        check_ack(msg, list(exc.issues), None)
        return
    check_ack(msg, [], "AA")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

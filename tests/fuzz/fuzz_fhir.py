"""Coverage-guided fuzzing (atheris/libFuzzer) of the FHIR ingress validator.

Property: `validate_message(bytes)` (full validation, the FHIR HTTP path) either returns a
`ValidatedMessage` whose summary agrees with the bundle, or raises the documented refusal
`ValidationFailed` with at least one issue, each with a code and diagnostics. Any other
exception (RecursionError, TypeError, KeyError, ...) is a crash that would be an HTTP 500.

    .venv/bin/python tests/fuzz/fuzz_fhir.py -max_total_time=60 WORK_DIR tests/fuzz/corpus/fhir
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["schemas"]):
    from schemas.outcome import ValidationFailed
    from schemas.validate import validate_message


def test_one_input(data: bytes) -> None:
    try:
        msg = validate_message(data, max_bytes=256 * 1024)
    except ValidationFailed as exc:
        assert exc.issues, "a refusal names at least one problem"
        for issue in exc.issues:
            assert issue.code and issue.diagnostics, issue
        return
    assert msg.event_type.inbound, msg.event_type
    assert msg.event_id == msg.bundle["id"] and msg.case_id, msg
    assert msg.raw == data


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

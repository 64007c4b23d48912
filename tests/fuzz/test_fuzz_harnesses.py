"""Run each atheris harness for a bounded time in a subprocess: it must exit clean.

A crash makes libFuzzer stop with a non-zero status and write the input to the artifact
directory (printed below): add it to tests/fuzz/corpus/<harness>/ with the fix. New
coverage found during the run goes to a temporary directory; the seed corpus in the
repository is only read. `make fuzz` runs the same harnesses for longer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris has wheels for Linux x86_64 only")

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SECONDS = int(os.environ.get("CAREBUS_FUZZ_SECONDS", "12"))


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 4 + 120)
@pytest.mark.parametrize("harness", ["hl7", "fhir"])
def test_harness_runs_clean_for_a_bounded_time(harness: str, tmp_path: Path) -> None:
    seeds = HERE / "corpus" / harness
    assert len(list(seeds.iterdir())) >= 5, "the seed corpus is kept in the repository"
    work, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    work.mkdir()
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(HERE / f"fuzz_{harness}.py"),
        f"-max_total_time={SECONDS}",
        "-timeout=10",  # one input taking more than 10 s is a finding too
        "-rss_limit_mb=2048",
        f"-dict={HERE / f'{harness}.dict'}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(work),
        str(seeds),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=SECONDS * 4 + 90)
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    crashes = sorted(p.name for p in artifacts.iterdir())
    assert proc.returncode == 0 and not crashes, f"crash inputs {crashes} in {artifacts}\n{tail}"
    assert "Done" in proc.stderr and "stat::number_of_executed_units" in proc.stderr, tail
    runs = int(proc.stderr.split("stat::number_of_executed_units:")[1].split()[0])
    assert runs > 1000, f"the harness barely ran ({runs} inputs)\n{tail}"

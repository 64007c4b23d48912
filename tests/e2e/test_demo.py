"""`carebus demo` as a user runs it: a subprocess on the embedded default, exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


@pytest.mark.skipif(
    bool(os.environ.get("CAREBUS_KAFKA__BOOTSTRAP")), reason="the demo is the embedded-default run"
)
def test_carebus_demo_observes_every_outcome(tmp_path: Path) -> None:
    env = dict(os.environ, CAREBUS_DATA_DIR=str(tmp_path), COLUMNS="160")
    proc = subprocess.run(
        [sys.executable, "-m", "bus.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "every expected outcome was observed" in out
    assert "✘" not in out
    mails = list((tmp_path / "demo" / "mailbox").glob("*@*/*.eml"))
    assert len(mails) >= 10

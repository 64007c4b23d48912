"""`carebus up` stopped with SIGTERM while a reminder is pending, then started again.

Driven only through public interfaces: a TOML settings file + environment variables, the
FHIR HTTP API with a client token, the mailbox files on disk. An urgent referral's
reminder (2 business hours, compressed to ~25 s) is pending when the process is told to
stop; it must exit 0 promptly, and after the restart on the same data directory the
reminder reaches the performer's mailbox exactly once, and the referral mail sent
before the stop is not sent again.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from adapters.mssante.mailbox import list_messages
from bus.demo_data import referral
from processors.sla.policy import SlaPolicies
from schemas.codes import EVENT_DISPLAY, EventType
from schemas.sample_data import CARDIOLOGIST

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).parents[2]
REMINDER_AFTER_S = 25  # the urgent referral's 2 business hours, compressed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mails(data_dir: Path, case: str, event: EventType) -> list:
    return [
        m
        for m in list_messages(data_dir, CARDIOLOGIST.mailbox)
        if m.get("X-CareBus-Case", "") == case and EVENT_DISPLAY[event] in str(m["Subject"])
    ]


class Up:
    """One `carebus up` subprocess, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bus.cli", "up"],
            env=env,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self, base: str, within: float = 90) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"carebus up exited early:\n{self.output()}"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"carebus up not ready within {within}s:\n{self.output()}")

    def stop(self, within: float = 45) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=within)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()


@pytest.mark.skipif(
    bool(os.environ.get("CAREBUS_KAFKA__BOOTSTRAP")), reason="runs the embedded-default `up`"
)
def test_pending_reminder_survives_sigterm_and_restart(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    config = tmp_path / "carebus.toml"
    config.write_text(
        "[[http.clients]]\n"
        'id = "logiciel-cabinet"\n'
        f'token = "{token}"\n'
        'event_types = ["referral.*"]\n'
    )
    data_dir = tmp_path / "data"
    http_port = _free_port()
    # 2 h (as the demo compresses it: 3600 → 2 s) / 288 = 25 s; other policies unchanged
    sla = SlaPolicies().compressed({"referral-urgent": 7200 / REMINDER_AFTER_S})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")} | {
        "CAREBUS_CONFIG": str(config),
        "CAREBUS_DATA_DIR": str(data_dir),
        "CAREBUS_KAFKA__EMBEDDED_PORT": str(_free_port()),
        "CAREBUS_KAFKA__EMBEDDED_CONTROLLER_PORT": str(_free_port()),
        "CAREBUS_HTTP__PORT": str(http_port),
        "CAREBUS_MLLP__PORT": str(_free_port()),
        "CAREBUS_MSSANTE__MAILBOX_PORT": str(_free_port()),
        "CAREBUS_DMP__STORE_PORT": str(_free_port()),
        "CAREBUS_DASHBOARD__PORT": str(_free_port()),
        "CAREBUS_OBSERVABILITY__METRICS_PORT": str(_free_port()),
        "CAREBUS_SLA": orjson.dumps(sla.model_dump(mode="json")).decode(),
        "COLUMNS": "200",
    }
    base = f"http://127.0.0.1:{http_port}"
    ref_id = f"ADR-UP-{secrets.token_hex(4)}"
    case = f"referral/https://carebus.fr/fhir/sid/referral|{ref_id}"
    log = tmp_path / "up.log"

    first = Up(env, log)
    try:
        first.wait_ready(base)
        sent_at = time.monotonic()
        resp = httpx.post(
            f"{base}/fhir/$process-message",
            content=orjson.dumps(
                referral(EventType.REFERRAL_REQUESTED, ref_id, datetime.now(UTC), priority="urgent")
            ),
            headers={"content-type": "application/fhir+json", "authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert resp.status_code == 202, resp.text
        deadline = time.monotonic() + 30
        while not _mails(data_dir, case, EventType.REFERRAL_REQUESTED):
            assert time.monotonic() < deadline, f"no referral mail:\n{first.output()}"
            time.sleep(0.3)
        # the reminder is still pending when the process is told to stop
        assert time.monotonic() - sent_at < REMINDER_AFTER_S - 5
        assert not _mails(data_dir, case, EventType.SLA_REMINDER)
        stopped = time.monotonic()
        code = first.stop()
        assert code == 0, f"exit code {code}:\n{first.output()}"
        assert time.monotonic() - stopped < 45
    finally:
        first.kill()
    assert not _mails(data_dir, case, EventType.SLA_REMINDER), "reminder fired before the stop"

    second = Up(env, log)
    try:
        second.wait_ready(base)
        deadline = time.monotonic() + 60
        while not _mails(data_dir, case, EventType.SLA_REMINDER):
            assert time.monotonic() < deadline, f"no reminder after restart:\n{second.output()}"
            time.sleep(0.3)
        time.sleep(3)  # a duplicate would be written right after the first one
        assert len(_mails(data_dir, case, EventType.SLA_REMINDER)) == 1
        assert len(_mails(data_dir, case, EventType.REFERRAL_REQUESTED)) == 1
        metrics_port = env["CAREBUS_OBSERVABILITY__METRICS_PORT"]
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scraped.status_code == 200 and "carebus_sla_notices_total" in scraped.text
        code = second.stop()
        assert code == 0, f"exit code {code}:\n{second.output()}"
    finally:
        second.kill()
    out = log.read_text(errors="replace")
    assert "metrics" in out and f"127.0.0.1:{metrics_port}/metrics" in out  # `up` says where

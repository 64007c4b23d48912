"""Fault (f): the embedded mailbox's or document store's disk is full (a real ENOSPC
from a tiny tmpfs).

The bus's mail sender talks TLS SMTP to the embedded LocalMailbox whose mailbox directory
is a tiny tmpfs filled to the brim. Expected: the mailbox answers a *transient* 452 (the
sender retries; a 5xx would turn a full disk into a permanent delivery.failed), no
half-written file is left behind nor counted as delivered, and once space returns the
same work item is delivered exactly once.
Skipped, with the reason, where mounting a tmpfs is not permitted (not root, no
CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.delivery import DeliveryWorker, RetryPolicy
from adapters.dmp.client import DmpAdapter
from adapters.dmp.store import create_store_app
from adapters.mssante.mailbox import LocalMailbox
from adapters.mssante.tls import ensure_local_pki
from bus.asgi import serve
from bus.settings import DmpSettings
from tests.integration.test_dmp_store import letter
from tests.integration.test_dmp_store import work_item as record_item
from tests.integration.test_mssante import CARDIO, adapter_for, work_item
from tests.reliability import invariant as inv

pytestmark = [pytest.mark.slow]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to simulate a full disk: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` up to the last byte; return the filler."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


class Statuses:
    """A stand-in producer that keeps what the worker publishes (no broker needed here)."""

    def __init__(self) -> None:
        self.published: list = []

    async def publish(self, topic: str, env: object) -> None:
        self.published.append((topic, env))

    async def send_raw(self, *a: object) -> None:
        self.published.append(a)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_full_mailbox_disk_is_transient_and_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pki = ensure_local_pki(tmp_path / "pki")  # the mailbox PKI lives apart from the full disk
    with tmpfs(data / "mailbox", "1m") as box:
        async with LocalMailbox(data, pki=pki) as mailbox:
            adapter = adapter_for(mailbox.port, pki, tmp_path)
            try:
                filler = fill(box)
                item, bundle = work_item(CARDIO)
                outcome = await adapter.deliver(item, bundle)
                # a full disk is the receiver's temporary problem, not a bad message
                assert outcome.retry, outcome
                assert outcome.detail.startswith("SMTP 452"), outcome
                effects, partial = inv.read_mailbox(data)
                assert effects == [] and partial == [], (effects, partial)

                # the harness retries, then reports it: delivery.failed, nothing stored
                statuses = Statuses()
                worker = DeliveryWorker(
                    adapter,
                    statuses,  # type: ignore[arg-type]
                    retry=RetryPolicy(max_attempts=3, base_s=0.01, max_s=0.02),
                )
                final = await worker.handle(item.envelope())
                assert final.status == "failed" and final.retry
                [(topic, env)] = statuses.published
                assert topic == "care.delivery.status" and env.type == "delivery.failed"
                assert inv.read_mailbox(data) == ([], [])

                # space returns: the same item is delivered, once
                filler.unlink()
                again = await adapter.deliver(item, bundle)
                assert again.status == "sent", again
                assert (await adapter.deliver(item, bundle)).status == "sent"  # redelivery
                effects, partial = inv.read_mailbox(data)
                assert [(e.recipient, e.key) for e in effects] == [(CARDIO, item.event.id)]
                assert partial == []
            finally:
                await adapter.aclose()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_full_record_disk_is_transient_uncorrupted_and_recovers(tmp_path: Path) -> None:
    """The embedded document store's SQLite database on a full disk: ITI-65 answers a
    transient refusal that names the cause (the bus retries, not delivery.failed at once),
    nothing is half-filed, the database stays intact, and the same letter is filed once
    when space returns."""
    with tmpfs(tmp_path / "dmp", "2m") as disk:
        app = create_store_app(disk / "store.sqlite3")
        db = app.state.db
        try:
            async with serve(app, "127.0.0.1", 0) as port:
                base = f"http://127.0.0.1:{port}"
                adapter = DmpAdapter(base, settings=DmpSettings(timeout_s=10))
                try:
                    warm = letter("e-disk-warm")  # the schema and a first letter fit
                    assert (
                        await adapter.deliver(record_item(warm, "e-disk-warm"), warm)
                    ).status == "sent"
                    filler = fill(disk)
                    bundle = letter("e-disk-full")
                    item = record_item(bundle, "e-disk-full")
                    outcome = await adapter.deliver(item, bundle)
                    assert outcome.status == "failed" and outcome.retry, outcome
                    assert "full" in outcome.detail.lower(), outcome.detail
                    assert db.count("DocumentReference") == 1  # only the warm-up letter
                    assert db.integrity() == "ok"

                    filler.unlink()
                    again = await adapter.deliver(item, bundle)
                    assert again.status == "sent", again
                    assert (await adapter.deliver(item, bundle)).status == "sent"  # redelivery
                    assert db.count("DocumentReference") == 2
                    assert db.count("Binary") == 2
                    assert db.integrity() == "ok"
                finally:
                    await adapter.aclose()
        finally:
            db.close()

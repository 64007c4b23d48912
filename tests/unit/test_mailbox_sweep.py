"""A writer killed between its temporary file and the rename leaves a partial file: the
embedded mailbox removes it before serving (the sender never heard 250 and resends)."""

from __future__ import annotations

from pathlib import Path

from adapters.mssante.mailbox import mailbox_path, message_files, store_message, sweep_partial

RAW = b"Message-ID: <m-1@carebus>\r\nSubject: test\r\n\r\nbody\r\n"


def test_partial_files_are_swept_stored_messages_kept(tmp_path: Path) -> None:
    stored = store_message(tmp_path, "gp@medecin.mssante.fr", RAW)
    box = mailbox_path(tmp_path, "gp@medecin.mssante.fr")
    partial = box / ".tmp-0123abcd-9f9f9f9f"
    partial.write_bytes(RAW[:20])  # what a SIGKILL mid-write leaves
    other = mailbox_path(tmp_path, "cardio@ch.mssante.fr")
    other.mkdir(parents=True)
    (other / ".tmp-4567-0000").write_bytes(b"")
    assert sweep_partial(tmp_path) == 2
    assert not partial.exists() and not any(other.iterdir())
    assert message_files(tmp_path, "gp@medecin.mssante.fr") == [stored.path]
    # the resend after the crash is stored once, beside nothing else
    assert not store_message(tmp_path, "gp@medecin.mssante.fr", RAW).created


def test_sweeping_an_empty_data_dir_is_nothing(tmp_path: Path) -> None:
    assert sweep_partial(tmp_path) == 0

"""A real IMAP server for the receipt tests: Debian's dovecot, run just for the tests.

`dovecot_server` installs `dovecot-imapd` with apt when `/usr/sbin/dovecot` is missing
(the test machines are Debian and root; the test is skipped, saying why, only when apt
cannot install it), then starts `dovecot -F` (foreground, no daemon) with a minimal
configuration in a temporary directory: IMAPS on a free loopback port with the
certificates of a throw-away local PKI and client certificates required (the same
mutual TLS as MSSanté), a passwd-file user, a maildir in the temporary directory.
Tests drop messages into the maildir with `deliver()`; dovecot picks them up.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.mssante.tls import LocalPki, ensure_local_pki

DOVECOT = "/usr/sbin/dovecot"
PACKAGE = "dovecot-imapd"
USER = "carebus@carebus.mssante.fr"
PASSWORD = "receipts-test-secret"


def ensure_dovecot() -> None:
    """Install dovecot-imapd with apt if needed; pytest.skip with the reason if it fails."""
    if Path(DOVECOT).exists():
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{DOVECOT} missing and no apt-get to install {PACKAGE}")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", PACKAGE]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:  # stale package lists: refresh once
        subprocess.run(
            [*sudo, "apt-get", "update", "-qq"], capture_output=True, env=env, check=False
        )
        proc = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0 or not Path(DOVECOT).exists():
        pytest.skip(f"could not install {PACKAGE} with apt: {proc.stderr.strip()[-300:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DovecotServer:
    root: Path
    host: str
    port: int
    user: str
    password: str
    pki: LocalPki
    uid: int
    gid: int
    proc: subprocess.Popen | None = None

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "Maildir"

    def deliver(self, raw: bytes) -> Path:
        """Drop a message into INBOX the way an MTA does (tmp/ then new/)."""
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.carebus-test"
        tmp, new = self.maildir / "tmp" / name, self.maildir / "new" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        tmp.rename(new)
        return new

    def stored(self) -> list[Path]:
        """Messages still in INBOX (expunged ones are gone from disk)."""
        return sorted(
            p for sub in ("new", "cur") for p in (self.maildir / sub).iterdir() if p.is_file()
        )

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config(self) -> str:
        r = self.root
        lines = [
            f"base_dir = {r}/run",
            f"state_dir = {r}/state",
            f"log_path = {r}/dovecot.log",
            "protocols = imap",
            "listen = 127.0.0.1",
            "ssl = required",
            f"ssl_cert = <{self.pki.server_cert}",
            f"ssl_key = <{self.pki.server_key}",
            f"ssl_ca = <{self.pki.ca_cert}",
            "ssl_verify_client_cert = yes",
            "ssl_require_crl = no",
            "auth_ssl_require_client_cert = yes",
            "disable_plaintext_auth = yes",
            "auth_mechanisms = plain",
            "passdb {",
            "  driver = passwd-file",
            f"  args = scheme=PLAIN username_format=%u {r}/passwd",
            "}",
            "userdb {",
            "  driver = passwd-file",
            f"  args = username_format=%u {r}/passwd",
            "}",
            "mail_location = maildir:~/Maildir",
            "first_valid_uid = 1",
            "service imap-login {",
            "  inet_listener imap {",
            "    port = 0",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.port}",
            "    ssl = yes",
            "  }",
        ]
        if os.geteuid() != 0:  # unprivileged run: everything as us, no chroot
            lines.append("  chroot =")
        lines.append("}")
        if os.geteuid() != 0:
            me = pwd.getpwuid(os.geteuid()).pw_name
            lines += [f"default_login_user = {me}", f"default_internal_user = {me}"]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 15.0) -> None:
        mail = self.root / "mail"
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        for path in (mail, *mail.rglob("*")):
            os.chown(path, self.uid, self.gid)
        (self.root / "passwd").write_text(
            f"{self.user}:{{PLAIN}}{self.password}:{self.uid}:{self.gid}::{mail}::\n"
        )
        (self.root / "dovecot.conf").write_text(self.config())
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}\n{self.log()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dovecot did not listen on {self.port}:\n{self.log()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module", name="dovecot_server")
def dovecot_server_fixture() -> Iterator[DovecotServer]:
    """A running dovecot (IMAPS, client certificate required) for a test module; import
    `dovecot_server_fixture` into the module and ask for `dovecot_server`."""
    ensure_dovecot()
    root = Path(tempfile.mkdtemp(prefix="carebus-dovecot-"))
    root.chmod(0o755)  # the mail user (nobody when we are root) must traverse it
    if os.geteuid() == 0:
        uid, gid = 65534, 65534
    else:
        uid, gid = os.geteuid(), os.getegid()
    server = DovecotServer(
        root=root,
        host="127.0.0.1",
        port=free_port(),
        user=USER,
        password=PASSWORD,
        pki=ensure_local_pki(root / "pki"),
        uid=uid,
        gid=gid,
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

"""TLS for MSSanté mail: verified client contexts, and the embedded mailbox's local PKI.

MSSanté is SMTP/IMAP over TLS with mutual authentication (IGC Santé certificates), so
every context built here verifies the peer (never `CERT_NONE`, `check_hostname` on
for clients) and presents a client certificate when one is configured.

The embedded default has no IGC Santé: on first run a local CA, a server certificate
(localhost / 127.0.0.1 / ::1) and a client certificate for the bus itself are made
under `<data_dir>/mailbox/tls/`, persisted and reused, so the one-machine demo runs the
same mutual-TLS code path as production. They are made with the `openssl` command
line (the `cryptography` package is not a dependency of the project): ECDSA P-256,
keys 0600 in a 0700 directory, written to a temporary directory and renamed into
place so a half-made PKI is never used. Leaf certificates close to expiry are reissued
from the same CA, so clients that trust the CA keep working.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bus.settings import MssanteSettings, Settings

OPENSSL = "openssl"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity TLS clients accept for a server certificate
RENEW_BEFORE_S = 30 * 24 * 3600
LOCAL_NAMES: tuple[str, ...] = ("localhost",)
LOCAL_IPS: tuple[str, ...] = ("127.0.0.1", "::1")


class PkiError(RuntimeError):
    """The local certificates could not be made (openssl missing or failing)."""


@dataclass(frozen=True, slots=True)
class LocalPki:
    """Paths of the embedded mailbox's CA, server and bus-client certificates."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.root / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.root / "client.key"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
        )

    def complete(self) -> bool:
        return all(p.is_file() and p.stat().st_size > 0 for p in self.files())


def pki_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "mailbox" / "tls"


def _openssl(*args: str) -> None:
    if shutil.which(OPENSSL) is None:
        raise PkiError("the openssl command is needed to make the local mailbox certificates")
    proc = subprocess.run(  # noqa: S603 - fixed program, arguments built here
        [OPENSSL, *args], capture_output=True, text=True, check=False, timeout=60
    )
    if proc.returncode != 0:
        raise PkiError(f"openssl {args[0]} failed: {proc.stderr.strip()[-500:]}")


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )
    path.chmod(0o600)


def _make_ca(root: Path, common_name: str) -> None:
    _new_key(root / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", str(root / "ca.key"), "-out", str(root / "ca.crt"),
        "-days", str(CA_DAYS), "-subj", f"/O=CareBus/CN={common_name}", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip


def issue(
    root: Path,
    name: str,
    *,
    common_name: str,
    server: bool,
    dns: Sequence[str] = LOCAL_NAMES,
    ips: Sequence[str] = LOCAL_IPS,
) -> tuple[Path, Path]:
    """Issue `<name>.crt`/`<name>.key` in `root` signed by `root/ca.*`.

    Server certificates carry the loopback names as subjectAltName (hostname checks
    use SAN, never CN); client certificates carry clientAuth only, so a bus client
    certificate can never pose as the mailbox.
    """
    key, csr, crt = root / f"{name}.key", root / f"{name}.csr", root / f"{name}.crt"
    _new_key(key)
    _openssl(
        "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/O=CareBus/CN={common_name}"
    )
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    if server:
        san = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        lines.append(f"subjectAltName={','.join(san)}")
    ext = root / f"{name}.ext"
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(root / "ca.crt"), "-CAkey",
        str(root / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}", "-days",
        str(LEAF_DAYS), "-sha256", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return crt, key


def _expiring(cert: Path) -> bool:
    proc = subprocess.run(  # noqa: S603
        [OPENSSL, "x509", "-checkend", str(RENEW_BEFORE_S), "-noout", "-in", str(cert)],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode != 0


def ensure_local_pki(data_dir: Path, *, ca_name: str = "CareBus local mailbox CA") -> LocalPki:
    """The embedded mailbox's certificates: made on first run, then reused.

    Safe against a crash or a concurrent start: everything is made in a temporary
    sibling directory and renamed into place; the loser of a race keeps the winner's.
    """
    pki = LocalPki(pki_dir(data_dir))
    if pki.complete():
        for name, server in (("server", True), ("client", False)):
            if _expiring(pki.root / f"{name}.crt"):
                _reissue(pki, name, server=server)
        return pki
    pki.root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tls-", dir=pki.root.parent))
    try:
        tmp.chmod(0o700)
        _make_ca(tmp, ca_name)
        issue(tmp, "server", common_name="localhost", server=True)
        issue(tmp, "client", common_name="CareBus bus client", server=False)
        if pki.root.exists() and not pki.complete():
            shutil.rmtree(pki.root)  # leftover of an older, broken attempt
        with contextlib.suppress(OSError):  # OSError: another process won the race
            tmp.rename(pki.root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not pki.complete():
        raise PkiError(f"local mailbox certificates incomplete under {pki.root}")
    return pki


def _reissue(pki: LocalPki, name: str, *, server: bool) -> None:
    with tempfile.TemporaryDirectory(dir=pki.root) as tmp_dir:
        tmp = Path(tmp_dir)
        shutil.copy2(pki.ca_cert, tmp / "ca.crt")
        shutil.copy2(pki.ca_key, tmp / "ca.key")
        cn = "localhost" if server else "CareBus bus client"
        crt, key = issue(tmp, name, common_name=cn, server=server)
        os.replace(key, pki.root / f"{name}.key")
        os.replace(crt, pki.root / f"{name}.crt")


def client_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A client context: peer verified against `ca_file` (system store when None),
    hostname checked, TLS 1.2 minimum, our certificate presented for mutual TLS."""
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca: Path | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server context. With `client_ca`, a presented client certificate must chain
    to it (the handshake fails otherwise). `CERT_OPTIONAL` rather than `CERT_REQUIRED`
    so a client without a certificate gets a readable SMTP refusal (the mailbox
    checks the certificate is there) instead of a bare handshake alert."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("require_client_cert needs the CA client certificates chain to")
    return ctx


def mssante_client_files(settings: Settings) -> tuple[Path | None, Path | None, Path | None]:
    """(CA, client cert, client key) the bus uses: the configured ones for a real relay,
    the local PKI's for the embedded mailbox (host "")."""
    ms: MssanteSettings = settings.mssante
    if ms.host:
        return ms.ca_file, ms.client_cert, ms.client_key
    pki = ensure_local_pki(settings.data_dir)
    return (
        ms.ca_file or pki.ca_cert,
        ms.client_cert or pki.client_cert,
        ms.client_key or pki.client_key,
    )


def mssante_client_context(settings: Settings) -> ssl.SSLContext:
    """The SMTP/IMAP client context from settings (see `mssante_client_files`)."""
    return client_context(*mssante_client_files(settings))

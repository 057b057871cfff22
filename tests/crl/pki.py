"""Test PKI for the crl package: CAs and leaf certificates (cryptography), and an OpenSSL-driven customer CA."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tests.helpers import require_tool

UTC = timezone.utc
# In the recent past, so that OpenSSL (on the real clock) accepts certificates and CRLs made "now"
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

_KEYS: dict[str, object] = {}


def key(kind: str = "rsa", slot: int = 0):
    """A cached private key per (kind, slot): RSA generation is the slow part of making a test PKI."""
    name = f"{kind}{slot}"
    if name not in _KEYS:
        _KEYS[name] = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
                       else ec.generate_private_key(ec.SECP256R1()))
    return _KEYS[name]


@dataclass
class CaPair:
    key: object
    cert: x509.Certificate

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_ca(cn: str = "Test Device CA", *, kind: str = "rsa", slot: int = 0, cdp: "str | None" = None,
            crl_sign: bool = True, aki: bool = True) -> CaPair:
    k = key(kind, slot)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CRL Tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
         .not_valid_after(NOW + timedelta(days=3650))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                      crl_sign=crl_sign, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False))
    if cdp:
        b = b.add_extension(_cdp(cdp), critical=False)
    return CaPair(k, b.sign(k, hashes.SHA256()))


def _cdp(uri: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(uri)], relative_name=None, reasons=None, crl_issuer=None)])


def issue(ca: CaPair, serial: int, *, cdp: "str | None" = "http://127.0.0.1/crl/test.crl", cn: str = "device",
          is_ca: bool = False) -> x509.Certificate:
    leaf_key = key("ec", 9)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.cert.subject).public_key(leaf_key.public_key()).serial_number(serial)
         .not_valid_before(NOW - timedelta(hours=1)).not_valid_after(NOW + timedelta(days=365))
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
    if cdp:
        b = b.add_extension(_cdp(cdp), critical=False)
    return b.sign(ca.key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def openssl(*args: str, cwd: "Path | None" = None, input: "bytes | None" = None,
            check: bool = True) -> subprocess.CompletedProcess:
    exe = require_tool("openssl")
    proc = subprocess.run([exe, *args], cwd=cwd, input=input, capture_output=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {proc.stderr.decode(errors='replace')}")
    return proc


def openssl_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%y%m%d%H%M%SZ")


@dataclass
class OpenSslCa:
    """A customer's CA run with the `openssl` command line: certificates, revocations and `ca -gencrl`."""

    directory: Path
    cn: str
    crl_url: str
    ca_cdp: "str | None" = "http://127.0.0.1/root.crl"
    crl_number: int = 1
    index: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        cdp_line = f"crlDistributionPoints=URI:{self.ca_cdp}\n" if self.ca_cdp else ""
        (d / "ca.cnf").write_text(
            "[req]\ndistinguished_name=dn\nprompt=no\nx509_extensions=v3_ca\n"
            f"[dn]\nO=Customer Inc\nCN={self.cn}\n"
            "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
            f"subjectKeyIdentifier=hash\n{cdp_line}")
        (d / "leaf.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"authorityKeyIdentifier=keyid\ncrlDistributionPoints=URI:{self.crl_url}\n")
        (d / "leaf-nocdp.ext").write_text("basicConstraints=critical,CA:FALSE\nauthorityKeyIdentifier=keyid\n")
        openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
        openssl("req", "-new", "-x509", "-key", "ca.key", "-config", "ca.cnf", "-days", "3650", "-set_serial", "1",
                "-out", "ca.pem", cwd=d)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "leaf.key", cwd=d)
        openssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=device", "-out", "leaf.csr", cwd=d)

    @property
    def cert_pem(self) -> bytes:
        return (self.directory / "ca.pem").read_bytes()

    def issue(self, serial: int, *, cdp: bool = True) -> bytes:
        """A leaf certificate (PEM) with this serial, with or without the CDP extension."""
        out = f"leaf-{serial:x}.pem"
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(serial),
                "-days", "365", "-extfile", "leaf.ext" if cdp else "leaf-nocdp.ext", "-out", out, cwd=self.directory)
        return (self.directory / out).read_bytes()

    def set_revoked(self, entries: "dict[int, str | None]", at: datetime = NOW) -> None:
        """The CA database: serial -> reason ('keyCompromise', 'certificateHold', ... or None)."""
        lines = []
        for serial, reason in entries.items():
            rev = openssl_time(at)
            if reason == "certificateHold":
                rev += ",certificateHold,holdInstructionReject"
            elif reason:
                rev += "," + reason
            lines.append(f"R\t491231235959Z\t{rev}\t{serial:02X}\tunknown\t/CN=device-{serial:x}\n")
        (self.directory / "index.txt").write_text("".join(lines))

    def gencrl(self, *, number: "int | None" = None, last: "datetime | None" = None,
               next: "datetime | None" = None, key_file: str = "ca.key", cert_file: str = "ca.pem",
               aki: bool = True, idp_uri: "str | None" = None) -> bytes:
        """`openssl ca -gencrl`: the CRL as DER."""
        d = self.directory
        if not (d / "index.txt").exists():
            (d / "index.txt").write_text("")
        if number is None:
            number = self.crl_number
            self.crl_number += 1
        (d / "crlnumber").write_text(f"{number:02X}\n")
        exts = ["[crl_ext]"]
        if aki:
            exts.append("authorityKeyIdentifier=keyid:always")
        if idp_uri:
            exts.append("issuingDistributionPoint=critical,@idp")
            exts.append(f"[idp]\nfullname=URI:{idp_uri}")
        (d / "openssl-ca.cnf").write_text(
            "[ca]\ndefault_ca=CA_default\n[CA_default]\ndir=.\ndatabase=$dir/index.txt\ncrlnumber=$dir/crlnumber\n"
            f"certificate=$dir/{cert_file}\nprivate_key=$dir/{key_file}\ndefault_md=sha256\n"
            f"crl_extensions=crl_ext\nunique_subject=no\n" + "\n".join(exts) + "\n")
        last = last or NOW
        next = next or (last + timedelta(days=7))
        openssl("ca", "-gencrl", "-config", "openssl-ca.cnf", "-crl_lastupdate", openssl_time(last),
                "-crl_nextupdate", openssl_time(next), "-out", "crl.pem", "-batch", cwd=d)
        return openssl("crl", "-in", "crl.pem", "-outform", "DER", cwd=d).stdout

    def impostor(self) -> None:
        """Another key and self-signed certificate under the same name (a wrong signer)."""
        openssl("genrsa", "-out", "other.key", "2048", cwd=self.directory)
        openssl("req", "-new", "-x509", "-key", "other.key", "-config", "ca.cnf", "-days", "3650", "-set_serial", "2",
                "-out", "other.pem", cwd=self.directory)

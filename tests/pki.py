"""A throwaway certificate authority for the TLS tests, made fresh in a temporary directory.

Two CAs: the *trusted* one signs a server certificate (for 127.0.0.1 and
localhost) and a client certificate; the *rogue* one signs a server and a
client certificate that nobody trusts. Keys are EC P-256 (fast to make).

The `cryptography` package makes them when it is importable; otherwise the
``openssl`` command does; with neither, `make_pki` skips the calling test and
says why.
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Pki", "make_pki"]

_LEAVES = ("server", "client", "rogue-server", "rogue-client")


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files `make_pki` wrote, and the contexts built from them."""

    directory: Path
    backend: str  # "cryptography" or "openssl": which made the files

    def cert(self, name: str) -> str:
        """``ca``, ``rogue-ca`` or a leaf (``server``, ``client``, ``rogue-server``, ``rogue-client``)."""
        return str(self.directory / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.directory / f"{name}.key")

    def client_context(self, certificate: str | None = None, trust: str = "ca") -> ssl.SSLContext:
        """A client context trusting the ``trust`` CA, presenting leaf ``certificate`` if given."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.cert(trust))
        if certificate is not None:
            context.load_cert_chain(self.cert(certificate), self.key(certificate))
        return context


def make_pki(directory: Path) -> Pki:
    """Write a fresh CA, a rogue CA and their leaves into ``directory``; skip the test if no tool can."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("TLS tests need the `cryptography` package or the `openssl` command; neither is available")
        _with_openssl(directory)
        return Pki(directory, "openssl")
    _with_cryptography(directory)
    return Pki(directory, "cryptography")


# --- the cryptography package ---------------------------------------------------------------


def _with_cryptography(directory: Path) -> None:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        pem = serialization.Encoding.PEM
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(pem))

    def builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey):  # type: ignore[no-untyped-def]
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
        )

    cas = {}
    for ca in ("ca", "rogue-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = f"dbqueue test {ca}"
        cert = (
            builder(subject, subject, key, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        write(ca, key, cert)
        cas[ca] = (subject, key)
    for leaf in _LEAVES:
        issuer, issuer_key = cas["rogue-ca" if leaf.startswith("rogue") else "ca"]
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if leaf.endswith("server") else ExtendedKeyUsageOID.CLIENT_AUTH
        cert_builder = (
            builder("localhost" if leaf.endswith("server") else f"dbqueue test {leaf}", issuer, key, issuer_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if leaf.endswith("server"):
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            cert_builder = cert_builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        write(leaf, key, cert_builder.sign(issuer_key, hashes.SHA256()))


# --- the openssl command ----------------------------------------------------------------------

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_NEW_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(directory: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(f"openssl {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}")


def _with_openssl(directory: Path) -> None:
    (directory / "openssl.cnf").write_text(_OPENSSL_CONFIG)
    for ca in ("ca", "rogue-ca"):
        _openssl(
            directory, "req", "-x509", "-new", *_NEW_KEY, "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=dbqueue test {ca}", "-config", "openssl.cnf", "-extensions", "ca",
        )  # fmt: skip
    for serial, leaf in enumerate(_LEAVES, start=1):
        ca = "rogue-ca" if leaf.startswith("rogue") else "ca"
        kind = "server" if leaf.endswith("server") else "client"
        subject = "/CN=localhost" if kind == "server" else f"/CN=dbqueue test {leaf}"
        _openssl(
            directory, "req", "-new", *_NEW_KEY, "-keyout", f"{leaf}.key", "-out", f"{leaf}.csr",
            "-subj", subject, "-config", "openssl.cnf",
        )  # fmt: skip
        _openssl(
            directory, "x509", "-req", "-in", f"{leaf}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-set_serial", str(serial), "-days", "2", "-out", f"{leaf}.pem",
            "-extfile", "openssl.cnf", "-extensions", kind,
        )  # fmt: skip

"""Throwaway TLS material and a TLS-only ``redis-server`` with a password, for the tests
that prove ``rediss://`` end to end."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PASSWORD = "s3cret-tls-pass"  # a throwaway server's password


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its certificate file and signing key."""

    cert_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_authority(folder: Path, name: str) -> Authority:
    """A self-signed CA valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = _pem(folder / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return Authority(cert_path=path, cert=cert, key=key)


def issue_server_cert(ca: Authority, folder: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost, signed by ``ca``: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = _pem(folder / "server.pem", cert.public_bytes(serialization.Encoding.PEM))
    key_path = _pem(
        folder / "server.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cert_path, key_path


@dataclass(frozen=True)
class TlsRedis:
    """A running TLS-only redis-server that requires :data:`PASSWORD`."""

    port: int
    ca: Authority

    def url(self, db: int, *, ca_path: Path | None = None, password: str = PASSWORD) -> str:
        """``rediss://`` URL of database ``db``, verifying the server against ``ca_path``
        (this server's CA by default)."""
        ca_file = ca_path or self.ca.cert_path
        return (
            f"rediss://:{password}@127.0.0.1:{self.port}/{db}"
            f"?ssl_cert_reqs=required&ssl_ca_certs={ca_file}"
        )


@contextmanager
def tls_redis_server(folder: Path, port: int) -> Iterator[TlsRedis]:
    """Start ``redis-server`` with TLS only (no plain port) and ``requirepass``; stop it
    afterwards."""
    server_binary = shutil.which("redis-server")
    assert server_binary, "redis-server is not installed (apt-get install redis-server)"
    ca = make_authority(folder, "test-ca")
    cert, key = issue_server_cert(ca, folder)
    process = subprocess.Popen(
        [
            server_binary,
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca.cert_path),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
            "--save", "",
            "--appendonly", "no",
            "--bind", "127.0.0.1",
            "--dir", str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = TlsRedis(port=port, ca=ca)
    try:
        _wait_until_answering(server, process)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_answering(server: TlsRedis, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, "redis-server exited: is it built with TLS support?"
        try:
            with redis.Redis.from_url(server.url(0), socket_connect_timeout=1) as client:
                client.ping()
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"the TLS redis-server on port {server.port} did not answer in 10 s")

"""Throwaway TLS material for the local simulators.

Owns: one test CA per process (generated on first use with ``cryptography``), a server
certificate for 127.0.0.1 / ::1 / localhost signed by it, the CA PEM written to a temp file whose
path clients trust (``connection_verify=`` on azure-identity credentials, ``REQUESTS_CA_BUNDLE``,
``httpx.Client(verify=...)``), and a helper that makes self-signed RSA client certificates for
certificate-credential tests. Nothing here is meant for anything but loopback tests.
"""

from __future__ import annotations

import atexit
import datetime as dt
import ipaddress
import os
import shutil
import ssl
import tempfile
import threading
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestCA", "get_test_ca", "make_client_certificate"]

_lock = threading.Lock()
_ca: "TestCA | None" = None


@dataclass
class TestCA:
    """Paths of the generated PEM files (the directory is removed at interpreter exit)."""

    directory: str
    ca_path: str          # CA certificate (trust this)
    cert_path: str        # server certificate chain (leaf + CA)
    key_path: str         # server private key
    ca_pem: bytes

    __test__ = False  # not a pytest test class

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.set_alpn_protocols(["http/1.1"])  # httpx with http2=True falls back to HTTP/1.1
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "inbox-functions simulator")])


def _generate(directory: str) -> TestCA:
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("inbox-functions sim test CA")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=29))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_path = os.path.join(directory, "sim-ca.pem")
    cert_path = os.path.join(directory, "sim-server.pem")
    key_path = os.path.join(directory, "sim-server.key")
    with open(ca_path, "wb") as fh:
        fh.write(ca_pem)
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return TestCA(directory, ca_path, cert_path, key_path, ca_pem)


def make_test_ca(directory: str) -> TestCA:
    """Another throwaway CA and server certificate in `directory`: one nobody trusts (tests of what
    a client does with a certificate from an unknown CA)."""
    return _generate(directory)


def get_test_ca() -> TestCA:
    """The process-wide test CA and server certificate, generated on first call."""
    global _ca
    with _lock:
        if _ca is None:
            directory = tempfile.mkdtemp(prefix="sim-tls-")
            atexit.register(shutil.rmtree, directory, True)
            _ca = _generate(directory)
        return _ca


def make_client_certificate(common_name: str = "inbox-functions-sim-app",
                            key_size: int = 2048) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate for an app registration: (cert_pem, private_key_pem).

    azure-identity's CertificateCredential takes ``certificate_data=key_pem + cert_pem``;
    register ``cert_pem`` with ``GraphSim.add_app(certificate_pem=...)``.
    """
    now = dt.datetime.now(dt.timezone.utc)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem

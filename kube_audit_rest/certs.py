"""Certificates made with ``cryptography``: the self-signed pair for trying it out.

ECDSA P-256 keys, names in subjectAltName (clients ignore the CN), keys written
with mode 0600 and never overwritten by accident.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def self_signed_pair(names: Sequence[str], days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed serving certificate for *names*; returns (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-audit-rest")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        # CA:TRUE so the certificate can be its own trust anchor (curl --cacert).
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    """Create *path* with *mode*; refuse to replace an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def ensure_self_signed(cert_path: str, key_path: str) -> bool:
    """Create a localhost pair at these paths unless both exist; return whether created."""
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return False
    for path in (cert_path, key_path):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists but its partner does not; remove it or pass both")
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    cert_pem, key_pem = self_signed_pair(LOCAL_NAMES)
    write_private(key_path, key_pem, 0o600)
    write_private(cert_path, cert_pem, 0o644)
    return True

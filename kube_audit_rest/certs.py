"""Certificates made with ``cryptography``: the self-signed pair for trying it
out, and a CA plus serving certificate for a Service in a cluster.

ECDSA P-256 keys (RSA 2048 on request for the cluster pair), names in
subjectAltName (clients ignore the CN), keys written with mode 0600 and never
overwritten by accident.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _general_name(name: str) -> x509.DNSName | x509.IPAddress:
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


# --- A CA and a serving certificate for a Service (``kube-audit-rest certs``) ---

KEY_TYPES = ("ecdsa", "rsa")
DEFAULT_LEAF_DAYS = 365
DEFAULT_CA_DAYS = 3650


@dataclass(frozen=True, slots=True)
class ServingPair:
    """PEM bytes of a CA, its key, and a serving certificate and key it signed."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def service_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for a Service: short to fully qualified."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def _new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; expected one of {', '.join(KEY_TYPES)}")


def _key_usage(*, ca: bool, rsa_key: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        # RSA key exchange (TLS 1.2 non-ECDHE suites) encrypts to the key.
        key_encipherment=rsa_key and not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue_serving_pair(
    names: Sequence[str],
    key_type: str = "ecdsa",
    days: int = DEFAULT_LEAF_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    ca_label: str = "kube-audit-rest",
) -> ServingPair:
    """A fresh CA (valid *ca_days*) and a certificate for *names* (valid *days*).

    The names go into subjectAltName only: TLS clients, the API server's
    included, ignore the subject CN. The CA may sign nothing but end-entity
    certificates (pathLen 0); the leaf is serverAuth only.
    """
    if not names:
        raise ValueError("a serving certificate needs at least one name")
    if days < 1 or ca_days < days:
        raise ValueError(f"need 1 <= days ({days}) <= CA days ({ca_days})")
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # tolerate clocks slightly behind
    rsa_key = key_type == "rsa"

    ca_key = _new_key(key_type)
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kube-audit-rest"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{ca_label} CA"[:64]),
        ]
    )
    ca_public = ca_key.public_key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, rsa_key=rsa_key), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = _new_key(key_type)
    public = key.public_key()
    leaf_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kube-audit-rest"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kube-audit-rest webhook"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(ca_name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False, rsa_key=rsa_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServingPair(
        ca_cert=ca_cert.public_bytes(pem),
        ca_key=_pem_key(ca_key),
        cert=cert.public_bytes(pem),
        key=_pem_key(key),
    )


def check_serving_pair(ca_pem: bytes, cert_pem: bytes, key_pem: bytes, name: str) -> None:
    """Raise ValueError unless *cert_pem* is signed by *ca_pem*, matches *key_pem*
    and names *name*: the checks the API server's TLS client will make."""
    from cryptography.x509 import verification

    try:
        roots = x509.load_pem_x509_certificates(ca_pem)
        chain = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as error:
        raise ValueError(f"cannot read the PEM data: {error}") from None
    leaf = chain[0]
    public = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    mine = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != mine:
        raise ValueError("the private key does not belong to the certificate")
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(roots))
        .build_server_verifier(_general_name(name))
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as error:
        reason = str(error).split(" (encountered", 1)[0]
        raise ValueError(
            f"the certificate is not valid for {name} under the CA: {reason}"
        ) from None

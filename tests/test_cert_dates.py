"""cert_dates.not_after against cryptography's reading of the same certificates."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from kube_audit_rest.cert_dates import CertificateDateError, not_after


def _certificate(
    not_after_at: datetime.datetime, key_type: str = "ec", version_1: bool = False
) -> bytes:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "ec"
        else rsa.generate_private_key(65537, 2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dates")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(not_after_at)
    )
    if not version_1:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("x")]), False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2027, 3, 4, 5, 6, 7, tzinfo=datetime.UTC),  # UTCTime
        datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),  # last UTCTime year
        datetime.datetime(2050, 1, 1, 0, 0, 0, tzinfo=datetime.UTC),  # GeneralizedTime
        datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),  # "no expiry"
    ],
)
@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_matches_cryptography(when: datetime.datetime, key_type: str) -> None:
    pem = _certificate(when, key_type)
    expected = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
    assert expected == when.timestamp()
    assert not_after(pem) == expected


def test_the_first_certificate_of_a_chain_counts() -> None:
    leaf = _certificate(datetime.datetime(2028, 1, 1, tzinfo=datetime.UTC))
    issuer = _certificate(datetime.datetime(2035, 1, 1, tzinfo=datetime.UTC))
    chain = b"# a comment line\n" + leaf + issuer
    assert not_after(chain) == datetime.datetime(2028, 1, 1, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_is_a_clear_error(pem: bytes) -> None:
    with pytest.raises(CertificateDateError):
        not_after(pem)

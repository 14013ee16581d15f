"""The expiry (``notAfter``) of a PEM certificate, read from its DER encoding.

The workers need one date from the serving certificate, for the expiry gauge.
``cryptography`` would give it, but loading it costs each worker process about
10 MB of resident memory for this one field, so the few DER fields in front
of it (RFC 5280 section 4.1) are walked here instead. The tests check the
result against ``cryptography`` on generated certificates.
"""

from __future__ import annotations

import calendar
import ssl

_SEQUENCE = 0x30
_EXPLICIT_VERSION = 0xA0
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_PEM_END = b"-----END CERTIFICATE-----"


class CertificateDateError(ValueError):
    """The certificate's encoding is not what RFC 5280 describes."""


def _element(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at *offset*."""
    try:
        tag = der[offset]
        length = der[offset + 1]
        offset += 2
        if length & 0x80:
            count = length & 0x7F
            if not 1 <= count <= 4:
                raise CertificateDateError("unsupported DER length")
            length = int.from_bytes(der[offset : offset + count], "big")
            offset += count
    except IndexError:
        raise CertificateDateError("truncated DER") from None
    end = offset + length
    if end > len(der):
        raise CertificateDateError("truncated DER")
    return tag, offset, end


def _parse_time(tag: int, text: str) -> float:
    if not text.endswith("Z"):
        raise CertificateDateError(f"time {text!r} is not in UTC")
    digits = text[:-1]
    if tag == _UTC_TIME and len(digits) == 12:
        year = int(digits[:2])
        # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, else 20YY.
        year += 1900 if year >= 50 else 2000
        rest = digits[2:]
    elif tag == _GENERALIZED_TIME and len(digits) == 14:
        year = int(digits[:4])
        rest = digits[4:]
    else:
        raise CertificateDateError(f"unsupported time {text!r}")
    month, day, hour, minute, second = (int(rest[i : i + 2]) for i in range(0, 10, 2))
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def not_after(pem: bytes) -> float:
    """``notAfter`` of the first certificate in *pem*, as a Unix timestamp."""
    end = pem.find(_PEM_END)
    if end < 0:
        raise CertificateDateError("no PEM certificate found")
    first = pem[: end + len(_PEM_END)].decode("ascii", "replace")
    start = first.find("-----BEGIN CERTIFICATE-----")
    try:
        der = ssl.PEM_cert_to_DER_cert(first[start:] + "\n")
    except ValueError as error:
        raise CertificateDateError(str(error)) from None
    tag, contents, _ = _element(der, 0)  # Certificate
    if tag != _SEQUENCE:
        raise CertificateDateError("not a certificate")
    tag, position, _ = _element(der, contents)  # tbsCertificate
    if tag != _SEQUENCE:
        raise CertificateDateError("not a certificate")
    tag, _, after = _element(der, position)
    if tag == _EXPLICIT_VERSION:
        position = after
    for _field in ("serialNumber", "signature", "issuer"):
        _, _, position = _element(der, position)
    tag, validity, _ = _element(der, position)
    if tag != _SEQUENCE:
        raise CertificateDateError("no validity in certificate")
    _, _, position = _element(der, validity)  # notBefore
    tag, start_time, end_time = _element(der, position)  # notAfter
    return _parse_time(tag, der[start_time:end_time].decode("ascii"))

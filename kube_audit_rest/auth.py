"""Who may post records: a bearer token from a file and/or a verified client certificate.

Off unless ``--webhook-token-file`` or ``--client-ca-file`` is given; then
every webhook endpoint (``/log-request`` and ``/audit-webhook*``) needs one of
them: a request is authenticated by the right ``Authorization: Bearer`` token
(compared in constant time) or by a client certificate that the TLS handshake
verified against the client CA. The token file is re-read when its ``stat``
signature changes (checked at most once per interval, on a request, so a
Secret volume's symlink swap is seen without a watcher thread); a trailing
newline is not part of the token. A changed file that cannot be read, or is
empty, is logged and counted, and the previous token stays in force.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

_log = structlog.get_logger("kube_audit_rest.auth")
_BEARER = b"bearer "

Signature = tuple[int, int, int, int]


class TokenFileError(ValueError):
    """The token file cannot be used; the message says why."""


def read_token(path: str) -> bytes:
    """The token in *path*: its bytes without one trailing newline (or CRLF)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise TokenFileError(f"cannot read {path}: {error.strerror or error}") from None
    token = data.removesuffix(b"\n").removesuffix(b"\r")
    if not token:
        raise TokenFileError(f"{path}: the token file is empty")
    if any(byte < 0x21 or byte > 0x7E for byte in token):
        raise TokenFileError(f"{path}: the token must be printable ASCII without spaces")
    return token


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class TokenFile:
    """The token in force, re-read when the file changes."""

    def __init__(
        self,
        path: str,
        interval: float,
        reload_failed: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._interval = interval
        self._reload_failed = reload_failed
        self._clock = clock
        self._signature = _signature(path)
        self._rejected: Signature | None = None
        self.token = read_token(path)
        self._next_check = clock() + interval

    def current(self) -> bytes:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self._refresh()
        return self.token

    def _refresh(self) -> None:
        signature = _signature(self._path)
        if signature is None or signature in (self._signature, self._rejected):
            return
        try:
            token = read_token(self._path)
        except TokenFileError as error:
            self._rejected = signature
            self._reload_failed()
            _log.error("token file reload failed; keeping the previous token", error=str(error))
            return
        self.token, self._signature, self._rejected = token, signature, None
        _log.info("webhook token reloaded", path=self._path)

    def matches(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value carries the token."""
        if authorization is None or authorization[:7].lower() != _BEARER:
            return False
        return hmac.compare_digest(authorization[7:].strip(b" \t"), self.current())


class Authenticator:
    """The credentials a webhook request must carry when authentication is on."""

    def __init__(self, token: TokenFile | None, client_ca: bool) -> None:
        self.token = token
        self.client_ca = client_ca

    def authenticated(self, authorization: bytes | None, transport: Any) -> bool:
        if self.token is not None and self.token.matches(authorization):
            return True
        return self.client_ca and has_verified_certificate(transport)


def has_verified_certificate(transport: Any) -> bool:
    """Whether the TLS peer presented a certificate the handshake verified.

    With ``verify_mode = CERT_OPTIONAL`` OpenSSL refuses the handshake for a
    certificate it cannot verify, so any certificate seen here is verified;
    ``getpeercert()`` is empty when the client sent none.
    """
    if transport is None:
        return False
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return False
    try:
        return bool(ssl_object.getpeercert())
    except ValueError:  # handshake not done
        return False

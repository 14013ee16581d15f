"""TLS for the webhook port: a reloadable certificate and sockets with deadlines.

``CertificateStore`` holds the current ``SSLContext``. ``refresh()`` compares a
signature of both files (``stat`` following symlinks: inode, size, mtime), so a
Kubernetes Secret update, which swaps the ``..data`` symlink rather than
writing the files, is seen like any other change, without file events. A new
pair that does not load is logged and counted while the old one keeps serving.

The deadlines themselves (handshake, read, write) are enforced by the worker
(``aio_worker``, ``http_server``); ``Timeouts`` and ``TlsEvents`` carry them and
the callbacks that count what happened.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from kube_audit_rest.cert_dates import CertificateDateError, not_after

_log = structlog.get_logger("kube_audit_rest.tls")

FileSignature = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Timeouts:
    handshake: float
    read: float
    write: float


@dataclass(frozen=True, slots=True)
class TlsEvents:
    """Callbacks for what the metrics count; no-ops by default."""

    handshake_failed: Callable[[], None] = lambda: None
    timed_out: Callable[[str], None] = lambda _phase: None
    certificate_loaded: Callable[[float], None] = lambda _expiry: None
    reload_failed: Callable[[], None] = lambda: None


class CertificateError(Exception):
    """The certificate/key pair cannot be served; the message says why."""


def _signature(*paths: str) -> FileSignature:
    stats = [os.stat(path) for path in paths]
    return tuple((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


def _signature_or_empty(*paths: str) -> FileSignature:
    """The files' signature, or () while one of them cannot be found."""
    try:
        return _signature(*paths)
    except OSError:
        return ()


def build_context(
    cert_path: str,
    key_path: str,
    names: tuple[str, str] | None = None,
    client_ca: str | None = None,
) -> ssl.SSLContext:
    """Load and check a certificate/key pair; raise CertificateError with a reason.

    With *client_ca* (``--client-ca-file``) the server asks for a client
    certificate (``CERT_OPTIONAL``: clients without one still connect, and
    ``auth`` decides what they may do); one that does not verify against
    that CA fails the handshake.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    for label, path in (("certificate", cert_path), ("key", key_path)):
        try:
            with open(path, "rb"):
                pass
        except OSError as error:
            raise CertificateError(f"cannot read {label} {path}: {error.strerror}") from None
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as error:
        reason = error.reason or str(error)
        if "KEY_VALUES_MISMATCH" in reason:
            reason = "the key does not match the certificate"
        shown_cert, shown_key = names or (cert_path, key_path)
        raise CertificateError(f"cannot use {shown_cert} with {shown_key}: {reason}") from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as error:
            problem = getattr(error, "reason", None) or error.strerror or str(error)
            raise CertificateError(f"cannot use client CA {client_ca}: {problem}") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def certificate_expiry(cert_path: str) -> float:
    """notAfter of the first certificate in the file, as a Unix timestamp."""
    with open(cert_path, "rb") as handle:
        return not_after(handle.read())


class CertificateStore:
    """The serving context, reloaded when the certificate files change.

    Every pair that loads is also kept, key and chain in one 0600 file, in
    *state_dir* (the private runtime folder). A worker that starts while the
    mounted files are broken (a half-updated Secret) serves that last good
    pair instead of failing to boot, which would make gunicorn stop the
    whole server.
    """

    def __init__(
        self,
        cert_path: str,
        key_path: str,
        events: TlsEvents,
        state_dir: str,
        client_ca: str | None = None,
    ) -> None:
        self._client_ca = client_ca
        self._cert_path = cert_path
        self._key_path = key_path
        self._events = events
        self._state_dir = state_dir
        self._last_good = os.path.join(state_dir, "last-good-pair.pem")
        self._lock = threading.Lock()
        self._rejected: FileSignature | None = None
        try:
            self.context, expiry, self._signature = self._load()
        except (CertificateError, OSError, ValueError) as error:
            if not os.path.exists(self._last_good):
                raise CertificateError(str(error)) from None
            self._signature = self._rejected = _signature_or_empty(cert_path, key_path)
            self._report_failure(str(error), "serving the last good pair")
            self.context = build_context(
                self._last_good, self._last_good, client_ca=self._client_ca
            )
            expiry = certificate_expiry(self._last_good)
        events.certificate_loaded(expiry)

    def _load(self) -> tuple[ssl.SSLContext, float, FileSignature]:
        """Load the pair through a private snapshot, so what is checked is what is kept."""
        signature = _signature(self._cert_path, self._key_path)
        pems = []
        for label, path in (("key", self._key_path), ("certificate", self._cert_path)):
            try:
                with open(path, "rb") as handle:
                    pems.append(handle.read())
            except OSError as error:
                raise CertificateError(f"cannot read {label} {path}: {error.strerror}") from None
        snapshot = os.path.join(self._state_dir, f"pair-{os.getpid()}.pem")
        fd = os.open(snapshot, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pems[0] + b"\n" + pems[1])
        context = build_context(
            snapshot, snapshot, names=(self._cert_path, self._key_path), client_ca=self._client_ca
        )
        try:
            expiry = not_after(pems[1])
        except CertificateDateError as error:
            raise CertificateError(
                f"cannot read the expiry of {self._cert_path}: {error}"
            ) from None
        os.replace(snapshot, self._last_good)
        return context, expiry, signature

    def _report_failure(self, error: str, outcome: str) -> None:
        self._events.reload_failed()
        _log.error(
            f"certificate reload failed; {outcome}",
            error=error,
            cert=self._cert_path,
            key=self._key_path,
        )

    def refresh(self) -> bool:
        """Load the pair again if its files changed; return whether it was replaced."""
        with self._lock:
            signature = _signature_or_empty(self._cert_path, self._key_path)
            if signature in (self._signature, self._rejected):
                return False
            try:
                context, expiry, signature = self._load()
            except (CertificateError, OSError, ValueError) as error:
                # A half-written update (certificate swapped, key not yet)
                # lands here too; the next change of either file retries.
                self._rejected = signature
                self._report_failure(str(error), "still serving the previous pair")
                return False
            self.context = context
            self._signature = signature
            self._rejected = None
            self._events.certificate_loaded(expiry)
            _log.info(
                "serving a new certificate",
                cert=self._cert_path,
                not_after=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry)),
            )
            return True

    def watch(self, interval: float) -> threading.Thread:
        """Check for changes every *interval* seconds in a daemon thread."""

        def loop() -> None:
            while True:
                time.sleep(interval)
                try:
                    self.refresh()
                except Exception:  # never let the watcher die silently
                    _log.exception("certificate watcher error")

        thread = threading.Thread(target=loop, name="certificate-watcher", daemon=True)
        thread.start()
        return thread

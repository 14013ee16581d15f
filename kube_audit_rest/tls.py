"""TLS for the webhook port: a reloadable certificate and sockets with deadlines.

``CertificateStore`` holds the current ``SSLContext``. ``refresh()`` compares a
signature of both files (``stat`` following symlinks: inode, size, mtime), so a
Kubernetes Secret update, which swaps the ``..data`` symlink rather than
writing the files, is seen like any other change, without file events. A new
pair that does not load is logged and counted while the old one keeps serving.

gunicorn's threaded worker reads with blocking sockets and no deadline of its
own, so one client sending a byte a second could hold a request thread for
ever. ``DeadlineSSLSocket`` gives the handshake, each request's reading and each
response's writing a total time budget; a client over budget is logged,
counted and disconnected.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography import x509

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


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"{host}:{port}"


class DeadlineSSLSocket(ssl.SSLSocket):
    """An SSLSocket whose handshake, request reads and response writes have deadlines.

    gunicorn calls ``setblocking(True)`` when a thread takes a connection to
    serve a request, and ``setblocking(False)`` when it parks a kept-alive
    connection, so ``setblocking(True)`` starts the read budget of a request.
    """

    context: ServerSSLContext
    _read_deadline: float | None = None
    _closing = False

    def do_handshake(self, block: bool = False) -> None:
        timeouts = self.context.timeouts
        # Taken first: a client that rejects us often resets at once, and
        # getpeername() fails on a reset socket.
        peer = _peer(self)
        self.settimeout(timeouts.handshake)
        try:
            super().do_handshake()
        except TimeoutError:
            self._handshake_failed(peer, "handshake timed out")
            self.context.events.timed_out("handshake")
            raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "handshake timed out") from None
        except ssl.SSLEOFError:
            # Connected and closed without a complete hello: a TCP probe or a
            # port scan, not a TLS client that failed.
            _log.debug("connection closed before the TLS handshake", peer=peer)
            raise
        except ssl.SSLError as error:
            self._handshake_failed(peer, error.reason or str(error))
            # EOF makes gunicorn close the socket quietly; the failure has
            # just been logged once, in structured form.
            raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "handshake failed") from None
        except OSError as error:
            self._handshake_failed(peer, error.strerror or str(error))
            raise
        self._read_deadline = time.monotonic() + timeouts.read

    def _handshake_failed(self, peer: str, reason: str) -> None:
        self.context.events.handshake_failed()
        _log.warning("TLS handshake failed", peer=peer, reason=reason)

    def setblocking(self, flag: bool) -> None:
        if self.fileno() == -1:
            # gunicorn closes a socket itself after a TLS EOF and then calls
            # setblocking on it again; raising EBADF there makes it count the
            # connection as closed twice, which raises its connection limit.
            return
        super().setblocking(flag)
        if flag and not self._closing:
            self._read_deadline = time.monotonic() + self.context.timeouts.read

    def _drain_without_waiting(self) -> None:
        # gunicorn's graceful close runs on the worker's event-loop thread and
        # waits up to 2 s for the client to close; a client that never does
        # would stall every connection of the worker. Take what is already
        # there and close at once.
        super().settimeout(0.0)

    def shutdown(self, how: int) -> None:
        # gunicorn's graceful close drains the socket with its own short
        # timeout; the request read budget must not apply (or be counted).
        self._closing = True
        self._read_deadline = None
        super().shutdown(how)

    def _remaining_read(self) -> float | None:
        if self._read_deadline is None:
            return None
        remaining = self._read_deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    def _read_timed_out(self) -> None:
        self.context.events.timed_out("read")
        _log.info("closed a connection that was too slow to send its request", peer=_peer(self))
        self._read_deadline = None

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if self._closing:
            self._drain_without_waiting()
            return super().recv(buflen, flags)
        try:
            remaining = self._remaining_read()
            if remaining is not None:
                self.settimeout(remaining)
            return super().recv(buflen, flags)
        except TimeoutError:
            self._read_timed_out()
            return b""  # end of stream: gunicorn drops the connection quietly

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        if self._closing:
            self._drain_without_waiting()
            return super().recv_into(buffer, nbytes or 0, flags)
        try:
            remaining = self._remaining_read()
            if remaining is not None:
                self.settimeout(remaining)
            return super().recv_into(buffer, nbytes or 0, flags)
        except TimeoutError:
            self._read_timed_out()
            return 0

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.settimeout(self.context.timeouts.write)
        try:
            super().sendall(data, flags)
        except TimeoutError:
            self.context.events.timed_out("write")
            _log.info(
                "closed a connection that was too slow to take its response", peer=_peer(self)
            )
            raise BrokenPipeError(32, "write timed out") from None


class ServerSSLContext(ssl.SSLContext):
    """A server context (TLS 1.2+) whose sockets carry deadlines."""

    sslsocket_class = DeadlineSSLSocket
    timeouts: Timeouts
    events: TlsEvents


def build_context(
    cert_path: str,
    key_path: str,
    timeouts: Timeouts,
    events: TlsEvents,
    names: tuple[str, str] | None = None,
) -> ServerSSLContext:
    """Load and check a certificate/key pair; raise CertificateError with a reason."""
    context = ServerSSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.timeouts = timeouts
    context.events = events
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
    return context


def certificate_expiry(cert_path: str) -> float:
    """notAfter of the first certificate in the file, as a Unix timestamp."""
    with open(cert_path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    return certificate.not_valid_after_utc.timestamp()


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
        timeouts: Timeouts,
        events: TlsEvents,
        state_dir: str,
    ) -> None:
        self._cert_path = cert_path
        self._key_path = key_path
        self._timeouts = timeouts
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
            self.context = build_context(self._last_good, self._last_good, timeouts, events)
            expiry = certificate_expiry(self._last_good)
        events.certificate_loaded(expiry)

    def _load(self) -> tuple[ServerSSLContext, float, FileSignature]:
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
            snapshot,
            snapshot,
            self._timeouts,
            self._events,
            names=(self._cert_path, self._key_path),
        )
        expiry = x509.load_pem_x509_certificate(pems[1]).not_valid_after_utc.timestamp()
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

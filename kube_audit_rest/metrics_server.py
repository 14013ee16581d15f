"""The plain-HTTP metrics port, served by a small process beside the gunicorn master.

``/metrics``: every worker's counters summed (multiprocess mode) plus the
process tree's CPU, memory and descriptors. ``/healthz``: the master is alive.
``/readyz``: a TLS handshake with the webhook port on this machine succeeds,
i.e. a worker is accepting and has a certificate loaded. The result is cached
for a second so an eager prober cannot turn it into load on the workers.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kube_audit_rest.metrics import aggregate_registry
from kube_audit_rest.process_metrics import ProcessTreeCollector

_log = structlog.get_logger("kube_audit_rest.metrics_server")
_PROBE_TTL = 1.0
_PROBE_TIMEOUT = 2.0

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    parent_pid = 0

    def service_actions(self) -> None:
        # Orphaned (the master was killed): stop serving stale metrics.
        if self.parent_pid and os.getppid() != self.parent_pid:
            raise SystemExit(0)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics request", line=format % args)


class ReadinessProbe:
    """A cached TLS handshake with the webhook listener."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._address = address
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Only "is a TLS listener answering": the certificate's trust is the
        # API server's business, and its name may not include loopback.
        self._context.check_hostname = False
        self._context.verify_mode = ssl.CERT_NONE
        self._lock = threading.Lock()
        self._checked_at = -_PROBE_TTL
        self._result: str | None = "not checked yet"

    def problem(self) -> str | None:
        """None when ready, else a short reason."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked_at >= _PROBE_TTL:
                self._result = self._check()
                self._checked_at = time.monotonic()
            return self._result

    def _check(self) -> str | None:
        try:
            with (
                socket.create_connection(self._address, timeout=_PROBE_TIMEOUT) as raw,
                self._context.wrap_socket(raw) as tls,
            ):
                tls.do_handshake()
        except OSError as error:
            return f"webhook port is not accepting TLS: {error}"
        return None


class MetricsServer:
    """A small threaded WSGI server on an already bound socket."""

    def __init__(
        self,
        sock: socket.socket,
        multiproc_dir: str,
        master_pid: int,
        probe_address: tuple[str, int],
    ) -> None:
        self._sock = sock
        self._registry = aggregate_registry(multiproc_dir)
        self._registry.register(ProcessTreeCollector(master_pid))
        self._probe = ReadinessProbe(probe_address)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _plain(start_response, "404 Not Found", b"not found\n")
        if method not in ("GET", "HEAD"):
            return _plain(
                start_response,
                "405 Method Not Allowed",
                b"method not allowed\n",
                [("Allow", "GET, HEAD")],
            )
        if path == "/healthz":
            return _plain(start_response, "200 OK", b"ok\n")
        if path == "/readyz":
            problem = self._probe.problem()
            if problem:
                return _plain(start_response, "503 Service Unavailable", problem.encode() + b"\n")
            return _plain(start_response, "200 OK", b"ok\n")
        body = generate_latest(self._registry)
        start_response(
            "200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))]
        )
        return [body]

    def serve_forever(self, parent_pid: int) -> None:
        """Serve until the parent (the gunicorn master) is gone or SIGTERM arrives."""
        server = _ThreadingServer(
            self._sock.getsockname()[:2], _QuietHandler, bind_and_activate=False
        )
        server.socket.close()
        server.socket = self._sock
        server.server_name, server.server_port = "metrics", self._sock.getsockname()[1]
        server.setup_environ()
        server.set_app(self.app)
        server.parent_pid = parent_pid
        server.serve_forever(poll_interval=0.5)


def _plain(
    start_response: StartResponse,
    status: str,
    body: bytes,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]

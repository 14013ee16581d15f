"""gunicorn, embedded: the master, its threaded workers and their lifecycle hooks.

Worker model: gunicorn's ``gthread`` worker. It parks idle kept-alive HTTP/1.1
connections in a selector and hands a connection to a thread only when a
request arrives, so the API server's long-lived connections pay one TLS
handshake each, and idle ones cost a file descriptor, not a thread.

A separate process serves the metrics port and sums the workers' metrics;
workers own the TLS certificate store and the record sink.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import ssl
from typing import Any

import structlog
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import multiprocess

from kube_audit_rest.app import create_app
from kube_audit_rest.config import Settings
from kube_audit_rest.log import GunicornLogger
from kube_audit_rest.metrics import Metrics
from kube_audit_rest.metrics_server import start_metrics_process, stop_metrics_process
from kube_audit_rest.record_pipeline import worker_pipeline
from kube_audit_rest.sink import FileSink, Sink, StdoutSink
from kube_audit_rest.tls import CertificateStore, Timeouts, TlsEvents

_log = structlog.get_logger("kube_audit_rest.server")


class GracefulArbiter(Arbiter):  # type: ignore[misc]
    """SIGINT stops gracefully, like SIGTERM (gunicorn's default is a quick stop)."""

    def handle_int(self) -> None:
        self.handle_term()

    def handle_hup(self) -> None:
        """SIGHUP re-reads the privacy files in each worker (gunicorn's default restarts them)."""
        self.log.info("SIGHUP: reloading the policy and redaction files in every worker")
        for pid in list(self.WORKERS):
            self.kill_worker(pid, signal.SIGHUP)


class WebhookWorker(ThreadWorker):  # type: ignore[misc]
    """gthread; SIGINT graceful too (Ctrl-C reaches the workers); SIGHUP re-reads the policy."""

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)
        signal.signal(signal.SIGHUP, lambda *_: self.app.worker_state.records.reload_soon())


class _WorkerState:
    """What one worker process owns; built in post_fork, closed in worker_exit."""

    def __init__(self, settings: Settings, runtime_dir: str, lock_path: str) -> None:
        self.metrics = Metrics.create()
        timeouts = Timeouts(
            settings.handshake_timeout, settings.read_timeout, settings.write_timeout
        )
        events = TlsEvents(
            handshake_failed=self.metrics.handshake_failures.inc,
            timed_out=lambda phase: self.metrics.connection_timeouts.labels(phase).inc(),
            certificate_loaded=self.metrics.certificate_expiry.set,
            reload_failed=self.metrics.certificate_reload_failures.inc,
        )
        self.certificates = CertificateStore(
            settings.cert_filename, settings.cert_key_filename, timeouts, events, runtime_dir
        )
        self.certificates.watch(settings.cert_reload_interval)
        self.records = worker_pipeline(settings, self.metrics)
        self.sink: Sink
        if settings.audit_to_std_log:
            self.sink = StdoutSink(lock_path)
        else:
            self.sink = FileSink(
                settings.logger_filename,
                settings.max_file_bytes,
                settings.logger_max_backups,
                lock_path,
            )


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """The gunicorn application: configuration from Settings, hooks as methods."""

    def __init__(self, settings: Settings, runtime_dir: str, metrics_socket: socket.socket):
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.multiproc_dir = os.path.join(runtime_dir, "metrics")
        self.lock_path = os.path.join(runtime_dir, "write.lock")
        self.metrics_socket = metrics_socket
        self.metrics_pid = 0
        self.worker_state: _WorkerState | None = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.server_address}]" if ":" in s.server_address else s.server_address
        options: dict[str, Any] = {
            "bind": [f"{host}:{s.server_port}"],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": WebhookWorker,
            "worker_connections": s.max_connections,
            "keepalive": math.ceil(s.idle_timeout),
            "graceful_timeout": math.ceil(s.graceful_timeout),
            # The heartbeat timeout only catches a wedged worker; request
            # deadlines come from the sockets (tls.DeadlineSSLSocket).
            "timeout": 30,
            "backlog": 2048,
            "certfile": s.cert_filename,
            "keyfile": s.cert_key_filename,
            "do_handshake_on_connect": False,
            "ssl_context": self._ssl_context,
            "post_fork": self._post_fork,
            "worker_exit": self._worker_exit,
            "child_exit": self._child_exit,
            "when_ready": self._when_ready,
            "on_exit": self._on_exit,
            "logger_class": GunicornLogger,
            "accesslog": None,
            "loglevel": "debug" if s.verbosity else "info",
            "worker_tmp_dir": self.runtime_dir,
            "control_socket_disable": True,
            "proc_name": "kube-audit-rest",
            "preload_app": False,
            "forwarded_allow_ips": "",
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        state = self.worker_state
        assert state is not None, "the app is loaded in a worker, after post_fork"
        return create_app(
            state.sink, state.metrics, self.settings.max_request_bytes, records=state.records
        )

    def run(self) -> None:
        # Fork the metrics process first, while this process has no threads.
        self.metrics_pid = start_metrics_process(
            self.metrics_socket,
            self.multiproc_dir,
            (_probe_host(self.settings.server_address), self.settings.server_port),
        )
        try:
            GracefulArbiter(self).run()
        finally:
            stop_metrics_process(self.metrics_pid)

    # --- hooks -----------------------------------------------------------------

    def _ssl_context(self, _config: Any, _default_factory: Any) -> ssl.SSLContext:
        state = self.worker_state
        assert state is not None
        return state.certificates.context

    def _post_fork(self, _arbiter: Any, worker: Any) -> None:
        self.worker_state = _WorkerState(self.settings, self.runtime_dir, self.lock_path)
        _log.debug("worker ready", pid=worker.pid)

    def _worker_exit(self, _arbiter: Any, _worker: Any) -> None:
        if self.worker_state is not None:
            self.worker_state.sink.close()

    def _child_exit(self, _arbiter: Any, worker: Any) -> None:
        multiprocess.mark_process_dead(worker.pid, self.multiproc_dir)  # type: ignore[no-untyped-call]

    def _when_ready(self, _arbiter: Any) -> None:
        _log.info(
            "kube-audit-rest ready",
            webhook=f"https://{self.settings.server_address}:{self.settings.server_port}/log-request",
            metrics=f"http://{self.settings.metrics_address}:{self.settings.metrics_port}/metrics",
            workers=self.settings.workers,
            output="stdout" if self.settings.audit_to_std_log else self.settings.logger_filename,
        )

    def _on_exit(self, _arbiter: Any) -> None:
        stop_metrics_process(self.metrics_pid)
        _log.info("kube-audit-rest stopped")


def _probe_host(address: str) -> str:
    """Where the readiness probe connects: loopback when bound to all addresses."""
    if address in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address

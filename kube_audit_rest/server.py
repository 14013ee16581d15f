"""gunicorn, embedded: the master, its event-loop workers and their lifecycle hooks.

Worker model: ``aio_worker.AsyncWorker``, one uvloop event loop per process.
Kept-alive HTTP/1.1 connections cost a file descriptor and a few kilobytes,
so the API server's long-lived connections pay one TLS handshake each.

A separate process serves the metrics port and sums the workers' metrics;
workers own the TLS certificate store and the record sink.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

import structlog
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from kube_audit_rest import balance
from kube_audit_rest.aio_worker import AsyncWorker
from kube_audit_rest.config import Settings
from kube_audit_rest.log import GunicornLogger
from kube_audit_rest.metrics_process import start_metrics_process, stop_metrics_process

if TYPE_CHECKING:
    from kube_audit_rest.worker_state import WorkerState

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


class WebhookServer(BaseApplication):  # type: ignore[misc]
    """The gunicorn application: configuration from Settings, hooks as methods."""

    def __init__(self, settings: Settings, runtime_dir: str, metrics_socket: socket.socket):
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.multiproc_dir = os.path.join(runtime_dir, "metrics")
        self.lock_path = os.path.join(runtime_dir, "write.lock")
        self.share_path = os.path.join(runtime_dir, "connections")
        self.metrics_socket = metrics_socket
        self.metrics_pid = 0
        self.worker_state: WorkerState | None = None
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host = f"[{s.server_address}]" if ":" in s.server_address else s.server_address
        options: dict[str, Any] = {
            "bind": [f"{host}:{s.server_port}"],
            "workers": s.workers,
            "worker_class": AsyncWorker,
            "graceful_timeout": math.ceil(s.graceful_timeout),
            # The heartbeat timeout only catches a wedged worker; request
            # deadlines are the connections' own (http_server.Connection).
            "timeout": 30,
            "backlog": 2048,
            # The worker does the TLS itself; gunicorn only uses these to
            # say https in its "Listening at" line.
            "certfile": s.cert_filename,
            "keyfile": s.cert_key_filename,
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
        return state.worker_context(self.share_path)

    def run(self) -> None:
        balance.create_table(self.share_path)
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

    def _post_fork(self, _arbiter: Any, worker: Any) -> None:
        # Until the worker's loop handles them, a stop signal must stop it: the
        # handlers inherited from the master would only queue the signal in the
        # master's (copied) state, and the master would wait out the whole
        # graceful timeout for a worker that never heard it. Nothing is in
        # flight yet, so ending at once loses nothing.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # Imported after the fork: the master never needs the request path.
        from kube_audit_rest.worker_state import WorkerState

        self.worker_state = WorkerState(self.settings, self.runtime_dir, self.lock_path)
        # After the certificate pair and the sink are loaded: "Booting worker"
        # (gunicorn's) comes before, this says the worker can serve.
        _log.info("worker ready", pid=worker.pid)

    def _worker_exit(self, _arbiter: Any, _worker: Any) -> None:
        if self.worker_state is not None:
            self.worker_state.sink.close()

    def _child_exit(self, _arbiter: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, self.multiproc_dir)  # type: ignore[no-untyped-call]
        balance.release_slot(self.share_path, worker.pid)

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

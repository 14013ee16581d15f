"""What one worker process owns: metrics, certificates, the record sink.

Built in gunicorn's ``post_fork`` hook, in the worker, so that the master
never imports the request path (every module the master imports is resident
in each process it forks, and counts in each one's memory).
"""

from __future__ import annotations

from kube_audit_rest.auth import Authenticator, TokenFile
from kube_audit_rest.config import Settings
from kube_audit_rest.metrics import CounterBatch, Metrics
from kube_audit_rest.record_pipeline import worker_pipeline
from kube_audit_rest.sink import FileSink, Sink, StdoutSink
from kube_audit_rest.tls import CertificateStore, Timeouts, TlsEvents
from kube_audit_rest.webhook import Webhook
from kube_audit_rest.worker_loop import WorkerContext


class WorkerState:
    """What one worker process owns; built in post_fork, closed in worker_exit."""

    def __init__(self, settings: Settings, runtime_dir: str, lock_path: str) -> None:
        self.settings = settings
        self.metrics = Metrics.create()
        self.timeouts = Timeouts(
            settings.handshake_timeout, settings.read_timeout, settings.write_timeout
        )
        self.events = events = TlsEvents(
            handshake_failed=self.metrics.handshake_failures.inc,
            timed_out=lambda phase: self.metrics.connection_timeouts.labels(phase).inc(),
            certificate_loaded=self.metrics.certificate_expiry.set,
            reload_failed=self.metrics.certificate_reload_failures.inc,
        )
        self.certificates = CertificateStore(
            settings.cert_filename,
            settings.cert_key_filename,
            events,
            runtime_dir,
            client_ca=settings.client_ca_file,
        )
        self.certificates.watch(settings.cert_reload_interval)
        # Per-request counters, flushed once per event-loop iteration (worker_loop).
        self.counters = CounterBatch()
        self.records = worker_pipeline(settings, self.metrics, self.counters)
        self.auth: Authenticator | None = None
        if settings.webhook_token_file or settings.client_ca_file:
            token = None
            if settings.webhook_token_file:
                token = TokenFile(
                    settings.webhook_token_file,
                    settings.config_reload_interval,
                    self.metrics.config_reload_failures.inc,
                )
            self.auth = Authenticator(token, bool(settings.client_ca_file))
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

    def worker_context(self, share_path: str) -> WorkerContext:
        """What the worker's event loop serves with."""
        settings = self.settings
        return WorkerContext(
            webhook=Webhook(
                self.sink,
                self.metrics,
                settings.max_request_bytes,
                records=self.records,
                auth=self.auth,
                cluster=settings.cluster_name,
                counters=self.counters,
            ),
            certificates=self.certificates,
            events=self.events,
            timeouts=self.timeouts,
            idle_timeout=settings.idle_timeout,
            max_connections=settings.max_connections,
            share_path=share_path,
        )

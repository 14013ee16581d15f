"""Prometheus metrics of the webhook, summed exactly across worker processes.

The server runs prometheus_client in multiprocess mode: each worker writes its
values to memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` and the master's
``/metrics`` adds them up, so totals are exact whichever worker served a
request. That variable must be set before ``prometheus_client`` is first
imported (``kube_audit_rest.cli`` does this), which is why nothing here is
created at import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

# Latency of a webhook call as the server sees it, from the moment the
# request reached the application to the moment the response was built.
LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class Metrics:
    """The counters a worker updates; create one per process."""

    http_requests: Counter
    valid_requests: Counter
    responses: Counter
    request_duration: Histogram
    write_failures: Counter
    written_bytes: Counter
    rotations: Counter
    certificate_expiry: Gauge
    certificate_reload_failures: Counter
    handshake_failures: Counter
    connection_timeouts: Counter
    dropped_records: Counter
    redacted_records: Counter
    received_bytes: Counter
    config_reload_failures: Counter
    endpoint_responses: Counter
    unauthenticated_requests: Counter
    audit_events: Counter

    @classmethod
    def create(cls) -> Metrics:
        # registry=None: in multiprocess mode values live in files, and the
        # master's MultiProcessCollector is the only thing that reads them.
        return cls(
            http_requests=Counter(
                "kube_audit_rest_http_requests",
                "Total number of requests to kube-audit-rest",
                registry=None,
            ),
            valid_requests=Counter(
                "kube_audit_rest_valid_requests_processed",
                "Total number of valid requests processed",
                registry=None,
            ),
            responses=Counter(
                "kube_audit_rest_responses",
                "Responses to POST /log-request by HTTP status code",
                ["code"],
                registry=None,
            ),
            request_duration=Histogram(
                "kube_audit_rest_request_duration_seconds",
                "Time to validate, record and answer one POST /log-request",
                buckets=LATENCY_BUCKETS,
                registry=None,
            ),
            write_failures=Counter(
                "kube_audit_rest_write_failures",
                "Audit records that could not be written (answered 500)",
                registry=None,
            ),
            written_bytes=Counter(
                "kube_audit_rest_written_bytes",
                "Bytes of audit records written, newlines included",
                registry=None,
            ),
            rotations=Counter(
                "kube_audit_rest_rotations",
                "Times the audit log file was rotated",
                registry=None,
            ),
            certificate_expiry=Gauge(
                "kube_audit_rest_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter) of the serving certificate, as a Unix timestamp",
                multiprocess_mode="livemostrecent",
                registry=None,
            ),
            certificate_reload_failures=Counter(
                "kube_audit_rest_certificate_reload_failures",
                "Changed certificate files that could not be loaded (old pair kept)",
                registry=None,
            ),
            handshake_failures=Counter(
                "kube_audit_rest_tls_handshake_failures",
                "TLS handshakes that failed or timed out",
                registry=None,
            ),
            connection_timeouts=Counter(
                "kube_audit_rest_connection_timeouts",
                "Connections closed because the client was too slow, by phase",
                ["phase"],
                registry=None,
            ),
            dropped_records=Counter(
                "kube_audit_rest_dropped_records",
                "Valid reviews answered 200 without a record, by reason and policy rule",
                ["reason", "rule"],
                registry=None,
            ),
            redacted_records=Counter(
                "kube_audit_rest_redacted_records",
                "Records written with at least one value redacted",
                registry=None,
            ),
            received_bytes=Counter(
                "kube_audit_rest_received_bytes",
                "Bytes of valid AdmissionReview bodies received, as sent",
                registry=None,
            ),
            config_reload_failures=Counter(
                "kube_audit_rest_config_reload_failures",
                "Changed policy, redaction, HMAC key or token files that could not be loaded",
                registry=None,
            ),
            endpoint_responses=Counter(
                "kube_audit_rest_endpoint_responses",
                "Responses of the webhook port by endpoint and HTTP status code",
                ["endpoint", "code"],
                registry=None,
            ),
            unauthenticated_requests=Counter(
                "kube_audit_rest_unauthenticated_requests",
                "Webhook requests refused with 401 (no valid token or client certificate)",
                ["endpoint"],
                registry=None,
            ),
            audit_events=Counter(
                "kube_audit_rest_audit_events",
                "Native audit events written from POST /audit-webhook, by cluster",
                ["cluster"],
                registry=None,
            ),
        )


# Distinct cluster label values one worker reports; later ones count as "other".
MAX_CLUSTER_LABELS = 50
OTHER_CLUSTER = "other"


class ClusterLabels:
    """A bounded set of cluster label values, so a client cannot grow the series without end."""

    def __init__(self, limit: int = MAX_CLUSTER_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def label(self, cluster: str) -> str:
        if cluster in self._seen:
            return cluster
        if len(self._seen) >= self._limit:
            return OTHER_CLUSTER
        self._seen.add(cluster)
        return cluster


def aggregate_registry(multiproc_dir: str) -> CollectorRegistry:
    """A registry that sums every worker's values; served by the master."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    return registry


class CounterBatch:
    """Counter increments gathered in the process, added to the shared files in one go.

    Each ``inc`` of a multiprocess counter takes a lock, checks the pid and
    writes the memory-mapped file; a request touches five counters. Here an
    increment is a dict update, and ``flush`` adds each counter's total once.
    With ``schedule`` set to the event loop's ``call_soon``, the flush runs right
    after the callbacks of the current loop iteration, that is within
    microseconds of the response, and under load once for many requests.
    Without it, every increment is written at once.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, float] = {}
        self._scheduled = False
        self.schedule: Callable[[Callable[[], None]], object] | None = None

    def inc(self, counter: Any, amount: float = 1) -> None:
        """Add *amount* to *counter* (a Counter or a labelled child)."""
        pending = self._pending
        pending[counter] = pending.get(counter, 0) + amount
        if self._scheduled:
            return
        if self.schedule is None:
            self.flush()
        else:
            self._scheduled = True
            self.schedule(self.flush)

    def flush(self) -> None:
        """Write every pending increment to the shared files."""
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for counter, amount in pending.items():
            counter.inc(amount)

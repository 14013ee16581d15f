"""What the webhook port answers: routing, the order of checks, record then allow.

This module knows HTTP only as (method, path, content type, body) in and
(status, body, extra headers) out; the connection handling lives in
``http_server``. The order of checks is the contract: an oversized body is
refused (413) before it is read, then the content type, then the JSON; only a
valid review is written, and the 200 is built only after the write call has
returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from kube_audit_rest import native
from kube_audit_rest.auth import Authenticator
from kube_audit_rest.config import CLUSTER_NAME
from kube_audit_rest.eventlist import InvalidEventList, parse_event_list
from kube_audit_rest.metrics import ClusterLabels, CounterBatch, Metrics
from kube_audit_rest.record_pipeline import RecordPipeline, default_pipeline
from kube_audit_rest.review import (
    InvalidReview,
    StdlibDocument,
    build_response,
    compact,
    parse_json,
    parse_review,
)
from kube_audit_rest.sink import Sink, SinkError

_log = structlog.get_logger("kube_audit_rest.app")

LOG_REQUEST_PATH = b"/log-request"
AUDIT_WEBHOOK_PATH = b"/audit-webhook"
_AUDIT_WEBHOOK_PREFIX = AUDIT_WEBHOOK_PATH + b"/"
LOG_REQUEST_ENDPOINT = "/log-request"
AUDIT_WEBHOOK_ENDPOINT = "/audit-webhook"
JSON = b"application/json"
NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: status, JSON body, and headers beyond the usual ones."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = NO_HEADERS


def error(
    status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = NO_HEADERS
) -> Answer:
    return Answer(status, orjson.dumps({"error": message}), headers)


NOT_FOUND = error(
    404,
    "not found: the webhook paths are /log-request, /audit-webhook and /audit-webhook/<cluster>",
)
METHOD_NOT_ALLOWED = error(405, "method not allowed: use POST", ((b"Allow", b"POST"),))
BAD_CONTENT_TYPE = error(400, "Content-Type must be application/json")
BAD_CLUSTER = error(
    400,
    "invalid cluster in /audit-webhook/<cluster>: 1 to 63 lowercase letters, digits, '-' or '.', "
    "starting and ending with a letter or digit",
)
UNAUTHENTICATED = error(
    401,
    "unauthenticated: send Authorization: Bearer <token> or a client certificate",
    ((b"WWW-Authenticate", b"Bearer"),),
)
# Write failures of a batch: a Retry-After tells the API server's webhook client to retry.
_BATCH_NOT_WRITTEN = error(
    500, "the audit events could not be written; none of them was", ((b"Retry-After", b"1"),)
)


def endpoint_of(path: bytes) -> str:
    """The endpoint label of a routed path."""
    return LOG_REQUEST_ENDPOINT if path == LOG_REQUEST_PATH else AUDIT_WEBHOOK_ENDPOINT


def is_json(content_type: bytes | None) -> bool:
    """``application/json``, any case, with or without parameters such as charset."""
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == JSON


class Webhook:
    """The routes of the webhook port around one record sink and the metrics."""

    def __init__(
        self,
        sink: Sink,
        metrics: Metrics,
        max_request_bytes: int,
        clock: Callable[[], int] = time.time_ns,
        records: RecordPipeline | None = None,
        auth: Authenticator | None = None,
        cluster: str | None = None,
        counters: CounterBatch | None = None,
    ) -> None:
        self.sink = sink
        # None: no authentication (the default); http_server checks this attribute.
        self.auth = auth
        self.cluster = cluster
        self._clusters = ClusterLabels()
        # Redaction and the audit policy: what of a valid review is written.
        self.records = records or default_pipeline()
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self._clock = clock
        self.counters = counters or CounterBatch()
        self._too_large = error(413, f"request body is larger than {max_request_bytes} bytes")
        # Children of labelled metrics, looked up once instead of per request.
        self._by_status = {
            code: (
                metrics.responses.labels(str(code)),
                metrics.endpoint_responses.labels(LOG_REQUEST_ENDPOINT, str(code)),
            )
            for code in (200, 400, 413, 500)
        }

    def route(self, method: bytes, path: bytes) -> Answer | None:
        """An answer for a request that is not a POST to a webhook path, else None."""
        if path != LOG_REQUEST_PATH:
            if path != AUDIT_WEBHOOK_PATH and not path.startswith(_AUDIT_WEBHOOK_PREFIX):
                return NOT_FOUND
            if method != b"POST":
                return METHOD_NOT_ALLOWED
            segment = path[len(_AUDIT_WEBHOOK_PREFIX) :]
            if path != AUDIT_WEBHOOK_PATH and not CLUSTER_NAME.fullmatch(segment.decode("latin-1")):
                self._count_audit(BAD_CLUSTER.status)
                return BAD_CLUSTER
            return None
        if method != b"POST":
            return METHOD_NOT_ALLOWED
        return None

    def authenticate(
        self, path: bytes, authorization: bytes | None, transport: Any
    ) -> Answer | None:
        """None when the request may go on (``self.auth`` is set), else the 401, counted."""
        assert self.auth is not None
        if self.auth.authenticated(authorization, transport):
            return None
        endpoint = endpoint_of(path)
        self.metrics.unauthenticated_requests.labels(endpoint).inc()
        if endpoint == LOG_REQUEST_ENDPOINT:
            self.counters.inc(self.metrics.http_requests)
            self._count(UNAUTHENTICATED.status)
        else:
            self._count_audit(UNAUTHENTICATED.status)
        return UNAUTHENTICATED

    def too_large(self, path: bytes = LOG_REQUEST_PATH) -> Answer:
        """The 413 for a body over the limit; counted like any webhook answer."""
        if path != LOG_REQUEST_PATH:
            self._count_audit(self._too_large.status)
            return self._too_large
        self.counters.inc(self.metrics.http_requests)
        self._count(self._too_large.status)
        return self._too_large

    def handle(self, path: bytes, content_type: bytes | None, body: bytes) -> Answer:
        """The answer to a routed (and authenticated) POST."""
        if path == LOG_REQUEST_PATH:
            return self.log_request(content_type, body)
        return self.audit_webhook(path, content_type, body)

    def log_request(self, content_type: bytes | None, body: bytes) -> Answer:
        """Validate, record and allow one AdmissionReview."""
        started = time.perf_counter()
        received_ns = self._clock()
        self.counters.inc(self.metrics.http_requests)
        answer = self._handle(content_type, body, received_ns)
        self._count(answer.status)
        self.metrics.request_duration.observe(time.perf_counter() - started)
        return answer

    def _count(self, status: int) -> None:
        children = self._by_status.get(status)
        if children is None:
            children = self._by_status[status] = (
                self.metrics.responses.labels(str(status)),
                self.metrics.endpoint_responses.labels(LOG_REQUEST_ENDPOINT, str(status)),
            )
        self.counters.inc(children[0])
        self.counters.inc(children[1])

    def _count_audit(self, status: int) -> None:
        self.metrics.endpoint_responses.labels(AUDIT_WEBHOOK_ENDPOINT, str(status)).inc()

    def _handle(self, content_type: bytes | None, body: bytes, received_ns: int) -> Answer:
        if len(body) > self.max_request_bytes:
            return self._too_large
        if not is_json(content_type):
            return BAD_CONTENT_TYPE
        try:
            review = parse_review(body)
        except InvalidReview as invalid:
            return error(400, str(invalid))
        record = self.records.process(body, review.document, received_ns)
        if record is None:  # dropped by the policy or --drop-dry-run (counted there)
            return Answer(200, build_response(review))
        try:
            result = self.sink.write(record)
        except SinkError as failure:
            self.metrics.write_failures.inc()
            _log.error("audit record not written; answered 500", error=str(failure), uid=review.uid)
            return error(500, "the audit record could not be written")
        counters = self.counters
        counters.inc(self.metrics.valid_requests)
        counters.inc(self.metrics.written_bytes, len(record))
        if result.rotated:
            self.metrics.rotations.inc()
        return Answer(200, build_response(review))

    # --- POST /audit-webhook[/<cluster>] ----------------------------------------------

    def audit_webhook(self, path: bytes, content_type: bytes | None, body: bytes) -> Answer:
        """Validate an EventList, write all its events in one call, or none of them."""
        received_ns = self._clock()
        answer = self._handle_events(path, content_type, body, received_ns)
        self._count_audit(answer.status)
        return answer

    def _handle_events(
        self, path: bytes, content_type: bytes | None, body: bytes, received_ns: int
    ) -> Answer:
        if len(body) > self.max_request_bytes:
            return self._too_large
        if not is_json(content_type):
            return BAD_CONTENT_TYPE
        if not body:
            return error(400, "body is empty")
        try:
            document = parse_json(body)
            compacted = compact(body)
            events = parse_event_list(document, compacted)
        except (InvalidReview, InvalidEventList) as invalid:
            return error(400, str(invalid))
        segment = path[len(_AUDIT_WEBHOOK_PREFIX) :]
        cluster = segment.decode("ascii") if segment else self.cluster
        metrics = self.metrics
        batch = native.render_batch(
            events,
            compacted,
            isinstance(document, StdlibDocument),
            self.records.config,
            cluster,
            received_ns,
            dropped=lambda rule: metrics.dropped_records.labels("policy", rule).inc(),
        )
        if batch.data:
            try:
                result = self.sink.write(batch.data)
            except SinkError as failure:
                metrics.write_failures.inc()
                _log.error(
                    "audit events not written; answered 500",
                    error=str(failure),
                    events=batch.written,
                )
                return _BATCH_NOT_WRITTEN
            metrics.written_bytes.inc(len(batch.data))
            if result.rotated:
                metrics.rotations.inc()
            metrics.audit_events.labels(self._clusters.label(cluster or "")).inc(batch.written)
        if batch.redacted:
            metrics.redacted_records.inc(batch.redacted)
        return Answer(200, orjson.dumps({"written": batch.written, "dropped": batch.dropped}))

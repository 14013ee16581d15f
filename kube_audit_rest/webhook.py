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

import orjson
import structlog

from kube_audit_rest.metrics import CounterBatch, Metrics
from kube_audit_rest.record_pipeline import RecordPipeline, default_pipeline
from kube_audit_rest.review import InvalidReview, build_response, parse_review
from kube_audit_rest.sink import Sink, SinkError

_log = structlog.get_logger("kube_audit_rest.app")

LOG_REQUEST_PATH = b"/log-request"
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


NOT_FOUND = error(404, "not found: the webhook path is /log-request")
METHOD_NOT_ALLOWED = error(405, "method not allowed: use POST", ((b"Allow", b"POST"),))
BAD_CONTENT_TYPE = error(400, "Content-Type must be application/json")


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
        counters: CounterBatch | None = None,
    ) -> None:
        self.sink = sink
        # Redaction and the audit policy: what of a valid review is written.
        self.records = records or default_pipeline()
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self._clock = clock
        self.counters = counters or CounterBatch()
        self._too_large = error(413, f"request body is larger than {max_request_bytes} bytes")
        # Children of labelled metrics, looked up once instead of per request.
        self._by_status = {
            code: metrics.responses.labels(str(code)) for code in (200, 400, 413, 500)
        }

    def route(self, method: bytes, path: bytes) -> Answer | None:
        """An answer for a request that is not ``POST /log-request``, else None."""
        if path != LOG_REQUEST_PATH:
            return NOT_FOUND
        if method != b"POST":
            return METHOD_NOT_ALLOWED
        return None

    def too_large(self) -> Answer:
        """The 413 for a body over the limit; counted like any webhook answer."""
        self.counters.inc(self.metrics.http_requests)
        self._count(self._too_large.status)
        return self._too_large

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
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.metrics.responses.labels(str(status))
        self.counters.inc(child)

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

"""The Flask application: POST /log-request records an AdmissionReview and allows it.

The order of checks is the contract: an oversized body is refused (413) before
it is read, then the content type, then the JSON; only a valid review is
written, and the 200 is built only after the write call has returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import structlog
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from kube_audit_rest.metrics import Metrics
from kube_audit_rest.record_pipeline import RecordPipeline, default_pipeline
from kube_audit_rest.review import InvalidReview, build_response, parse_review
from kube_audit_rest.sink import Sink, SinkError

_log = structlog.get_logger("kube_audit_rest.app")
JSON = "application/json"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": message})
    return Response(body, status=status, mimetype=JSON, headers=headers)


def create_app(
    sink: Sink,
    metrics: Metrics,
    max_request_bytes: int,
    clock: Callable[[], int] = time.time_ns,
    records: RecordPipeline | None = None,
) -> Flask:
    """Build the webhook application around its record sink and metrics."""
    app = Flask("kube_audit_rest")
    records = records or default_pipeline()
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes

    def log_request() -> Response:
        started = time.perf_counter()
        received_ns = clock()
        metrics.http_requests.inc()
        response = _handle(received_ns)
        metrics.responses.labels(str(response.status_code)).inc()
        metrics.request_duration.observe(time.perf_counter() - started)
        return response

    def _handle(received_ns: int) -> Response:
        length = request.content_length
        if length is not None and length > max_request_bytes:
            return _too_large()
        if request.mimetype != JSON:
            return _error(400, "Content-Type must be application/json")
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _too_large()
        try:
            review = parse_review(body)
        except InvalidReview as invalid:
            return _error(400, str(invalid))
        record = records.process(body, review.document, received_ns)
        if record is None:  # dropped by the policy or --drop-dry-run (counted there)
            return Response(build_response(review), status=200, mimetype=JSON)
        try:
            result = sink.write(record)
        except SinkError as failure:
            metrics.write_failures.inc()
            _log.error("audit record not written; answered 500", error=str(failure), uid=review.uid)
            return _error(500, "the audit record could not be written")
        metrics.valid_requests.inc()
        metrics.written_bytes.inc(len(record))
        if result.rotated:
            metrics.rotations.inc()
        return Response(build_response(review), status=200, mimetype=JSON)

    def _too_large() -> Response:
        # gunicorn then drains at most 64 KiB of the unread body and, if more
        # is pending, closes the connection instead of reading it whole.
        return _error(413, f"request body is larger than {max_request_bytes} bytes")

    app.add_url_rule(
        "/log-request",
        "log_request",
        log_request,
        methods=["POST"],
        provide_automatic_options=False,
    )

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # 404 and 405 (and anything else werkzeug raises) as short JSON, keeping
        # headers such as Allow.
        headers = {
            name: value
            for name, value in error.get_headers()
            if name.lower() not in ("content-type", "content-length")
        }
        message = (error.name or "error").lower()
        if error.code == 404:
            message = "not found: the webhook path is /log-request"
        elif error.code == 405:
            message = "method not allowed: use POST"
        return _error(error.code or 500, message, headers)

    return app

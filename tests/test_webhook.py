"""POST /log-request against the running server: answers, records, bad input, metrics."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.support import SHARED_CORPUS, Server, client_context, review

TIMESTAMP = re.compile(
    rb',"requestReceivedTimestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z"}$'
)


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_allows_and_records_a_review(server: Server, api_version: str) -> None:
    body = b'{"kind": "AdmissionReview", "apiVersion": "%s",\n "request": {"uid": "u-<&>"}}' % (
        api_version.encode()
    )
    answer = server.post(body, path="/log-request?timeout=1s")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.body == (
        b'{"apiVersion":"%s","kind":"AdmissionReview","response":{"uid":"u-<&>","allowed":true}}'
        % api_version.encode()
    )
    [line] = server.log_path.read_bytes().splitlines(keepends=True)
    assert line.endswith(b"}\n")
    prefix = b'{"kind":"AdmissionReview","apiVersion":"%s","request":{"uid":"u-<&>"}' % (
        api_version.encode()
    )
    assert line.startswith(prefix)
    assert TIMESTAMP.search(line.rstrip(b"\n"))


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json"]
)
def test_accepts_json_content_types(server: Server, content_type: str) -> None:
    assert server.post(review("ct"), content_type=content_type).status == 200


def test_preserves_escapes_numbers_and_duplicate_keys(server: Server) -> None:
    body = b'{"request": {"uid": "x", "a": "\\u003c\\/b\\u003e", "n": 1.50E+3}, "n": -0, "n": 2}'
    assert server.post(body).status == 200
    line = server.log_path.read_bytes()
    assert line.startswith(
        b'{"request":{"uid":"x","a":"\\u003c\\/b\\u003e","n":1.50E+3},"n":-0,"n":2,'
    )


def test_replaces_an_existing_top_level_timestamp_in_place(server: Server) -> None:
    body = b'{"requestReceivedTimestamp": "forged", "request": {"uid": "t"}}'
    assert server.post(body).status == 200
    line = server.log_path.read_bytes()
    assert re.fullmatch(
        rb'\{"requestReceivedTimestamp":"20[^"]+Z","request":\{"uid":"t"\}\}\n', line
    )


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"request": {"uid": "a"}}', "text/plain", "Content-Type must be application/json"),
        (b'{"request": {"uid": "a"}}', None, "Content-Type must be application/json"),
        (b"", "application/json", "body is empty"),
        (b"{not json", "application/json", "not valid JSON"),
        (b'{"request": {"uid": "a"}, "x": NaN}', "application/json", "not valid JSON"),
        (b'{"request": {"uid": "a"}, "x": Infinity}', "application/json", "not valid JSON"),
        (b'{"request": {"uid": "a"}} {}', "application/json", "not valid JSON"),
        (b'{"request": {"uid": "\xff"}}', "application/json", "UTF-8"),
        (b"[" * 5000 + b"]" * 5000, "application/json", "too deep"),
        (b'[{"request": {"uid": "a"}}]', "application/json", "must be a JSON object"),
        (b'{"request": "a"}', "application/json", "request must be a JSON object"),
        (b'{"request": {}}', "application/json", "request.uid"),
        (b'{"request": {"uid": ""}}', "application/json", "request.uid"),
        (b'{"request": {"uid": 7}}', "application/json", "request.uid"),
    ],
)
def test_rejects_bad_input_with_400_and_writes_nothing(
    server: Server, body: bytes, content_type: str | None, message: str
) -> None:
    answer = server.post(body, content_type=content_type)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert message in answer.json()["error"]
    assert server.log_path.read_bytes() == b""


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/log-request", 405),
        ("PUT", "/log-request", 405),
        ("OPTIONS", "/log-request", 405),
        ("POST", "/other", 404),
        ("GET", "/", 404),
    ],
)
def test_other_methods_and_paths(server: Server, method: str, path: str, status: int) -> None:
    answer = server.post(review("m"), path=path, method=method)
    assert answer.status == status
    assert "error" in answer.json()
    assert server.log_path.read_bytes() == b""


def test_oversized_body_gets_413_without_being_read(start: StartServer, tmp_path: Path) -> None:
    server = start("--workers=1", "--max-request-bytes=1000")
    assert server.post(review("small")).status == 200
    # Announce 50 MB but send only the headers: the answer must come anyway.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with client_context(server.ca_path).wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(
            b"POST /log-request HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{"
        )
        head = b""
        while b'"}' not in head:
            chunk = tls.recv(4096)
            assert chunk, f"connection closed before the answer was complete: {head!r}"
            head += chunk
    assert head.startswith(b"HTTP/1.1 413")
    assert b"larger than 1000 bytes" in head
    assert len(server.log_path.read_bytes().splitlines()) == 1


def test_many_requests_share_one_connection(server: Server) -> None:
    conn = server.connection()
    conn.connect()
    first_socket = conn.sock
    for i in range(200):
        assert server.post(review(f"k{i}"), conn=conn).status == 200
    assert conn.sock is first_socket, "the server closed the kept-alive connection"
    assert len(server.log_path.read_bytes().splitlines()) == 200
    assert server.metrics()["kube_audit_rest_tls_handshake_failures_total"] == 0


def test_metrics_are_exact_totals_across_workers(start: StartServer) -> None:
    server = start("--workers=3")
    valid, invalid, threads = 120, 30, 6

    def send(worker: int) -> None:
        for i in range(valid // threads):
            assert server.post(review(f"w{worker}-{i}")).status == 200
        for _ in range(invalid // threads):
            assert server.post(b"nope").status == 400

    pool = [threading.Thread(target=send, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    metrics = server.metrics()
    written = len(server.log_path.read_bytes())
    assert metrics["kube_audit_rest_http_requests_total"] == valid + invalid
    assert metrics["kube_audit_rest_valid_requests_processed_total"] == valid
    assert metrics['kube_audit_rest_responses_total{code="200"}'] == valid
    assert metrics['kube_audit_rest_responses_total{code="400"}'] == invalid
    assert metrics["kube_audit_rest_request_duration_seconds_count"] == valid + invalid
    assert metrics["kube_audit_rest_written_bytes_total"] == written
    assert metrics["kube_audit_rest_write_failures_total"] == 0
    assert metrics["kube_audit_rest_rotations_total"] == 0
    assert metrics["kube_audit_rest_workers"] == 3
    assert metrics["process_resident_memory_bytes"] > 0
    assert metrics["process_cpu_seconds_total"] > 0
    assert metrics["process_open_fds"] > 0


def test_certificate_expiry_gauge_and_probes(server: Server) -> None:
    metrics = server.metrics()
    with open(server.ca_path.parent / "tls.crt", "rb") as handle:
        from cryptography import x509

        expected = x509.load_pem_x509_certificate(handle.read()).not_valid_after_utc.timestamp()
    assert metrics["kube_audit_rest_certificate_expiry_timestamp_seconds"] == expected
    assert server.metrics_text("/healthz") == (200, "ok\n")
    assert server.metrics_text("/readyz") == (200, "ok\n")
    assert server.metrics_text("/nope")[0] == 404


def test_tls_below_1_2_is_refused_and_counted(server: Server) -> None:
    context = client_context(server.ca_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # asking for TLS 1.1 on purpose
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname="localhost")
    # The server saw the TLS 1.1 hello and refused it (not just our client giving up).
    deadline = time.monotonic() + 5
    while server.metrics()["kube_audit_rest_tls_handshake_failures_total"] < 1:
        assert time.monotonic() < deadline, "the refused handshake was not counted"
        time.sleep(0.1)
    failures = [json.loads(line) for line in server.stderr().splitlines() if "handshake" in line]
    assert failures and failures[0]["event"] == "TLS handshake failed"
    assert failures[0]["level"] == "warning"


@pytest.mark.skipif(
    not SHARED_CORPUS.is_dir(), reason=f"the shared corpus is not at {SHARED_CORPUS}"
)
def test_corpus_lines_equal_the_go_original_output(server: Server) -> None:
    requests = (SHARED_CORPUS / "kube-audit-rest.log").read_bytes().splitlines()
    expected = (SHARED_CORPUS / "kube-audit-rest-sorted.log").read_bytes().splitlines()
    assert len(requests) == 59
    conn = server.connection()
    for body in requests:
        assert server.post(body, conn=conn).status == 200
    lines = server.log_path.read_bytes().splitlines()
    stripped = [TIMESTAMP.sub(b"}", line) for line in lines]
    assert all(TIMESTAMP.search(line) for line in lines)
    got = sorted(stripped, key=lambda line: json.loads(line)["request"]["uid"])
    want = sorted(expected, key=lambda line: json.loads(line)["request"]["uid"])
    assert got == want

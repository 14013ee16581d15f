"""Authentication end to end: bearer token file and client certificates, real TLS."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.support import Server, client_context, make_pair, review

EVENTS = json.dumps(
    {
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "items": [
            {"level": "Metadata", "auditID": "e1", "stage": "ResponseComplete", "verb": "get"}
        ],
    }
).encode()


def post(
    server: Server,
    body: bytes,
    path: str,
    headers: dict[str, str],
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection(
        "localhost", server.port, context=context or client_context(server.ca_path), timeout=10
    )
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
        )
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def test_token_missing_wrong_right_and_changed(start: StartServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    server = start("--workers=1", f"--webhook-token-file={token}", "--config-reload-interval=0.2")
    for path, body in (("/log-request", review("a")), ("/audit-webhook", EVENTS)):
        status, headers, data = post(server, body, path, {})
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert "unauthenticated" in json.loads(data)["error"]
        assert post(server, body, path, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(server, body, path, {"Authorization": "Basic czNjcmV0LXRva2Vu"})[0] == 401
        assert post(server, body, path, {"Authorization": "Bearer s3cret-token"})[0] == 200
    assert [r.get("auditID") or r["request"]["uid"] for r in server.records()] == ["a", "e1"]
    token.write_text("new-token")
    os.utime(token, ns=(time.time_ns(), time.time_ns() + 10**9))
    deadline = time.monotonic() + 10
    while (
        post(server, review("b"), "/log-request", {"Authorization": "Bearer new-token"})[0] != 200
    ):
        assert time.monotonic() < deadline, "the new token was not picked up"
        time.sleep(0.2)
    assert (
        post(server, review("c"), "/log-request", {"Authorization": "Bearer s3cret-token"})[0]
        == 401
    )
    metrics = server.metrics()
    assert metrics['kube_audit_rest_unauthenticated_requests_total{endpoint="/audit-webhook"}'] == 3
    assert metrics['kube_audit_rest_unauthenticated_requests_total{endpoint="/log-request"}'] >= 4
    assert [r.get("auditID") or r["request"]["uid"] for r in server.records()] == ["a", "e1", "b"]


def test_without_auth_flags_nothing_is_required(server: Server) -> None:
    assert server.post(review("open")).status == 200


def test_empty_token_file_stops_the_start(start: StartServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    server = start(f"--webhook-token-file={token}", wait=False)
    assert server.process.wait(timeout=30) == 2
    assert "token file is empty" in server.stderr()


def test_client_certificates(start: StartServer, tmp_path: Path) -> None:
    clients = make_pair(tmp_path / "clients")
    other = make_pair(tmp_path / "other")
    server = start("--workers=1", f"--client-ca-file={clients.ca_path}")
    assert post(server, review("nocert"), "/log-request", {})[0] == 401
    good = client_context(server.ca_path)
    good.load_cert_chain(clients.cert_path, clients.key_path)
    assert post(server, review("good"), "/log-request", {}, good)[0] == 200
    assert post(server, EVENTS, "/audit-webhook/c1", {}, good)[0] == 200
    wrong = client_context(server.ca_path)
    wrong.load_cert_chain(other.cert_path, other.key_path)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        post(server, review("wrong"), "/log-request", {}, wrong)
    ids = [r.get("auditID") or r["request"]["uid"] for r in server.records()]
    assert ids == ["good", "e1"]

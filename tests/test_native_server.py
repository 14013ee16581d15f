"""POST /audit-webhook end to end: the CLI, real TLS, the real log file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.conftest import StartServer
from tests.support import CLI

EVENTLIST = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}}


def event(audit_id: str, padding: int = 0) -> dict[str, Any]:
    return {
        "level": "Request",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/configmaps",
        "verb": "create",
        "user": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": "configmaps", "namespace": "default", "apiVersion": "v1"},
        "requestObject": {"kind": "ConfigMap", "data": {"pad": "x" * padding}},
        "requestReceivedTimestamp": "2025-12-02T04:33:20.123456Z",
        "stageTimestamp": "2025-12-02T04:33:20.223456Z",
    }


def batch(prefix: str, count: int, padding: int = 0) -> bytes:
    items = [event(f"{prefix}-{n}", padding) for n in range(count)]
    return json.dumps({**EVENTLIST, "items": items}, indent=1).encode()


def test_batches_of_1_100_and_1000_events_become_one_line_each(start: StartServer) -> None:
    server = start("--workers=2", "--cluster-name=default-cluster")
    expected: list[str] = []
    for count in (1, 100, 1000):
        answer = server.post(batch(f"b{count}", count), path="/audit-webhook/prod-eu-1")
        assert answer.status == 200, answer.body
        assert answer.json() == {"written": count, "dropped": 0}
        expected += [f"b{count}-{n}" for n in range(count)]
    assert server.post(batch("nocluster", 2), path="/audit-webhook").status == 200
    records = server.records()
    assert [r["auditID"] for r in records] == [*expected, "nocluster-0", "nocluster-1"]
    assert {r["cluster"] for r in records[:-2]} == {"prod-eu-1"}
    assert {r["cluster"] for r in records[-2:]} == {"default-cluster"}
    # The event's own bytes, compacted, with the cluster appended last.
    first = server.log_path.read_bytes().splitlines()[0]
    own = json.dumps(event("b1-0"), separators=(",", ":")).encode()
    assert first == own[:-1] + b',"cluster":"prod-eu-1"}'
    metrics = server.metrics()
    assert metrics['kube_audit_rest_audit_events_total{cluster="prod-eu-1"}'] == 1101
    assert metrics['kube_audit_rest_audit_events_total{cluster="default-cluster"}'] == 2
    key = 'kube_audit_rest_endpoint_responses_total{code="200",endpoint="/audit-webhook"}'
    assert metrics[key] == 4


def test_bad_batches_get_4xx_and_write_nothing(start: StartServer) -> None:
    server = start("--workers=1", "--max-request-bytes=200000")
    over = batch("big", 400, padding=600)
    assert len(over) > 200000
    answer = server.post(over, path="/audit-webhook")
    assert answer.status == 413
    bad = [
        ("/audit-webhook/Prod_1", batch("a", 1), 400, "invalid cluster"),
        ("/audit-webhook/", batch("a", 1), 400, "invalid cluster"),
        ("/audit-webhook/" + "a" * 64, batch("a", 1), 400, "invalid cluster"),
        (
            "/audit-webhook",
            b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{}]}',
            400,
            "items[0]: level",
        ),
        ("/audit-webhook", b"[1,", 400, "not valid JSON"),
    ]
    for path, body, status, message in bad:
        answer = server.post(body, path=path)
        assert answer.status == status, (path, answer.body)
        assert message in answer.json()["error"]
    assert server.post(batch("a", 1), path="/audit-webhook", method="GET").status == 405
    answer = server.post(batch("a", 1), path="/audit-webhooks")
    assert answer.status == 404 and "/audit-webhook/<cluster>" in answer.json()["error"]
    assert not server.log_path.exists() or server.log_path.read_bytes() == b""


LIMITED = (
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    "os.execv({cli!r}, [{cli!r}, *sys.argv[1:]])\n"
)


def test_a_batch_that_fails_half_way_leaves_nothing_in_the_file(
    start: StartServer, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes the write fail part way (a short write, then EFBIG)."""
    limit = 3 * 1024 * 1024
    script = LIMITED.format(limit=limit, cli=CLI)
    server = start("--workers=1", command=(sys.executable, "-c", script))
    assert server.post(batch("first", 200, padding=10000), path="/audit-webhook").status == 200
    size = server.log_path.stat().st_size
    assert 1024 * 1024 < size < limit
    answer = server.post(batch("second", 150, padding=10000), path="/audit-webhook")
    assert answer.status == 500
    assert answer.headers.get("retry-after") == "1"
    data = server.log_path.read_bytes()
    assert len(data) == size and b"second-" not in data
    assert server.post(batch("third", 1), path="/audit-webhook").status == 200
    ids = [r["auditID"] for r in server.records()]
    assert ids == [*(f"first-{n}" for n in range(200)), "third-0"]
    assert server.metrics()["kube_audit_rest_write_failures_total"] == 1


def test_log_request_as_audit_events_with_cluster(start: StartServer) -> None:
    server = start("--workers=1", "--output-format=audit-event", "--cluster-name=c1")
    body = json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "operation": "CONNECT",
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "subResource": "exec",
                "name": "web",
                "namespace": "default",
                "userInfo": {"username": "alice"},
                "object": {"kind": "PodExecOptions", "command": ["sh"]},
            },
        }
    ).encode()
    assert server.post(body).status == 200
    (record,) = server.records()
    assert record["kind"] == "Event" and record["auditID"] == "u1"
    assert record["verb"] == "create" and record["objectRef"]["subresource"] == "exec"
    assert record["cluster"] == "c1"

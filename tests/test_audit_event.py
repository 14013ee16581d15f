"""AdmissionReview -> audit.k8s.io/v1 Event: the mapping table, and the upstream schema.

The schema below is written by hand from kubernetes'
staging/src/k8s.io/apiserver/pkg/apis/audit/v1/types.go (Event, ObjectReference,
authentication/v1 UserInfo): JSON field names and their types; a field that
is not there is an error, as in a strict decoder.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from kube_audit_rest.policy import Level
from kube_audit_rest.privacy_config import Sources
from kube_audit_rest.record_pipeline import FixedConfig, Output, RecordPipeline

MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
STRINGS = "string"
_USER = {"username": str, "uid": str, "groups": list, "extra": dict}
_OBJECT_REF = {
    k: str
    for k in (
        "resource",
        "namespace",
        "name",
        "uid",
        "apiGroup",
        "apiVersion",
        "resourceVersion",
        "subresource",
    )
}
_EVENT: dict[str, Any] = {
    "kind": str,
    "apiVersion": str,
    "level": str,
    "auditID": str,
    "stage": str,
    "requestURI": str,
    "verb": str,
    "user": dict,
    "impersonatedUser": dict,
    "sourceIPs": list,
    "userAgent": str,
    "objectRef": dict,
    "responseStatus": dict,
    "requestObject": dict,
    "responseObject": dict,
    "requestReceivedTimestamp": str,
    "stageTimestamp": str,
    "annotations": dict,
}
_REQUIRED = ("level", "auditID", "stage", "requestURI", "verb", "user")


def check_event_schema(event: dict[str, Any]) -> None:
    """Raise AssertionError unless *event* decodes as an upstream audit/v1 Event (+ cluster)."""
    for key, value in event.items():
        if key == "cluster":
            assert isinstance(value, str)
            continue
        assert key in _EVENT, f"unknown Event field {key}"
        assert isinstance(value, _EVENT[key]), f"{key}: {type(value).__name__}"
    for key in _REQUIRED:
        assert key in event, f"missing {key}"
    assert event["level"] in {level.value for level in Level}
    assert event["stage"] in ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")
    for key, value in event["user"].items():
        assert isinstance(value, _USER[key]), key
    assert all(isinstance(g, str) for g in event["user"].get("groups", []))
    for values in event["user"].get("extra", {}).values():
        assert isinstance(values, list) and all(isinstance(v, str) for v in values)
    for key, value in event.get("objectRef", {}).items():
        assert isinstance(value, _OBJECT_REF[key]), key
    for key in ("requestReceivedTimestamp", "stageTimestamp"):
        assert MICRO_TIME.fullmatch(event[key]), event[key]
    assert all(isinstance(v, str) for v in event.get("annotations", {}).values())


USER = {
    "username": "alice",
    "uid": "u-1",
    "groups": ["dev", "system:authenticated"],
    "extra": {"scopes": ["a"]},
}


def review(operation: str, resource: str, sub: str = "", group: str = "", **extra: Any) -> bytes:
    request: dict[str, Any] = {
        "uid": f"uid-{operation}-{resource}-{sub}",
        "kind": {"group": group, "version": "v1", "kind": "X"},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "requestKind": {"group": group, "version": "v1", "kind": "X"},
        "requestResource": {"group": group, "version": "v1", "resource": resource},
        "name": "web",
        "namespace": "default",
        "operation": operation,
        "userInfo": USER,
        "dryRun": False,
        **extra,
    }
    if sub:
        request["subResource"] = request["requestSubResource"] = sub
    return json.dumps(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    ).encode()


def convert(body: bytes, cluster: str | None = None) -> dict[str, Any]:
    pipeline = RecordPipeline(FixedConfig(Sources().load()), output=Output(cluster, True))
    line = pipeline.process(body, json.loads(body), 1_764_650_000_123_456_789)
    assert line is not None and line.endswith(b"\n") and line.count(b"\n") == 1
    event: dict[str, Any] = json.loads(line)
    check_event_schema(event)
    return event


OBJ = {"kind": "Pod", "metadata": {"name": "web", "uid": "obj-uid"}}
PATCH = {"kind": "PatchOptions", "apiVersion": "meta.k8s.io/v1"}
DELETE = {
    "kind": "DeleteOptions",
    "apiVersion": "meta.k8s.io/v1",
    "propagationPolicy": "Background",
}

CASES = [
    # operation, resource, sub, group, extra, verb, requestURI, requestObject
    ("CREATE", "pods", "", "", {"object": OBJ}, "create", "/api/v1/namespaces/default/pods", OBJ),
    (
        "CREATE",
        "deployments",
        "",
        "apps",
        {"object": OBJ, "options": PATCH},
        "patch",
        "/apis/apps/v1/namespaces/default/deployments/web",
        OBJ,
    ),
    (
        "UPDATE",
        "deployments",
        "",
        "apps",
        {"object": OBJ, "oldObject": OBJ},
        "update",
        "/apis/apps/v1/namespaces/default/deployments/web",
        OBJ,
    ),
    (
        "UPDATE",
        "deployments",
        "",
        "apps",
        {"object": OBJ, "options": PATCH},
        "patch",
        "/apis/apps/v1/namespaces/default/deployments/web",
        OBJ,
    ),
    (
        "DELETE",
        "pods",
        "",
        "",
        {"oldObject": OBJ, "options": DELETE},
        "delete",
        "/api/v1/namespaces/default/pods/web",
        DELETE,
    ),
    (
        "CONNECT",
        "pods",
        "exec",
        "",
        {"object": {"kind": "PodExecOptions", "command": ["sh"]}},
        "create",
        "/api/v1/namespaces/default/pods/web/exec",
        {"kind": "PodExecOptions", "command": ["sh"]},
    ),
    (
        "CONNECT",
        "pods",
        "attach",
        "",
        {"object": {"kind": "PodAttachOptions"}},
        "create",
        "/api/v1/namespaces/default/pods/web/attach",
        {"kind": "PodAttachOptions"},
    ),
    (
        "CONNECT",
        "pods",
        "portforward",
        "",
        {"object": {"kind": "PodPortForwardOptions"}},
        "create",
        "/api/v1/namespaces/default/pods/web/portforward",
        {"kind": "PodPortForwardOptions"},
    ),
    (
        "UPDATE",
        "deployments",
        "scale",
        "apps",
        {"object": {"kind": "Scale"}},
        "update",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        {"kind": "Scale"},
    ),
    (
        "UPDATE",
        "pods",
        "status",
        "",
        {"object": OBJ, "options": PATCH},
        "patch",
        "/api/v1/namespaces/default/pods/web/status",
        OBJ,
    ),
    (
        "CREATE",
        "pods",
        "eviction",
        "",
        {"object": {"kind": "Eviction"}},
        "create",
        "/api/v1/namespaces/default/pods/web/eviction",
        {"kind": "Eviction"},
    ),
    (
        "CREATE",
        "pods",
        "binding",
        "",
        {"object": {"kind": "Binding"}},
        "create",
        "/api/v1/namespaces/default/pods/web/binding",
        {"kind": "Binding"},
    ),
    (
        "CREATE",
        "serviceaccounts",
        "token",
        "",
        {"object": {"kind": "TokenRequest"}},
        "create",
        "/api/v1/namespaces/default/serviceaccounts/web/token",
        {"kind": "TokenRequest"},
    ),
]


@pytest.mark.parametrize(
    ("operation", "resource", "sub", "group", "extra", "verb", "uri", "request_object"), CASES
)
def test_conversion_table(
    operation: str,
    resource: str,
    sub: str,
    group: str,
    extra: dict[str, Any],
    verb: str,
    uri: str,
    request_object: dict[str, Any],
) -> None:
    event = convert(review(operation, resource, sub, group, **extra))
    assert event["kind"] == "Event" and event["apiVersion"] == "audit.k8s.io/v1"
    assert event["auditID"] == f"uid-{operation}-{resource}-{sub}"
    assert event["stage"] == "ResponseComplete" and event["level"] == "RequestResponse"
    assert event["verb"] == verb
    assert event["requestURI"] == uri
    assert event["user"] == USER
    ref = {"resource": resource, "namespace": "default", "name": "web", "apiVersion": "v1"}
    if group:
        ref["apiGroup"] = group
    if sub:
        ref["subresource"] = sub
    source = extra.get("oldObject") if operation == "DELETE" else extra.get("object")
    if source and "uid" in source.get("metadata", {}):
        ref["uid"] = "obj-uid"
    assert event["objectRef"] == ref
    assert event["requestObject"] == request_object
    assert event["requestReceivedTimestamp"] == "2025-12-02T04:33:20.123456Z"
    assert event["annotations"] == {
        "kube-audit-rest/source": "admission-webhook",
        "kube-audit-rest/operation": operation,
        "kube-audit-rest/dry-run": "false",
    }
    for absent in ("sourceIPs", "userAgent", "responseObject", "responseStatus", "oldObject"):
        assert absent not in event


def test_cluster_secret_redaction_and_metadata_level() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dmFsdWU="}}
    event = convert(review("CREATE", "secrets", object=secret, dryRun=True), cluster="prod")
    assert event["requestObject"]["data"] == {"k": "<redacted>"}
    assert event["annotations"]["kube-audit-rest/dry-run"] == "true"
    assert list(event)[-1] == "cluster" and event["cluster"] == "prod"
    # A cluster-scoped object's URI has no namespaces/ part.
    body = json.loads(review("UPDATE", "namespaces", object=OBJ))
    body["request"]["namespace"] = ""
    event = convert(json.dumps(body).encode())
    assert event["requestURI"] == "/api/v1/namespaces/web"


def test_schema_check_rejects_wrong_shapes() -> None:
    event = convert(review("CREATE", "pods", object=OBJ))
    with pytest.raises(AssertionError):
        check_event_schema({**event, "sourceIP": ["1.2.3.4"]})
    with pytest.raises(AssertionError):
        check_event_schema({**event, "stageTimestamp": "2025-12-02T04:33:20Z"})
    with pytest.raises(AssertionError):
        check_event_schema({**event, "objectRef": {"resource": 3}})


def test_cluster_name_goes_just_before_the_timestamp_in_admission_lines() -> None:
    ns = 1_764_650_000_123_456_789
    stamp = b'"requestReceivedTimestamp":"2025-12-02T04:33:20.123456789Z"}\n'
    plain = RecordPipeline(FixedConfig(Sources().load()))
    clustered = RecordPipeline(FixedConfig(Sources().load()), output=Output("prod", False))
    body = b'{"request": {"uid": "a", "x": 1.0e0}}'
    assert plain.process(body, json.loads(body), ns) == b'{"request":{"uid":"a","x":1.0e0},' + stamp
    assert clustered.process(body, json.loads(body), ns) == (
        b'{"request":{"uid":"a","x":1.0e0},"cluster":"prod",' + stamp
    )
    # A body with its own timestamp or cluster is re-encoded: ours replace them, timestamp last.
    body = b'{"requestReceivedTimestamp":"x","cluster":"other","request":{"uid":"a"}}'
    assert clustered.process(body, json.loads(body), ns) == (
        b'{"request":{"uid":"a"},"cluster":"prod",' + stamp
    )

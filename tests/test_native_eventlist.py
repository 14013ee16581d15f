"""The EventList scanner and the native event lines, without a server (pure functions)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_audit_rest.eventlist import InvalidEventList, item_spans, parse_event_list
from kube_audit_rest.native import render_batch
from kube_audit_rest.policy import parse_policy
from kube_audit_rest.privacy_config import PrivacyConfig
from kube_audit_rest.redaction import build_redactor
from kube_audit_rest.review import compact, parse_json

NS = 1_764_650_000_123_456_789
STAMP = "2025-12-02T04:33:20.123456789Z"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=6), values, max_size=5)


def _spaced(document: Any, indent: int | None, ascii_only: bool) -> bytes:
    return json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(objects, max_size=6),
    extra=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "items"), values, max_size=3),
    items_first=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    ascii_only=st.booleans(),
)
def test_item_spans_agree_with_orjson(
    items: list[dict[str, Any]],
    extra: dict[str, Any],
    items_first: bool,
    indent: int | None,
    ascii_only: bool,
) -> None:
    document = {"items": items, **extra} if items_first else {**extra, "items": items}
    compacted = compact(_spaced(document, indent, ascii_only))
    spans = item_spans(compacted)
    assert spans is not None
    assert [orjson.loads(compacted[a:b]) for a, b in spans] == orjson.loads(compacted)["items"]


def test_item_spans_take_the_last_duplicate_items_and_ignore_nested_ones() -> None:
    body = b'{"items":[{"a":1}],"x":{"items":[{"no":2}]},"items":[{"b":"],}["},{"c":[1,{}]}]}'
    spans = item_spans(body)
    assert spans is not None
    assert [body[a:b] for a, b in spans] == [b'{"b":"],}["}', b'{"c":[1,{}]}']
    assert item_spans(b'{"items":3}') is None
    assert item_spans(b'{"items":[]}') == []


def event(audit_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "level": "RequestResponse",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/configmaps",
        "verb": "create",
        "user": {"username": "alice", "groups": ["dev"]},
        "objectRef": {"resource": "configmaps", "namespace": "default", "apiVersion": "v1"},
        **extra,
    }


def event_list(*items: Any) -> dict[str, Any]:
    return {
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "metadata": {},
        "items": list(items),
    }


def config(policy: dict[str, Any] | None = None) -> PrivacyConfig:
    parsed = parse_policy("policy.yaml", policy) if policy else None
    return PrivacyConfig(parsed, build_redactor(True, {}, None), False)


def lines(body: bytes, cfg: PrivacyConfig | None = None, cluster: str | None = None) -> list[bytes]:
    compacted = compact(body)
    batch = render_batch(
        parse_event_list(parse_json(body), compacted),
        compacted,
        False,
        cfg or config(),
        cluster,
        NS,
    )
    return batch.data.splitlines()


def test_unchanged_events_keep_their_bytes_with_cluster_then_timestamp_appended() -> None:
    body = (
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[ '
        b'{"level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"get","n":1.0e0,'
        b'"s":"\\u00e9"},\n {"level":"Metadata","auditID":"b","stage":"ResponseComplete",'
        b'"verb":"get","requestReceivedTimestamp":"2020-01-01T00:00:00.000001Z"}]}'
    )
    assert lines(body, cluster="prod-1") == [
        b'{"level":"Metadata","auditID":"a","stage":"ResponseComplete","verb":"get","n":1.0e0,'
        b'"s":"\\u00e9","cluster":"prod-1","requestReceivedTimestamp":"' + STAMP.encode() + b'"}',
        b'{"level":"Metadata","auditID":"b","stage":"ResponseComplete","verb":"get",'
        b'"requestReceivedTimestamp":"2020-01-01T00:00:00.000001Z","cluster":"prod-1"}',
    ]
    assert lines(body)[1].endswith(b'"requestReceivedTimestamp":"2020-01-01T00:00:00.000001Z"}')


def test_policy_only_lowers_the_level() -> None:
    items = [
        event("rr", requestObject={"kind": "ConfigMap"}, responseObject={"kind": "ConfigMap"}),
        event("meta", level="Metadata"),
        event("none", objectRef={"resource": "pods", "namespace": "kube-system"}),
    ]
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "rules": [
            {"level": "None", "namespaces": ["kube-system"]},
            {"level": "Request", "resources": [{"group": "", "resources": ["configmaps"]}]},
        ],
    }
    written = [json.loads(line) for line in lines(orjson.dumps(event_list(*items)), config(policy))]
    assert [e["auditID"] for e in written] == ["rr", "meta"]
    assert written[0]["level"] == "Request"
    assert "requestObject" in written[0] and "responseObject" not in written[0]
    assert written[1]["level"] == "Metadata"  # never raised to Request


def test_metadata_policy_drops_both_objects_and_non_resource_rules_match_uris() -> None:
    items = [
        event("a", requestObject={"x": 1}, responseObject={"y": 2}),
        {
            "level": "Metadata",
            "auditID": "h",
            "stage": "ResponseComplete",
            "verb": "get",
            "requestURI": "/healthz?verbose",
        },
    ]
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "rules": [
            {"level": "None", "nonResourceURLs": ["/healthz*"]},
            {"level": "Metadata"},
        ],
    }
    written = [json.loads(line) for line in lines(orjson.dumps(event_list(*items)), config(policy))]
    assert [e["auditID"] for e in written] == ["a"]
    assert "requestObject" not in written[0] and "responseObject" not in written[0]


def test_secrets_are_redacted_in_request_response_and_list_items() -> None:
    secret = {"kind": "Secret", "data": {"password": "c2VjcmV0"}}
    items = [
        event(
            "s",
            objectRef={"resource": "secrets", "namespace": "default"},
            requestObject=secret,
            responseObject={"kind": "SecretList", "items": [secret, secret]},
        )
    ]
    body = orjson.dumps(event_list(*items))
    (line,) = lines(body)
    assert b"c2VjcmV0" not in line
    written = json.loads(line)
    assert written["requestObject"]["data"] == {"password": "<redacted>"}
    assert written["responseObject"]["items"][1]["data"] == {"password": "<redacted>"}
    assert written["requestReceivedTimestamp"] == STAMP


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "body must be a JSON object"),
        ({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "items": []}, "kind must be EventList"),
        ({"kind": "EventList", "apiVersion": "audit.k8s.io/v1beta1", "items": []}, "apiVersion"),
        ({"kind": "EventList", "apiVersion": "audit.k8s.io/v1"}, "items must be a JSON array"),
        (event_list(event("a"), 3), "items[1]: must be a JSON object"),
        (event_list(event("a", auditID="")), "items[0]: auditID"),
        (event_list(event("a", level="Everything")), "items[0]: level"),
        (event_list(event("a", stage="Done")), "items[0]: stage"),
        (event_list(event("a", verb=None)), "items[0]: verb"),
        (event_list(event("a", requestReceivedTimestamp=5)), "requestReceivedTimestamp"),
    ],
)
def test_invalid_event_lists_say_why(document: Any, message: str) -> None:
    body = orjson.dumps(document)
    with pytest.raises(InvalidEventList, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_event_list(parse_json(body), compact(body))

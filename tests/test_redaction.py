"""Redaction and the record pipeline: every redacted path, markers, HMAC, policy levels, bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from kube_audit_rest.config_files import ConfigFileError
from kube_audit_rest.policy import parse_policy
from kube_audit_rest.privacy_config import PrivacyConfig, Sources
from kube_audit_rest.record_pipeline import FixedConfig, PipelineEvents, RecordPipeline
from kube_audit_rest.redaction import (
    LAST_APPLIED,
    WILDCARD,
    build_redactor,
    load_rules,
    parse_path,
)
from kube_audit_rest.review import parse_review, render_record

NS = 1_700_000_000_123_456_789
STAMP = "2023-11-14T22:13:20.123456789Z"
KEY = b"test-key\n"
SECRET_VALUES = ("c3VwZXJzZWNyZXQ=", "aHVudGVyMg==", "plain-text-pw", "b2xkLXZhbHVl", "applied-pw")


def secret_review(operation: str = "UPDATE", **extra: Any) -> dict[str, Any]:
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "prod"},
        "data": {"password": SECRET_VALUES[0]},
        "stringData": {"token": SECRET_VALUES[4]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "s-1",
            "kind": {"group": "", "version": "v1", "kind": "Secret"},
            "resource": {"group": "", "version": "v1", "resource": "secrets"},
            "namespace": "prod",
            "name": "db",
            "operation": operation,
            "userInfo": {"username": "alice", "groups": ["devs"]},
            "object": {
                "kind": "Secret",
                "metadata": {
                    "name": "db",
                    "annotations": {LAST_APPLIED: json.dumps(applied) + "\n", "team": "x"},
                    "managedFields": [{"manager": "kubectl"}],
                },
                "data": {"password": SECRET_VALUES[0], "user": SECRET_VALUES[1]},
                "stringData": {"extra": SECRET_VALUES[2]},
                "type": "Opaque",
            },
            "oldObject": {
                "kind": "Secret",
                "metadata": {"name": "db"},
                "data": {"password": SECRET_VALUES[3]},
            },
            **extra,
        },
    }


class Counts:
    def __init__(self) -> None:
        self.received = 0
        self.dropped: list[tuple[str, str]] = []
        self.redacted = 0

    def events(self) -> PipelineEvents:
        def received(size: int) -> None:
            self.received += size

        def redacted() -> None:
            self.redacted += 1

        return PipelineEvents(
            received=received,
            dropped=lambda reason, rule: self.dropped.append((reason, rule)),
            redacted=redacted,
        )


def pipeline(
    policy: dict[str, Any] | None = None,
    key: bytes | None = None,
    secrets: bool = True,
    custom: dict[tuple[str, str], Any] | None = None,
    drop_dry_run: bool = False,
    counts: Counts | None = None,
) -> RecordPipeline:
    parsed = None
    if policy is not None:
        parsed = parse_policy(
            "p.yaml", {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", **policy}
        )
    config = PrivacyConfig(parsed, build_redactor(secrets, custom or {}, key), drop_dry_run)
    return RecordPipeline(FixedConfig(config), counts.events() if counts else None)


def run(p: RecordPipeline, document: dict[str, Any] | bytes) -> bytes | None:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return p.process(body, parse_review(body).document, NS)


def mac(value: str, key: bytes = KEY) -> str:
    return (
        "<redacted hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest() + ">"
    )


# --------------------------------------------------------------------------- Secrets


def test_secret_values_redacted_everywhere_keys_kept() -> None:
    counts = Counts()
    line = run(pipeline(counts=counts), secret_review())
    assert line is not None and line.endswith(b"}\n")
    for value in SECRET_VALUES:
        assert value.encode() not in line
    record = json.loads(line)
    obj, old = record["request"]["object"], record["request"]["oldObject"]
    assert obj["data"] == {"password": "<redacted>", "user": "<redacted>"}
    assert obj["stringData"] == {"extra": "<redacted>"}
    assert old["data"] == {"password": "<redacted>"}
    applied = json.loads(obj["metadata"]["annotations"][LAST_APPLIED])
    assert applied["data"] == {"password": "<redacted>"}
    assert applied["stringData"] == {"token": "<redacted>"}
    assert applied["metadata"] == {"name": "db", "namespace": "prod"}
    assert obj["metadata"]["annotations"][LAST_APPLIED].endswith("\n")
    assert obj["metadata"]["annotations"]["team"] == "x"
    assert obj["type"] == "Opaque"
    assert list(record)[-1] == "requestReceivedTimestamp"
    assert record["requestReceivedTimestamp"] == STAMP
    assert counts.redacted == 1
    assert counts.received > 0


def test_hmac_marker_is_stable_and_detects_change() -> None:
    p = pipeline(key=KEY)
    first = json.loads(run(p, secret_review()) or b"")
    second = json.loads(run(p, secret_review()) or b"")
    new_obj, old_obj = first["request"]["object"], first["request"]["oldObject"]
    assert new_obj["data"]["password"] == mac(SECRET_VALUES[0])
    assert old_obj["data"]["password"] == mac(SECRET_VALUES[3])
    assert new_obj["data"]["password"] != old_obj["data"]["password"]  # the value changed
    assert first["request"]["object"] == second["request"]["object"]  # same value, same marker
    applied = json.loads(new_obj["metadata"]["annotations"][LAST_APPLIED])
    assert applied["data"]["password"] == new_obj["data"]["password"]
    other = json.loads(run(pipeline(key=b"another key"), secret_review()) or b"")
    assert other["request"]["object"]["data"]["password"] != new_obj["data"]["password"]


def test_non_string_value_marker_is_over_its_compact_json() -> None:
    review = secret_review()
    review["request"]["object"]["data"] = {"n": {"a": [1, "x"]}}
    record = json.loads(run(pipeline(key=KEY), review) or b"")
    expected = hmac.new(KEY, b'{"a":[1,"x"]}', hashlib.sha256).hexdigest()
    assert record["request"]["object"]["data"]["n"] == f"<redacted hmac-sha256:{expected}>"


def test_malformed_secret_data_is_redacted_whole() -> None:
    review = secret_review()
    review["request"]["object"]["data"] = "c2VjcmV0"
    review["request"]["object"]["metadata"]["annotations"][LAST_APPLIED] = "{not json c2VjcmV0"
    line = run(pipeline(), review) or b""
    assert b"c2VjcmV0" not in line
    record = json.loads(line)
    assert record["request"]["object"]["data"] == "<redacted>"
    assert record["request"]["object"]["metadata"]["annotations"][LAST_APPLIED] == "<redacted>"


def test_delete_has_only_old_object() -> None:
    review = secret_review("DELETE")
    review["request"]["object"] = None
    line = run(pipeline(), review) or b""
    assert SECRET_VALUES[3].encode() not in line
    assert json.loads(line)["request"]["object"] is None


def test_duplicate_keys_cannot_smuggle_a_secret_value() -> None:
    body = (
        b'{"request":{"uid":"d","resource":{"group":"","resource":"secrets"},'
        b'"object":{"data":{"k":"c2VjcmV0"},"data":{}}}}'
    )
    line = run(pipeline(), body) or b""
    assert b"c2VjcmV0" not in line


def test_no_redact_secrets_keeps_secret_bytes() -> None:
    body = json.dumps(secret_review()).encode()
    assert run(pipeline(secrets=False), body) == render_record(body, parse_review(body), NS)


def test_exact_path_keeps_big_numbers_and_lone_surrogates() -> None:
    body = (
        b'{"request":{"uid":"e","resource":{"group":"","resource":"secrets"},'
        b'"object":{"data":{"k":"c2VjcmV0"},"big":123456789012345678901234567890,'
        b'"f":1.50E+3,"s":"\\ud800x","e":1e999}}}'
    )
    line = run(pipeline(), body) or b""
    assert b"c2VjcmV0" not in line
    assert b'"big":123456789012345678901234567890' in line
    assert b'"f":1.50E+3' in line
    assert b'"s":"\\ud800x"' in line
    assert b'"e":1e999' in line
    assert line.endswith(b',"requestReceivedTimestamp":"' + STAMP.encode() + b'"}\n')


# --------------------------------------------------------------------------- custom rules


DB = ("db.example.com", "databases")


def database_review(subresource: str = "") -> dict[str, Any]:
    obj = {
        "apiVersion": "db.example.com/v1",
        "kind": "Database",
        "metadata": {"name": "main"},
        "spec": {
            "password": "pw-top",
            "users": [{"name": "a", "password": "pw-a"}, {"name": "b", "password": "pw-b"}],
            "tls": {"key": "pw-key", "cert": "public"},
        },
    }
    applied = json.dumps(obj)
    obj = json.loads(applied)
    obj["metadata"]["annotations"] = {LAST_APPLIED: applied}
    request: dict[str, Any] = {
        "uid": "db-1",
        "resource": {"group": DB[0], "version": "v1", "resource": DB[1]},
        "operation": "UPDATE",
        "object": obj,
        "oldObject": json.loads(applied),
    }
    if subresource:
        request["subResource"] = subresource
    return {"request": request}


@pytest.mark.parametrize("subresource", ["", "status"])
def test_custom_rule_paths(subresource: str) -> None:
    rules = {
        DB: (
            parse_path("spec.password"),
            parse_path("spec.users.*.password"),
            parse_path("spec.tls.key"),
        )
    }
    line = run(pipeline(custom=rules), database_review(subresource)) or b""
    for value in (b"pw-top", b"pw-a", b"pw-b", b"pw-key"):
        assert value not in line
    record = json.loads(line)["request"]
    for obj in (record["object"], record["oldObject"]):
        assert obj["spec"]["users"][1] == {"name": "b", "password": "<redacted>"}
        assert obj["spec"]["tls"]["cert"] == "public"
    applied = json.loads(record["object"]["metadata"]["annotations"][LAST_APPLIED])
    assert applied["spec"]["password"] == "<redacted>"


def test_custom_rule_other_resource_untouched() -> None:
    rules = {("db.example.com", "backups"): (parse_path("spec.password"),)}
    body = json.dumps(database_review()).encode()
    assert run(pipeline(custom=rules), body) == render_record(body, parse_review(body), NS)


@pytest.mark.parametrize(
    ("path", "parsed"),
    [
        ("spec.password", ("spec", "password")),
        ("spec.users.*.password", ("spec", "users", WILDCARD, "password")),
        ("items.0.value", ("items", "0", "value")),
        (r"metadata.annotations.example\.com/key", ("metadata", "annotations", "example.com/key")),
        (r"a.\*", ("a", "*")),
        (r"a\\b", ("a\\b",)),
    ],
)
def test_path_syntax(path: str, parsed: tuple[Any, ...]) -> None:
    assert parse_path(path) == parsed


def test_list_index_and_escaped_dot() -> None:
    rules = {DB: (parse_path("spec.users.0.password"),)}
    record = json.loads(run(pipeline(custom=rules), database_review()) or b"")
    users = record["request"]["object"]["spec"]["users"]
    assert [u["password"] for u in users] == ["<redacted>", "pw-b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {group: x, resource: y}\n", r"\[0\]\.paths: must list at least one path"),
        ("- {resource: y, paths: [a..b]}\n", r"\[0\]\.paths\[0\]: 'a..b' has an empty segment"),
        ("- {resource: y, paths: ['a\\q']}\n", r"\[0\]\.paths\[0\]: .*unknown escape"),
        ("- {group: x, paths: [a]}\n", r"\[0\]\.resource: is required"),
        ("- {resource: y, paths: [a], path: b}\n", r"\[0\]\.path: unknown field"),
        ("- {resource: y, paths: a}\n", r"\[0\]\.paths: must be a list, got a string"),
        ("resource: y\n", r"\(top level\): must be a list"),
    ],
)
def test_invalid_redaction_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "redact.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError, match=f"^{path}: {message}"):
        load_rules(str(path))


def test_redaction_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "redact.yaml"
    path.write_text(
        "# database passwords\n"
        "- group: db.example.com\n  resource: databases\n  paths: [spec.password]\n"
        "- group: db.example.com\n  resource: databases\n  paths: ['spec.users.*.password']\n"
    )
    assert load_rules(str(path)) == {
        DB: (("spec", "password"), ("spec", "users", WILDCARD, "password"))
    }


def test_empty_hmac_key_file_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"")
    with pytest.raises(ConfigFileError, match="HMAC key file is empty"):
        Sources(hmac_key_file=str(key)).load()


# --------------------------------------------------------------------------- policy levels


def pod_review(**extra: Any) -> dict[str, Any]:
    obj = {"metadata": {"name": "p", "managedFields": [{"manager": "m"}]}, "spec": {}}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "p-1",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "UPDATE",
            "userInfo": {"username": "alice"},
            "object": obj,
            "oldObject": json.loads(json.dumps(obj)),
            **extra,
        },
    }


def test_levels_and_managed_fields() -> None:
    def request_of(rule: dict[str, Any], **top: Any) -> dict[str, Any]:
        line = run(pipeline({"rules": [rule], **top}), pod_review())
        assert line is not None
        record = json.loads(line)
        assert list(record)[-1] == "requestReceivedTimestamp"
        result: dict[str, Any] = record["request"]
        return result

    meta = request_of({"level": "Metadata"})
    assert "object" not in meta and "oldObject" not in meta and meta["uid"] == "p-1"
    req = request_of({"level": "Request"})
    assert "object" in req and "oldObject" not in req
    full = request_of({"level": "RequestResponse"})
    assert "managedFields" in full["object"]["metadata"]
    assert "managedFields" in full["oldObject"]["metadata"]
    trimmed = request_of({"level": "RequestResponse"}, omitManagedFields=True)
    assert "managedFields" not in trimmed["object"]["metadata"]
    assert "managedFields" not in trimmed["oldObject"]["metadata"]
    assert trimmed["object"]["metadata"] == {"name": "p"}
    kept = request_of(
        {"level": "RequestResponse", "omitManagedFields": False}, omitManagedFields=True
    )
    assert "managedFields" in kept["object"]["metadata"]


def test_unchanged_records_are_byte_preserved() -> None:
    body = (
        b'{ "apiVersion": "admission.k8s.io/v1", "requestReceivedTimestamp": "x",\n'
        b'"request": {"uid": "u", "resource": {"group": "", "resource": "pods"},'
        b' "operation": "CREATE", "n": 1.50E+3, "n": 2, "s": "\\u003c"}}'
    )
    expected = render_record(body, parse_review(body), NS)
    assert run(pipeline(), body) == expected
    assert run(pipeline({"rules": [{"level": "RequestResponse"}]}), body) == expected
    # omitManagedFields with no managedFields present changes nothing either.
    assert run(pipeline({"rules": [{"level": "Request"}], "omitManagedFields": True}), body) == (
        expected
    )


def test_policy_drop_and_dry_run_drop_are_counted() -> None:
    counts = Counts()
    p = pipeline(
        {"rules": [{"level": "None", "users": ["bob"]}, {"level": "Metadata", "users": ["alice"]}]},
        drop_dry_run=True,
        counts=counts,
    )
    bob = pod_review(userInfo={"username": "bob"})
    carol = pod_review(userInfo={"username": "carol"})
    assert run(p, bob) is None
    assert run(p, carol) is None
    assert run(p, pod_review(dryRun=True)) is None
    assert run(p, pod_review(dryRun=False)) is not None
    assert counts.dropped == [("policy", "0"), ("policy", "default"), ("dry_run", "")]


def test_dry_run_kept_without_the_switch() -> None:
    assert run(pipeline(), pod_review(dryRun=True)) is not None


def test_policy_applies_before_redaction() -> None:
    line = run(pipeline({"rules": [{"level": "Metadata"}]}), secret_review()) or b""
    record = json.loads(line)
    assert "object" not in record["request"] and "oldObject" not in record["request"]
    for value in SECRET_VALUES:
        assert value.encode() not in line


SECRET_PREFIX = b'{"request":{"uid":"e","resource":{"group":"","resource":"secrets"},"object":{'


def test_integer_beyond_64_bits_keeps_its_digits() -> None:
    """orjson reads it as a double; the pipeline notices and re-encodes the exact way."""
    body = SECRET_PREFIX + b'"data":{"k":"c2VjcmV0"},"big":-123456789012345678901234567890}}}'
    line = run(pipeline(), body) or b""
    assert b'"big":-123456789012345678901234567890' in line
    assert b"c2VjcmV0" not in line and b'"k":"<redacted>"' in line


def test_ordinary_numbers_are_written_by_value() -> None:
    body = SECRET_PREFIX + b'"data":{"k":"c2VjcmV0"},"f":1.50E+3,"i":9223372036854775807,'
    body += b'"big":1e20,"h":"sha256:4e000123"}}}'
    record = run(pipeline(), body) or b""
    assert b'"f":1500.0,"i":9223372036854775807,"big":1e+20,"h":"sha256:4e000123"' in record


def test_nesting_deeper_than_orjson_writes() -> None:
    deep = b'{"a":' * 300 + b"1" + b"}" * 300
    body = SECRET_PREFIX + b'"data":{"k":"c2VjcmV0","n":' + deep + b'},"x":' + deep + b"}}}"
    line = run(pipeline(key=KEY), body) or b""
    assert b"c2VjcmV0" not in line
    record = json.loads(line)
    assert record["request"]["object"]["data"]["n"].startswith("<redacted hmac-sha256:")
    assert json.dumps(record["request"]["object"]["x"], separators=(",", ":")).encode() == deep

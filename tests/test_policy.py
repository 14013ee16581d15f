"""Audit Policy matching against kube-apiserver's documented semantics, and policy validation.

The expectations follow the audit policy checker of kube-apiserver
(staging/src/k8s.io/apiserver/pkg/audit/policy/checker.go): first match wins,
empty lists match everything, exact group match with "" for core, `*`,
`pods/*` and `*/status` resource forms, resourceNames, "" for cluster-scoped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kube_audit_rest.config_files import ConfigFileError
from kube_audit_rest.policy import Level, admission_verbs, attributes, load_policy, parse_policy


def request(
    operation: str = "CREATE",
    group: str = "",
    resource: str = "pods",
    subresource: str = "",
    namespace: str = "default",
    name: str = "web-1",
    user: str = "alice",
    groups: tuple[str, ...] = ("system:authenticated",),
    options_kind: str | None = None,
) -> dict[str, Any]:
    req: dict[str, Any] = {
        "uid": "u",
        "operation": operation,
        "resource": {"group": group, "version": "v1", "resource": resource},
        "userInfo": {"username": user, "groups": list(groups)},
        "name": name,
    }
    if subresource:
        req["subResource"] = subresource
    if namespace:
        req["namespace"] = namespace
    if options_kind:
        req["options"] = {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"}
    return req


def policy(*rules: dict[str, Any], **top: Any) -> Any:
    return parse_policy(
        "p.yaml", {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": list(rules), **top}
    )


def level_of(rule: dict[str, Any], req: dict[str, Any]) -> str:
    """The level a one-rule policy (plus nothing else) gives the request."""
    decision = policy({"level": "Metadata", **rule}).decide(attributes(req))
    level: str = decision.level.value
    return level


# (rule fields, request, matches?)
MATCHING: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("empty rule matches everything", {}, request(), True),
    # resources: group
    ("core group is the empty string", {"resources": [{"group": ""}]}, request(), True),
    ("group omitted means core", {"resources": [{"resources": ["pods"]}]}, request(), True),
    ("core rule does not match apps", {"resources": [{"group": ""}]}, request(group="apps"), False),
    (
        "group is exact, no wildcard",
        {"resources": [{"group": "*"}]},
        request(group="apps", resource="deployments"),
        False,
    ),
    (
        "group only: all its resources and subresources",
        {"resources": [{"group": "apps"}]},
        request(group="apps", resource="deployments", subresource="scale"),
        True,
    ),
    # resources: names and wildcards
    ("exact resource", {"resources": [{"resources": ["pods"]}]}, request(), True),
    ("other resource", {"resources": [{"resources": ["secrets"]}]}, request(), False),
    (
        "resource does not match its subresource",
        {"resources": [{"resources": ["pods"]}]},
        request(operation="CONNECT", subresource="exec"),
        False,
    ),
    (
        "resource/subresource",
        {"resources": [{"resources": ["pods/exec"]}]},
        request(operation="CONNECT", subresource="exec"),
        True,
    ),
    (
        "resource/subresource does not match the resource",
        {"resources": [{"resources": ["pods/exec"]}]},
        request(),
        False,
    ),
    (
        "* matches subresources too",
        {"resources": [{"resources": ["*"]}]},
        request(operation="UPDATE", subresource="status"),
        True,
    ),
    (
        "pods/* matches every pod subresource",
        {"resources": [{"resources": ["pods/*"]}]},
        request(operation="CONNECT", subresource="attach"),
        True,
    ),
    (
        "pods/* matches the resource itself too (upstream quirk)",
        {"resources": [{"resources": ["pods/*"]}]},
        request(),
        True,
    ),
    (
        "pods/* does not match other resources",
        {"resources": [{"resources": ["pods/*"]}]},
        request(resource="services", subresource="proxy"),
        False,
    ),
    (
        "*/status matches any status",
        {"resources": [{"group": "apps", "resources": ["*/status"]}]},
        request(operation="UPDATE", group="apps", resource="deployments", subresource="status"),
        True,
    ),
    (
        "*/status does not match the resource",
        {"resources": [{"resources": ["*/status"]}]},
        request(operation="UPDATE"),
        False,
    ),
    (
        "*/status does not match another subresource",
        {"resources": [{"resources": ["*/status"]}]},
        request(operation="UPDATE", subresource="scale"),
        False,
    ),
    # resourceNames
    (
        "resourceNames with the request's name",
        {"resources": [{"resources": ["pods"], "resourceNames": ["web-1"]}]},
        request(operation="UPDATE"),
        True,
    ),
    (
        "resourceNames with another name",
        {"resources": [{"resources": ["pods"], "resourceNames": ["web-2"]}]},
        request(operation="UPDATE"),
        False,
    ),
    (
        "resourceNames never match a plain create (its URL has no name)",
        {"resources": [{"resources": ["pods"], "resourceNames": ["web-1"]}]},
        request(operation="CREATE"),
        False,
    ),
    (
        "resourceNames and a request without a name",
        {"resources": [{"resources": ["pods"], "resourceNames": ["web-1"]}]},
        request(operation="DELETE", name=""),
        False,
    ),
    (
        "resourceNames match a subresource create (the URL names the pod)",
        {"resources": [{"resources": ["pods/exec"], "resourceNames": ["web-1"]}]},
        request(operation="CONNECT", subresource="exec"),
        True,
    ),
    (
        "resourceNames match an apply that creates (PATCH URL has the name)",
        {"resources": [{"resources": ["pods"], "resourceNames": ["web-1"]}]},
        request(operation="CREATE", options_kind="PatchOptions"),
        True,
    ),
    # namespaces
    ("namespace listed", {"namespaces": ["default"]}, request(), True),
    ("namespace not listed", {"namespaces": ["kube-system"]}, request(), False),
    (
        '"" matches cluster-scoped',
        {"namespaces": [""]},
        request(resource="nodes", namespace=""),
        True,
    ),
    ('"" does not match namespaced', {"namespaces": [""]}, request(), False),
    (
        "namespaces and resources both apply",
        {"namespaces": ["default"], "resources": [{"resources": ["secrets"]}]},
        request(),
        False,
    ),
    # users, groups, verbs
    ("user listed", {"users": ["alice"]}, request(), True),
    ("user not listed", {"users": ["bob"]}, request(), False),
    ("one of the user's groups", {"userGroups": ["x", "system:authenticated"]}, request(), True),
    ("none of the user's groups", {"userGroups": ["system:masters"]}, request(), False),
    ("verb create", {"verbs": ["create"]}, request(), True),
    ("verb update is not create", {"verbs": ["update"]}, request(), False),
    ("UPDATE is update", {"verbs": ["update"]}, request(operation="UPDATE"), True),
    (
        "UPDATE with PatchOptions is patch",
        {"verbs": ["patch"]},
        request(operation="UPDATE", options_kind="PatchOptions"),
        True,
    ),
    (
        "a patch is not an update",
        {"verbs": ["update"]},
        request(operation="UPDATE", options_kind="PatchOptions"),
        False,
    ),
    ("DELETE is delete", {"verbs": ["delete"]}, request(operation="DELETE"), True),
    (
        "CONNECT matches create",
        {"verbs": ["create"]},
        request(operation="CONNECT", subresource="exec"),
        True,
    ),
    (
        "CONNECT matches get",
        {"verbs": ["get"]},
        request(operation="CONNECT", subresource="exec"),
        True,
    ),
    (
        "CONNECT is not delete",
        {"verbs": ["delete"]},
        request(operation="CONNECT", subresource="exec"),
        False,
    ),
    (
        "nonResourceURLs never match a resource request",
        {"nonResourceURLs": ["/*"]},
        request(),
        False,
    ),
    (
        "all fields must match",
        {"users": ["alice"], "verbs": ["create"], "resources": [{"resources": ["pods"]}]},
        request(),
        True,
    ),
    (
        "any one field failing fails the rule",
        {"users": ["alice"], "verbs": ["delete"]},
        request(),
        False,
    ),
]


@pytest.mark.parametrize(
    ("rule", "req", "matches"),
    [case[1:] for case in MATCHING],
    ids=[case[0] for case in MATCHING],
)
def test_rule_matching(rule: dict[str, Any], req: dict[str, Any], matches: bool) -> None:
    assert level_of(rule, req) == ("Metadata" if matches else "None")


def test_first_matching_rule_wins_and_no_match_is_level_none() -> None:
    p = policy(
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "RequestResponse", "resources": [{"resources": ["secrets"]}]},
        {"level": "Metadata", "resources": [{"resources": ["secrets", "configmaps"]}]},
        {"level": "Request", "namespaces": ["default"]},
    )
    lease = request(group="coordination.k8s.io", resource="leases", operation="UPDATE")
    cases = [
        (lease, Level.NONE, "0"),
        (request(resource="secrets"), Level.REQUEST_RESPONSE, "1"),
        (request(resource="configmaps"), Level.METADATA, "2"),
        (request(resource="pods"), Level.REQUEST, "3"),
        (request(resource="pods", namespace="other"), Level.NONE, "default"),
    ]
    for req, level, rule in cases:
        decision = p.decide(attributes(req))
        assert (decision.level, decision.rule) == (level, rule), req


def test_omit_managed_fields_rule_overrides_policy_default() -> None:
    p = policy(
        {"level": "Request", "users": ["alice"], "omitManagedFields": False},
        {"level": "Request", "users": ["bob"]},
        omitManagedFields=True,
    )
    assert p.decide(attributes(request(user="alice"))).omit_managed_fields is False
    assert p.decide(attributes(request(user="bob"))).omit_managed_fields is True
    q = policy({"level": "Request", "omitManagedFields": True})
    assert q.decide(attributes(request())).omit_managed_fields is True


def test_request_resource_is_what_the_policy_sees() -> None:
    """The webhook may get a converted resource; the API server's policy sees the URL's."""
    req = request(group="apps", resource="deployments")
    req["requestResource"] = {
        "group": "extensions",
        "version": "v1beta1",
        "resource": "deployments",
    }
    req["requestSubResource"] = ""
    assert attributes(req).api_group == "extensions"


@pytest.mark.parametrize(
    ("operation", "options", "verbs"),
    [
        ("CREATE", "CreateOptions", ("create",)),
        ("CREATE", "PatchOptions", ("patch",)),
        ("UPDATE", "UpdateOptions", ("update",)),
        ("UPDATE", "PatchOptions", ("patch",)),
        ("DELETE", "DeleteOptions", ("delete",)),
        ("CONNECT", None, ("create", "get")),
    ],
)
def test_operation_to_verb_table(
    operation: str, options: str | None, verbs: tuple[str, ...]
) -> None:
    assert admission_verbs(request(operation=operation, options_kind=options)) == verbs


# --------------------------------------------------------------------------- validation


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "apiVersion: audit.k8s.io/v1\nkind: Policy\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "rules:\n- level: Metadata\n- level: Metadata\n- level: Everything\n",
            "rules[2].level: must be one of None, Metadata, Request, RequestResponse",
        ),
        ("rules:\n- {}\n", "rules[0].level: is required"),
        (
            "rules:\n- level: None\n  verbs: create\n",
            "rules[0].verbs: must be a list, got a string",
        ),
        (
            "rules:\n- level: None\n  users: [1]\n",
            "rules[0].users[0]: must be a string, got a number",
        ),
        ("rules:\n- level: None\n  resource: [pods]\n", "rules[0].resource: unknown field"),
        (
            "rules:\n- level: None\n  resources: [{group: '', resourcesNames: [a]}]\n",
            "rules[0].resources[0].resourcesNames: unknown field",
        ),
        (
            "rules:\n- level: None\n  resources: [{group: '', resourceNames: [a]}]\n",
            "rules[0].resources[0].resourceNames: needs resources",
        ),
        (
            "rules:\n- level: None\n  resources: [{resources: [a/b/c]}]\n",
            "rules[0].resources[0].resources[0]: must be a resource",
        ),
        (
            "rules:\n- level: None\n  omitManagedFields: 'yes please'\n",
            "rules[0].omitManagedFields: must be true or false, got a string",
        ),
        (
            "rules:\n- level: None\n  omitStages: [Later]\n",
            "rules[0].omitStages[0]: must be one of",
        ),
        (
            "rules:\n- level: None\n  nonResourceURLs: [/x]\n  namespaces: [a]\n",
            "rules[0].nonResourceURLs: cannot be combined",
        ),
        ("rules: {level: None}\n", "rules: must be a list, got a mapping"),
        ("omitManagedFields: 1\nrules: []\n", "omitManagedFields: must be true or false"),
        ("rules:\n- level: None\n  level: Metadata\n", "not valid YAML: duplicate key 'level'"),
        ("rules: [\n", "not valid YAML"),
        ("extra: 1\nrules: []\n", "extra: unknown field"),
    ],
)
def test_invalid_policy_names_file_field_and_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, HEADER + body)
    with pytest.raises(ConfigFileError) as caught:
        load_policy(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: Policy\nrules: []\n", "apiVersion: is required"),
        ("apiVersion: audit.k8s.io/v1beta1\nkind: Policy\n", "apiVersion: must be audit.k8s.io/v1"),
        ("apiVersion: audit.k8s.io/v1\nkind: PolicyList\n", "kind: must be Policy"),
        ("- a\n", "(top level): must be a mapping, got a list"),
        ("", "the file is empty"),
    ],
)
def test_invalid_policy_header(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_policy(write(tmp_path, text))


def test_json_policy_and_warnings(tmp_path: Path) -> None:
    document = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "metadata": {"name": "p"},
        "omitStages": ["RequestReceived"],
        "omitManagedFields": True,
        "rules": [
            {"level": "None", "nonResourceURLs": ["/healthz*"]},
            {"level": "Metadata", "omitStages": ["ResponseStarted"]},
        ],
    }
    path = write(tmp_path, json.dumps(document, indent="\t"), "policy.json")
    loaded = load_policy(path)
    assert loaded.omit_managed_fields is True
    assert len(loaded.rules) == 2
    joined = "\n".join(loaded.warnings)
    assert f"{path}: omitStages: ignored" in joined
    assert "rules[0].nonResourceURLs" in joined
    assert "rules[1].omitStages: ignored" in joined
    # The nonResourceURLs rule is skipped: the catch-all decides.
    assert loaded.decide(attributes(request())).rule == "1"


def test_json_errors_are_one_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, '{"apiVersion": "audit.k8s.io/v1",\n "kind": "Policy", "kind": "x"}', "p.json"
    )
    with pytest.raises(ConfigFileError, match=r"p\.json: not valid JSON: duplicate key 'kind'"):
        load_policy(path)

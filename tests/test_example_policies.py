"""The shipped example policies load and do what their comments say; the savings script runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kube_audit_rest.policy import Level, attributes, load_policy

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "examples" / "policies"


def req(
    group: str,
    resource: str,
    operation: str = "UPDATE",
    sub: str = "",
    user: str = "alice",
    groups: tuple[str, ...] = ("system:authenticated",),
) -> dict[str, object]:
    request: dict[str, object] = {
        "uid": "u",
        "operation": operation,
        "resource": {"group": group, "version": "v1", "resource": resource},
        "namespace": "default",
        "name": "x",
        "userInfo": {"username": user, "groups": list(groups)},
    }
    if sub:
        request["subResource"] = sub
    return request


ENDPOINTS_CONTROLLER = "system:serviceaccount:kube-system:endpointslice-controller"
CASES = [
    # (request, cost-saving level, strict-compliance level)
    (req("coordination.k8s.io", "leases"), Level.NONE, Level.METADATA),
    (req("", "events", "CREATE"), Level.NONE, Level.METADATA),
    (req("events.k8s.io", "events", "CREATE"), Level.NONE, Level.METADATA),
    (
        req("discovery.k8s.io", "endpointslices", user=ENDPOINTS_CONTROLLER),
        Level.NONE,
        Level.REQUEST_RESPONSE,
    ),
    (req("discovery.k8s.io", "endpointslices"), Level.REQUEST_RESPONSE, Level.REQUEST_RESPONSE),
    (req("authorization.k8s.io", "selfsubjectaccessreviews", "CREATE"), Level.NONE, Level.METADATA),
    (req("authentication.k8s.io", "tokenreviews", "CREATE"), Level.NONE, Level.METADATA),
    (req("", "pods", sub="status"), Level.METADATA, Level.REQUEST_RESPONSE),
    (req("apps", "deployments", sub="status"), Level.METADATA, Level.REQUEST_RESPONSE),
    (req("", "pods", "CONNECT", sub="exec"), Level.REQUEST_RESPONSE, Level.REQUEST_RESPONSE),
    (req("", "secrets"), Level.REQUEST_RESPONSE, Level.REQUEST_RESPONSE),
    (req("apps", "deployments"), Level.REQUEST_RESPONSE, Level.REQUEST_RESPONSE),
]


@pytest.mark.parametrize(("request_", "cost", "strict"), CASES)
def test_example_policies(request_: dict[str, object], cost: Level, strict: Level) -> None:
    cost_saving = load_policy(str(POLICIES / "cost-saving.yaml"))
    strict_compliance = load_policy(str(POLICIES / "strict-compliance.yaml"))
    assert cost_saving.decide(attributes(request_)).level is cost
    decision = strict_compliance.decide(attributes(request_))
    assert decision.level is strict
    assert decision.rule != "default", "the strict policy must never fall through"
    assert cost_saving.omit_managed_fields and not strict_compliance.omit_managed_fields
    assert not cost_saving.warnings and not strict_compliance.warnings


def test_savings_script_prints_the_figures(tmp_path: Path) -> None:
    lines = [
        {"request": {**req("coordination.k8s.io", "leases"), "uid": "l"}},
        {
            "request": {
                **req("apps", "deployments"),
                "uid": "d",
                "object": {"metadata": {"managedFields": [{"manager": "m" * 100}]}},
            }
        },
    ]
    (tmp_path / "kube-audit-rest.log").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "policy_savings.py"), "--corpus", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["(none)"][1] == "2"
    assert rows["cost-saving.yaml"][1] == "1"  # the lease is dropped
    assert "rule 0: 1" in result.stdout
    assert rows["strict-compliance.yaml"][1] == "2"

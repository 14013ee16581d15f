"""``kube-audit-rest install`` / ``uninstall`` against a stub Kubernetes API server.

No kube-apiserver can run on this machine (it is on neither PyPI nor Debian,
and there is no container engine), so the cluster is ``tests/kube_stub.py``:
real HTTPS on 127.0.0.1 with a CA handed over in a real kubeconfig, bearer
token auth, the real REST paths, verbs, Status error bodies, resourceVersion
and generation; server-side apply is approximated by a merge without field
ownership, RBAC denials and validation failures are injected, and the
Deployment controller is a timer that marks the rollout complete (or never).
The command runs as users run it: the installed console script in a
subprocess, reading the kubeconfig the way kubectl does.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from kube_audit_rest.certs import check_serving_pair, issue_serving_pair, service_names
from kube_audit_rest.kube_apply import (
    KubeError,
    deployment_progress,
    differences,
    normalize,
)
from kube_audit_rest.kube_connect import kubeconfig_source
from tests.kube_stub import KubeStub
from tests.support import CLI, free_port, make_pair

pytestmark = pytest.mark.timeout(120)

NS = "kube-audit-rest"
HOST = f"{NS}.{NS}.svc"
APPLY_ORDER = [
    "Namespace",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "ValidatingWebhookConfiguration",
]
KIND_OF_PLURAL = {
    "namespaces": "Namespace",
    "secrets": "Secret",
    "services": "Service",
    "deployments": "Deployment",
    "poddisruptionbudgets": "PodDisruptionBudget",
    "servicemonitors": "ServiceMonitor",
    "validatingwebhookconfigurations": "ValidatingWebhookConfiguration",
}


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[KubeStub]:
    pair = make_pair(tmp_path / "api-certs")
    server = KubeStub(ready_after=0.5)
    server.serve(pair)
    server.kubeconfig(tmp_path / "kubeconfig", pair.ca_path)
    yield server
    server.close()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG",)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env["HOME"] = str(tmp_path / "home")  # no ~/.kube/config unless a test writes one
    env.update(extra)
    return env


def run(
    tmp_path: Path, *args: str, kubeconfig: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [CLI, *args]
    if kubeconfig:
        argv.append(f"--kubeconfig={tmp_path / 'kubeconfig'}")
    if args and args[0] in ("install", "uninstall"):
        argv.append("--poll-interval=0.1")
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=90, env=env or _env(tmp_path), check=False
    )


def _kind(path: str) -> str:
    segments = path.strip("/").split("/")
    plural = segments[-2] if segments[-1] not in KIND_OF_PLURAL else segments[-1]
    return KIND_OF_PLURAL[plural]


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kube-audit-rest: error: "), lines
    assert "Traceback" not in result.stderr
    return lines[0]


def _b64pem(obj: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(obj["data"][key])


# ---- install on an empty cluster -----------------------------------------


def test_install_creates_everything_in_order_and_registers_the_webhook_after_ready(
    tmp_path: Path, stub: KubeStub
) -> None:
    result = run(tmp_path, "install")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"namespace/{NS} created",
        f"secret/{NS}-tls created: new CA and certificate",
        f"service/{NS} created",
        f"deployment.apps/{NS} created",
        f"poddisruptionbudget.policy/{NS} created",
        f"deployment.apps/{NS} ready: 2/2 replicas available",
        f"validatingwebhookconfiguration.admissionregistration.k8s.io/{NS} created",
    ]
    writes = stub.writes()
    assert [_kind(call.path) for call in writes] == APPLY_ORDER
    assert all(call.content_type == "application/apply-patch+yaml" for call in writes)
    assert all(call.query["fieldManager"] == ["kube-audit-rest"] for call in writes)

    # The webhook was registered only after a GET had shown the rollout complete,
    # and that GET came after a GET that showed it incomplete: the command waited.
    calls = stub.calls
    webhook_at = next(i for i, c in enumerate(calls) if c.write and "validatingwebhook" in c.path)
    ready_at = next(i for i, c in enumerate(calls) if c.note == "ready")
    deployment_gets = [
        i for i, c in enumerate(calls) if c.method == "GET" and "/deployments/" in c.path
    ]
    assert ready_at < webhook_at
    assert any(i < ready_at and calls[i].status == 200 for i in deployment_gets)

    # The caBundle the API server will use verifies the Secret's serving certificate.
    secret = stub.find("Secret", f"{NS}-tls")
    webhook = stub.find("ValidatingWebhookConfiguration", NS)
    assert secret is not None and webhook is not None
    bundle = base64.b64decode(webhook["webhooks"][0]["clientConfig"]["caBundle"])
    assert bundle == _b64pem(secret, "ca.crt")
    check_serving_pair(bundle, _b64pem(secret, "tls.crt"), _b64pem(secret, "tls.key"), HOST)


def test_second_install_reports_unchanged_and_writes_nothing(
    tmp_path: Path, stub: KubeStub
) -> None:
    assert run(tmp_path, "install").returncode == 0
    secret_before = stub.find("Secret", f"{NS}-tls")
    before = len(stub.calls)

    result = run(tmp_path, "install")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 7
    assert all(line.split(" ")[1].rstrip(":") in ("unchanged", "ready") for line in lines), lines
    assert "certificates reused" in lines[1]
    assert [c for c in stub.calls[before:] if c.method != "GET"] == []
    assert stub.find("Secret", f"{NS}-tls") == secret_before


def test_changed_option_configures_only_that_object(tmp_path: Path, stub: KubeStub) -> None:
    assert run(tmp_path, "install").returncode == 0
    before = len(stub.calls)
    result = run(tmp_path, "install", "--replicas=3")
    assert result.returncode == 0, result.stderr
    assert f"deployment.apps/{NS} configured: changed spec.replicas" in result.stdout
    assert [_kind(c.path) for c in stub.calls[before:] if c.write] == ["Deployment"]
    deployment = stub.find("Deployment", NS)
    assert deployment is not None and deployment["spec"]["replicas"] == 3


def test_dry_run_reads_only(tmp_path: Path, stub: KubeStub) -> None:
    result = run(tmp_path, "install", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"namespace/{NS} would be created (dry run)" in result.stdout
    assert f"deployment.apps/{NS} would be waited for (dry run)" in result.stdout
    assert stub.writes() == []
    assert stub.objects == {}


# ---- certificates ----------------------------------------------------------


def test_expiring_certificate_is_rotated_and_both_cas_are_trusted(
    tmp_path: Path, stub: KubeStub
) -> None:
    assert run(tmp_path, "install").returncode == 0
    old = issue_serving_pair(service_names(NS, NS), days=10)
    key = next(k for k, v in stub.objects.items() if v["kind"] == "Secret")
    stub.objects[key]["data"] = {
        "ca.crt": base64.b64encode(old.ca_cert).decode(),
        "tls.crt": base64.b64encode(old.cert).decode(),
        "tls.key": base64.b64encode(old.key).decode(),
    }
    before = len(stub.calls)
    result = run(tmp_path, "install")
    assert result.returncode == 0, result.stderr
    assert "within 30 days" in result.stdout
    secret = stub.find("Secret", f"{NS}-tls")
    webhook = stub.find("ValidatingWebhookConfiguration", NS)
    assert secret is not None and webhook is not None
    bundle = base64.b64decode(webhook["webhooks"][0]["clientConfig"]["caBundle"])
    assert len(x509.load_pem_x509_certificates(bundle)) == 2
    # The new certificate and the old one both verify under the bundle.
    check_serving_pair(bundle, _b64pem(secret, "tls.crt"), _b64pem(secret, "tls.key"), HOST)
    check_serving_pair(bundle, old.cert, old.key, HOST)
    not_after = x509.load_pem_x509_certificate(_b64pem(secret, "tls.crt")).not_valid_after_utc
    assert not_after - datetime.datetime.now(datetime.UTC) > datetime.timedelta(days=300)
    # The webhook learned the new CA before the Secret changed.
    kinds = [_kind(c.path) for c in stub.calls[before:] if c.write]
    assert kinds[:2] == ["ValidatingWebhookConfiguration", "Secret"], kinds


def test_cert_dir_is_installed_kept_and_rotated(tmp_path: Path, stub: KubeStub) -> None:
    for folder in ("one", "two"):
        made = subprocess.run(
            [CLI, "certs", f"--out-dir={tmp_path / folder}"], capture_output=True, timeout=30
        )
        assert made.returncode == 0, made.stderr
    first = run(tmp_path, "install", f"--cert-dir={tmp_path / 'one'}")
    assert first.returncode == 0, first.stderr
    secret = stub.find("Secret", f"{NS}-tls")
    assert secret is not None
    assert _b64pem(secret, "tls.crt") == (tmp_path / "one" / "tls.crt").read_bytes()
    before = len(stub.calls)
    again = run(tmp_path, "install", f"--cert-dir={tmp_path / 'one'}")
    assert again.returncode == 0, again.stderr
    assert [c for c in stub.calls[before:] if c.write] == []
    rotated = run(tmp_path, "install", f"--cert-dir={tmp_path / 'two'}")
    assert rotated.returncode == 0, rotated.stderr
    webhook = stub.find("ValidatingWebhookConfiguration", NS)
    assert webhook is not None
    bundle = base64.b64decode(webhook["webhooks"][0]["clientConfig"]["caBundle"])
    old_ca, new_ca = ((tmp_path / d / "ca.crt").read_bytes() for d in ("one", "two"))
    assert bundle.startswith(new_ca.rstrip(b"\n")) and bundle.rstrip().endswith(old_ca.rstrip())


def test_secret_for_other_names_is_replaced(tmp_path: Path, stub: KubeStub) -> None:
    assert run(tmp_path, "install").returncode == 0
    result = run(tmp_path, "install", "--service=audit")
    assert result.returncode == 0, result.stderr
    # A different Service name means a different Secret, and a certificate for it.
    secret = stub.find("Secret", "audit-tls")
    assert secret is not None
    check_serving_pair(
        _b64pem(secret, "ca.crt"),
        _b64pem(secret, "tls.crt"),
        _b64pem(secret, "tls.key"),
        f"audit.{NS}.svc",
    )


# ---- uninstall -------------------------------------------------------------


def test_uninstall_removes_the_webhook_first(tmp_path: Path, stub: KubeStub) -> None:
    assert run(tmp_path, "install").returncode == 0
    before = len(stub.calls)
    result = run(tmp_path, "uninstall")
    assert result.returncode == 0, result.stderr
    deletes = [c for c in stub.calls[before:] if c.method == "DELETE"]
    kinds = [_kind(c.path) for c in deletes]
    assert kinds[0] == "ValidatingWebhookConfiguration"
    assert kinds[-1] == "Namespace"
    assert kinds.index("Deployment") < kinds.index("Secret")
    assert stub.objects == {}
    lines = result.stdout.splitlines()
    assert lines[0] == f"validatingwebhookconfiguration.admissionregistration.k8s.io/{NS} deleted"
    assert f"servicemonitor.monitoring.coreos.com/{NS} not found (nothing to delete)" in lines

    again = run(tmp_path, "uninstall")
    assert again.returncode == 0, again.stderr
    assert all("not found" in line for line in again.stdout.splitlines())


def test_uninstall_dry_run_and_keep_namespace(tmp_path: Path, stub: KubeStub) -> None:
    assert run(tmp_path, "install").returncode == 0
    before = len(stub.calls)
    dry = run(tmp_path, "uninstall", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"deployment.apps/{NS} would be deleted (dry run)" in dry.stdout
    assert [c for c in stub.calls[before:] if c.write] == []
    kept = run(tmp_path, "uninstall", "--keep-namespace")
    assert kept.returncode == 0, kept.stderr
    assert stub.kinds_in_store() == {"Namespace"}


def test_uninstall_waits_for_the_namespace_so_install_can_follow(
    tmp_path: Path, stub: KubeStub
) -> None:
    stub.namespace_terminating_for = 1.0
    assert run(tmp_path, "install").returncode == 0
    before = len(stub.calls)
    result = run(tmp_path, "uninstall")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"namespace/{NS} deleted"
    namespace_gets = [
        c.status for c in stub.calls[before:] if c.method == "GET" and c.path.endswith(f"/{NS}")
    ]
    assert namespace_gets[-1] == 404 and namespace_gets.count(200) >= 2  # it polled
    again = run(tmp_path, "install")
    assert again.returncode == 0, again.stderr


def test_uninstall_does_not_delete_a_namespace_install_did_not_make(
    tmp_path: Path, stub: KubeStub
) -> None:
    for name, labels in (("shared", {"team": "a"}), ("default", {"app.kubernetes.io/name": NS})):
        stub.objects[("", "", "namespaces", name)] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "resourceVersion": "1"},
        }
    shared = run(tmp_path, "uninstall", "--namespace=shared")
    assert shared.returncode == 0, shared.stderr
    assert "namespace/shared kept: it lacks the label app.kubernetes.io/name=kube-audit-rest" in (
        shared.stdout
    )
    # install leaves such a namespace's labels alone (no Pod Security label forced on it).
    installed = run(tmp_path, "install", "--namespace=shared")
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.splitlines()[0] == (
        "namespace/shared kept: it lacks the label app.kubernetes.io/name=kube-audit-rest; "
        "its labels are left alone"
    )
    assert stub.find("Namespace", "shared")["metadata"]["labels"] == {"team": "a"}  # type: ignore[index]
    assert run(tmp_path, "uninstall", "--namespace=shared").returncode == 0
    system = run(tmp_path, "uninstall", "--namespace=default")
    assert system.returncode == 0, system.stderr
    assert "namespace/default kept: Kubernetes' own namespace" in system.stdout
    assert not [
        c
        for c in stub.calls
        if c.method == "DELETE" and "/namespaces/" in c.path and c.path.count("/") == 4
    ]
    assert stub.kinds_in_store() == {"Namespace"}


def test_in_cluster_config_is_used_inside_a_pod(
    tmp_path: Path, stub: KubeStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the service account folder is a temporary one (its real path is
    the kubelet's to create); the connection to the stub is real."""
    from kube_audit_rest import kube_connect
    from kube_audit_rest.kube_apply import Cluster, apply_one

    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(stub.token)
    shutil.copy(tmp_path / "api-certs" / "ca.crt", account / "ca.crt")
    monkeypatch.setattr(kube_connect, "SERVICE_ACCOUNT_DIR", str(account))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", stub.url.rsplit(":", 1)[1])
    api = kube_connect.connect(None, None)
    try:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
        assert apply_one(Cluster(api), namespace).action == "created"
    finally:
        api.close()
    assert stub.find("Namespace", "x") is not None
    with pytest.raises(KubeError, match="--context needs a kubeconfig"):
        kube_connect.connect(None, "other")


# ---- waiting -----------------------------------------------------------------


def test_timeout_waiting_for_readiness_does_not_register_the_webhook(
    tmp_path: Path, stub: KubeStub
) -> None:
    stub.ready_after = None  # the pods never become ready
    result = run(tmp_path, "install", "--wait-timeout=1")
    line = _one_error_line(result)
    assert f"deployment.apps/{NS} was not ready within 1s" in line
    assert "no pods were created" in line  # the stub has no ReplicaSet controller
    assert "ValidatingWebhookConfiguration" not in stub.kinds_in_store()
    assert "validatingwebhookconfiguration" not in result.stdout
    assert all("validatingwebhook" not in c.path for c in stub.writes())


def test_timeout_names_what_the_pods_report(tmp_path: Path, stub: KubeStub) -> None:
    stub.ready_after = None
    # A first attempt that times out leaves the namespace and the Deployment in place.
    assert run(tmp_path, "install", "--wait-timeout=0.5").returncode == 1
    pod_labels = {"app.kubernetes.io/name": NS, "app.kubernetes.io/instance": NS}
    stub.objects[("", NS, "pods", f"{NS}-7d9c-x1")] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{NS}-7d9c-x1", "namespace": NS, "labels": pod_labels},
        "status": {
            "containerStatuses": [
                {
                    "name": "kube-audit-rest",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "kube-audit-rest:0.1.0"',
                        }
                    },
                }
            ]
        },
    }
    line = _one_error_line(run(tmp_path, "install", "--wait-timeout=1"))
    assert line.endswith(
        f"; pod {NS}-7d9c-x1: container kube-audit-rest ImagePullBackOff: "
        'Back-off pulling image "kube-audit-rest:0.1.0"'
    )
    assert "ValidatingWebhookConfiguration" not in stub.kinds_in_store()


# ---- errors: one line each, non-zero exit ------------------------------------


def test_forbidden_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    stub.faults[("patch", "deployments")] = (403, "Forbidden")
    result = run(tmp_path, "install")
    line = _one_error_line(result)
    assert f"cannot apply deployment.apps/{NS} in namespace {NS}: 403 Forbidden:" in line
    assert 'User "tester" cannot patch resource "deployments"' in line
    assert "ValidatingWebhookConfiguration" not in stub.kinds_in_store()


def test_invalid_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    stub.faults[("patch", "services")] = (422, "Invalid")
    line = _one_error_line(run(tmp_path, "install"))
    assert f"cannot apply service/{NS} in namespace {NS}: 422 Invalid:" in line


def test_missing_custom_resource_definition_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    del stub.kinds_served[("monitoring.coreos.com", "v1", "servicemonitors")]
    line = _one_error_line(run(tmp_path, "install", "--service-monitor"))
    assert f"cannot apply servicemonitor.monitoring.coreos.com/{NS} in namespace {NS}: 404" in line
    assert "is the CustomResourceDefinition for ServiceMonitor installed?" in line
    assert "ValidatingWebhookConfiguration" not in stub.kinds_in_store()


def test_forbidden_delete_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    stub.faults[("delete", "validatingwebhookconfigurations")] = (403, "Forbidden")
    line = _one_error_line(run(tmp_path, "uninstall"))
    assert "cannot delete validatingwebhookconfiguration" in line and "403 Forbidden" in line


def test_wrong_token_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    pair_ca = tmp_path / "api-certs" / "ca.crt"
    stub.kubeconfig(tmp_path / "kubeconfig", pair_ca, token="wrong")
    line = _one_error_line(run(tmp_path, "install"))
    assert "401 Unauthorized" in line


def test_connection_refused_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    line = _one_error_line(run(tmp_path, "install"))
    assert "cannot reach the API server at https://127.0.0.1:" in line
    assert "refused" in line.lower()


def test_untrusted_api_server_certificate_is_one_line(tmp_path: Path, stub: KubeStub) -> None:
    other = make_pair(tmp_path / "other-ca")
    stub.kubeconfig(tmp_path / "kubeconfig", other.ca_path)
    line = _one_error_line(run(tmp_path, "install"))
    assert "the API server at https://127.0.0.1:" in line and "CERTIFICATE_VERIFY_FAILED" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not yaml: [", "bad kubeconfig"),
        ("apiVersion: v1\nkind: Config\n", "bad kubeconfig"),
        (None, "does not exist (--kubeconfig)"),
    ],
)
def test_bad_kubeconfig_is_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "kubeconfig"
    if content is not None:
        path.write_text(content)
    line = _one_error_line(run(tmp_path, "install"))
    assert expected in line


def test_no_kubeconfig_anywhere_is_one_line(tmp_path: Path) -> None:
    line = _one_error_line(run(tmp_path, "install", kubeconfig=False))
    assert "no kubeconfig found" in line and "not running in a pod" in line


def test_bad_flag_exits_2(tmp_path: Path) -> None:
    result = run(tmp_path, "install", "--wait-timeout=soon")
    assert result.returncode == 2
    assert (
        result.stderr.startswith("kube-audit-rest: error: ") and "--wait-timeout" in result.stderr
    )


# ---- kubeconfig resolution, as kubectl does it -------------------------------


def test_kubeconfig_from_environment_and_home(tmp_path: Path, stub: KubeStub) -> None:
    config = tmp_path / "kubeconfig"
    via_env = run(
        tmp_path,
        "install",
        "--dry-run",
        kubeconfig=False,
        env=_env(tmp_path, KUBECONFIG=f"{tmp_path}/missing:{config}"),
    )
    assert via_env.returncode == 0, via_env.stderr
    home_config = tmp_path / "home" / ".kube" / "config"
    home_config.parent.mkdir(parents=True)
    home_config.write_text(config.read_text())
    via_home = run(tmp_path, "install", "--dry-run", kubeconfig=False)
    assert via_home.returncode == 0, via_home.stderr
    assert stub.writes() == []
    assert len({c.path for c in stub.calls}) >= 6


def test_context_flag_picks_a_context(tmp_path: Path, stub: KubeStub) -> None:
    path = tmp_path / "kubeconfig"
    config = yaml.safe_load(path.read_text())
    cluster = {**config["clusters"][0]["cluster"], "server": f"https://127.0.0.1:{free_port()}"}
    dead = {"name": "dead", "cluster": cluster}
    config["clusters"].append(dead)
    config["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": "tester"}})
    config["current-context"] = "dead"
    path.write_text(yaml.safe_dump(config))
    assert run(tmp_path, "install", "--dry-run").returncode == 1
    chosen = run(tmp_path, "install", "--dry-run", "--context=stub")
    assert chosen.returncode == 0, chosen.stderr
    missing = _one_error_line(run(tmp_path, "install", "--context=nope"))
    assert "bad kubeconfig" in missing and "nope" in missing


def test_kubeconfig_source_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    explicit, listed = tmp_path / "a", tmp_path / "b"
    explicit.write_text("x")
    listed.write_text("x")
    assert kubeconfig_source(str(explicit), {"KUBECONFIG": str(listed)}, str(home)) == str(explicit)
    assert kubeconfig_source(None, {"KUBECONFIG": f"{tmp_path}/no:{listed}"}, str(home)) == str(
        listed
    )
    assert kubeconfig_source(None, {}, str(home)) is None  # then in-cluster, if in a pod
    (home / ".kube" / "config").write_text("x")
    assert kubeconfig_source(None, {}, str(home)) == str(home / ".kube" / "config")
    # $KUBECONFIG, when set, replaces ~/.kube/config even if its files are missing.
    assert kubeconfig_source(None, {"KUBECONFIG": f"{tmp_path}/no"}, str(home)) is None
    with pytest.raises(KubeError, match="does not exist"):
        kubeconfig_source(str(tmp_path / "no"), {}, str(home))


# ---- the comparison and readiness rules ----------------------------------------


def test_differences_ignore_server_defaults_but_not_changes() -> None:
    desired = {
        "spec": {
            "replicas": 2,
            "template": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "0.5"}}}]},
            "volumes": [{"name": "v", "emptyDir": {}}],
            "readOnly": False,
        }
    }
    live = {
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 10,
            "template": {
                "containers": [
                    {"name": "a", "resources": {"limits": {"cpu": "500m"}}, "imagePullPolicy": "X"}
                ]
            },
            "volumes": [{"name": "v"}],
        },
        "status": {"replicas": 2},
    }
    assert differences(desired, live) == []
    changed = {**desired, "spec": {**desired["spec"], "replicas": 3}}
    assert differences(changed, live) == ["spec.replicas"]
    fewer = {"spec": {**desired["spec"], "volumes": []}}
    assert differences(fewer, live) == ["spec.volumes"]
    assert differences({"a": True}, {"a": 1}) == ["a"]


def test_string_data_is_compared_as_data() -> None:
    secret = {"kind": "Secret", "stringData": {"k": "v"}, "data": {"j": "dw=="}}
    assert normalize(secret) == {"kind": "Secret", "data": {"j": "dw==", "k": "dg=="}}


@pytest.mark.parametrize(
    ("status", "generation", "ready"),
    [
        ({}, 1, False),
        (
            {"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2},
            1,
            True,
        ),
        (
            {"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2},
            2,
            False,
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 1, "replicas": 2, "availableReplicas": 2},
            2,
            False,
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2},
            2,
            False,
        ),
        (
            {"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1},
            2,
            False,
        ),
    ],
)
def test_deployment_progress(status: dict[str, int], generation: int, ready: bool) -> None:
    live = {"metadata": {"generation": generation}, "spec": {"replicas": 2}, "status": status}
    assert deployment_progress(live)[0] is ready


def test_progress_deadline_exceeded_fails_at_once() -> None:
    live = {
        "metadata": {"name": "d", "generation": 1},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "x"}
            ],
        },
    }
    with pytest.raises(KubeError, match="progress deadline"):
        deployment_progress(live)

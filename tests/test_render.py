"""`kube-audit-rest render`: what it prints is valid Kubernetes and meets the contract."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from tests.conftest import StartServer
from tests.k8s_support import b64decode, by_kind, check_all, load_yaml_stream, render, run_cli
from tests.support import Pair, review

APPLY_ORDER = [
    "Namespace",
    "Secret",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "ValidatingWebhookConfiguration",
]


@pytest.fixture(scope="module")
def default_objects() -> list[dict[str, Any]]:
    return render()


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _args(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in _container(deployment)["args"])


def test_prints_every_object_in_apply_order_and_each_is_valid(
    default_objects: list[dict[str, Any]],
) -> None:
    assert [obj["kind"] for obj in default_objects] == APPLY_ORDER
    check_all(default_objects)


def test_ca_bundle_verifies_the_serving_certificate_for_the_service_name(
    default_objects: list[dict[str, Any]],
) -> None:
    objects = by_kind(default_objects)
    webhook = objects["ValidatingWebhookConfiguration"]["webhooks"][0]
    secret = objects["Secret"]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["namespace"] == "kube-audit-rest"
    roots = x509.load_pem_x509_certificates(b64decode(webhook["clientConfig"]["caBundle"]))
    assert b64decode(secret["data"]["ca.crt"]) == b64decode(webhook["clientConfig"]["caBundle"])
    leaf = x509.load_pem_x509_certificate(b64decode(secret["data"]["tls.crt"]))
    key = serialization.load_pem_private_key(b64decode(secret["data"]["tls.key"]), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert key.public_key().public_bytes(der, spki) == leaf.public_key().public_bytes(der, spki)

    service = webhook["clientConfig"]["service"]
    host = f"{service['name']}.{service['namespace']}.svc"
    assert host == "kube-audit-rest.kube-audit-rest.svc"
    store = verification.Store(roots)

    def verify(name: str) -> None:
        verifier = (
            verification.PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        )
        verifier.verify(leaf, [])

    verify(host)
    verify(host + ".cluster.local")
    with pytest.raises(verification.VerificationError):
        verify("kube-audit-rest.default.svc")


def test_webhook_configuration_contract(default_objects: list[dict[str, Any]]) -> None:
    objects = by_kind(default_objects)
    config = objects["ValidatingWebhookConfiguration"]
    (webhook,) = config["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 1
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1", "v1beta1"]
    (rule,) = webhook["rules"]
    assert rule["operations"] == ["*"]
    assert rule["apiGroups"] == ["*"] and rule["apiVersions"] == ["*"]
    assert rule["resources"] == ["*/*"]  # all resources and their subresources
    assert rule["scope"] == "*"
    assert webhook["namespaceSelector"] == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-audit-rest"],
            }
        ]
    }
    # The webhook reaches the container's HTTPS port through the Service.
    target = webhook["clientConfig"]["service"]
    assert target["path"] == "/log-request"
    service = objects["Service"]
    assert (target["name"], target["namespace"]) == (
        service["metadata"]["name"],
        service["metadata"]["namespace"],
    )
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == target["port"]]
    container = _container(objects["Deployment"])
    (container_port,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert container_port["containerPort"] == int(_args(objects["Deployment"])["server-port"])
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_deployment_is_locked_down(default_objects: list[dict[str, Any]]) -> None:
    deployment = by_kind(default_objects)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert pod["automountServiceAccountToken"] is False
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == 255999 and context["runAsGroup"] == 255999
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == 255999
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "metrics",
        "scheme": "HTTP",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (metrics,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == 55555 == int(_args(deployment)["metrics-port"])

    # Writable: only the log volume and $TMPDIR, both emptyDirs with a size limit.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    writable = {
        m["name"]: m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")
    }
    assert writable == {"logs": "/var/log/kube-audit-rest", "tmp": "/tmp"}
    assert {"name": "TMPDIR", "value": "/tmp"} in container["env"]
    assert (
        volumes["tls"]["secret"]["secretName"]
        == by_kind(default_objects)["Secret"]["metadata"]["name"]
    )
    args = _args(deployment)
    assert args["logger-filename"].startswith("/var/log/kube-audit-rest/")
    assert (args["cert-filename"], args["cert-key-filename"]) == (
        "/etc/tls/tls.crt",
        "/etc/tls/tls.key",
    )
    size, backups = int(args["logger-max-size"]), int(args["logger-max-backups"])
    assert volumes["logs"]["emptyDir"]["sizeLimit"] == f"{size * (backups + 1)}Mi" == "1000Mi"
    assert "sizeLimit" in volumes["tmp"]["emptyDir"]

    pdb = by_kind(default_objects)["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_options_shape_the_manifests() -> None:
    objects = render(
        "--namespace=audit",
        "--service=recorder",
        "--image=registry.example/kar:1.2",
        "--replicas=3",
        "--operations=create,UPDATE",
        "--resources=pods,deployments,pods/exec",
        "--skip-namespaces=kube-system,audit,flux-system",
        "--failure-policy=Fail",
        "--timeout=5",
        "--service-monitor",
        "--logger-max-size=100",
        "--logger-max-backups=4",
    )
    assert [obj["kind"] for obj in objects] == [
        *APPLY_ORDER[:-1],
        "ServiceMonitor",
        APPLY_ORDER[-1],
    ]
    check_all(objects)
    kinds = by_kind(objects)
    assert kinds["Namespace"]["metadata"]["name"] == "audit"
    for obj in objects[1:-1]:
        assert obj["metadata"]["namespace"] == "audit", obj["kind"]
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    assert _container(deployment)["image"] == "registry.example/kar:1.2"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["logs"]["emptyDir"]["sizeLimit"] == "500Mi"  # 100 x (4 + 1)
    assert (_args(deployment)["logger-max-size"], _args(deployment)["logger-max-backups"]) == (
        "100",
        "4",
    )
    (webhook,) = kinds["ValidatingWebhookConfiguration"]["webhooks"]
    assert webhook["clientConfig"]["service"]["name"] == "recorder"
    assert webhook["clientConfig"]["service"]["namespace"] == "audit"
    assert webhook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert webhook["rules"][0]["resources"] == ["pods", "deployments", "pods/exec"]
    assert webhook["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "audit",
        "kube-system",
        "flux-system",
    ]
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["timeoutSeconds"] == 5
    monitor = kinds["ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        kinds["Service"]["metadata"]["labels"].items()
    )
    leaf = x509.load_pem_x509_certificate(b64decode(kinds["Secret"]["data"]["tls.crt"]))
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "recorder.audit.svc" in san.get_values_for_type(x509.DNSName)


def test_cert_dir_puts_those_files_in_the_secret_and_bundle(tmp_path: Path) -> None:
    created = run_cli("certs", f"--out-dir={tmp_path}")
    assert created.returncode == 0, created.stderr
    kinds = by_kind(render(f"--cert-dir={tmp_path}"))
    data = kinds["Secret"]["data"]
    for name in ("ca.crt", "tls.crt", "tls.key"):
        assert b64decode(data[name]) == (tmp_path / name).read_bytes()
    bundle = kinds["ValidatingWebhookConfiguration"]["webhooks"][0]["clientConfig"]["caBundle"]
    assert bundle + "\n" == created.stdout
    assert "ca.key" not in data


def test_two_renders_without_cert_dir_get_fresh_pairs() -> None:
    first, second = (by_kind(render())["Secret"]["data"]["tls.key"] for _ in range(2))
    assert first != second


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        (["--service=other"], "kube-audit-rest.kube-audit-rest.svc"),
        (None, "cannot read"),
    ],
)
def test_cert_dir_that_would_not_be_trusted_is_refused(
    tmp_path: Path, setup: list[str] | None, needle: str
) -> None:
    if setup is not None:
        assert run_cli("certs", f"--out-dir={tmp_path}", *setup).returncode == 0
    result = run_cli("render", f"--cert-dir={tmp_path}")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kube-audit-rest: error: ")
    assert needle in lines[0]


def test_cert_dir_with_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in (one, two):
        assert run_cli("certs", f"--out-dir={folder}").returncode == 0
    (one / "tls.key").write_bytes((two / "tls.key").read_bytes())
    result = run_cli("render", f"--cert-dir={one}")
    assert result.returncode == 2
    assert "does not belong" in result.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--replicas=0"], "--replicas"),
        (["--timeout=31"], "--timeout"),
        (["--timeout=0.5"], "--timeout"),
        (["--failure-policy=Maybe"], "--failure-policy"),
        (["--operations=READ"], "--operations"),
        (["--operations=*,CREATE"], "--operations"),
        (["--resources=*/*,pods"], "--resources"),
        (["--resources=Pods!"], "--resources"),
        (["--namespace=UPPER"], "--namespace"),
        (["--skip-namespaces=ok,not_ok"], "--skip-namespaces"),
        (["--logger-max-backups=0"], "--logger-max-backups"),
        (["--image-pull-policy=Sometimes"], "--image-pull-policy"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_options_give_one_error_line_and_exit_2(args: list[str], needle: str) -> None:
    result = run_cli("render", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kube-audit-rest: error: ")
    assert needle in lines[0]


def test_help_lists_the_manifest_options() -> None:
    result = run_cli("render", "--help")
    assert result.returncode == 0
    for flag in ("--namespace", "--image", "--replicas", "--operations", "--resources"):
        assert flag in result.stdout
    assert load_yaml_stream("---\n") == []


def test_rendered_pod_serves_with_its_args_secret_and_ca_bundle(
    tmp_path: Path, start: StartServer
) -> None:
    """Run the server with the Deployment's args and the Secret's files (paths moved
    under tmp_path, ports from the test): the webhook answers a client that trusts
    only the caBundle, for the Service name, and the probe paths answer 200."""
    kinds = by_kind(render())
    deployment = kinds["Deployment"]
    container = _container(deployment)
    tls_dir, log_dir = tmp_path / "etc-tls", tmp_path / "logs"
    tls_dir.mkdir()
    log_dir.mkdir()
    for name, value in kinds["Secret"]["data"].items():
        (tls_dir / name).write_bytes(b64decode(value))
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    args = [
        arg.replace(mounts["tls"], str(tls_dir)).replace(mounts["logs"], str(log_dir))
        for arg in container["args"]
        if not arg.startswith(("--server-port=", "--metrics-port="))  # the test's ports
    ]
    bundle = tmp_path / "bundle.pem"
    webhook = kinds["ValidatingWebhookConfiguration"]["webhooks"][0]
    bundle.write_bytes(b64decode(webhook["clientConfig"]["caBundle"]))
    pair = Pair(bundle, tls_dir / "tls.crt", tls_dir / "tls.key", 0.0)
    server = start(*args, pair=pair, env={"TMPDIR": str(tmp_path)})

    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        status, _ = server.metrics_text(container[probe]["httpGet"]["path"])
        assert status == 200, probe
    context = ssl.create_default_context(cafile=str(bundle))
    service = webhook["clientConfig"]["service"]
    hostname = f"{service['name']}.{service['namespace']}.svc"
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.sock = context.wrap_socket(raw, server_hostname=hostname)
        conn.request(
            "POST",
            service["path"],
            body=review("pod-1"),
            headers={"Content-Type": "application/json"},
        )
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
    finally:
        conn.close()
        raw.close()
    log_file = Path(_args(deployment)["logger-filename"].replace(mounts["logs"], str(log_dir)))
    assert [json.loads(line)["request"]["uid"] for line in log_file.read_text().splitlines()] == [
        "pod-1"
    ]


def test_readme_documents_every_render_option() -> None:
    import argparse

    from kube_audit_rest.manifests import add_render_arguments

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Manifests: `kube-audit-rest render`", 1)[1].split("\n### ", 1)[0]
    parser = argparse.ArgumentParser()
    add_render_arguments(parser)
    flags = [f for action in parser._actions for f in action.option_strings if f != "-h"]
    flags.remove("--help")
    missing = [flag for flag in flags if f"| `{flag}" not in section]
    assert not missing, f"README's render table lacks {missing}"


def test_closed_stdout_is_one_error_line_not_a_traceback() -> None:
    """The reader closes the pipe at once, long before the CLI has started and
    made its certificate, so the write hits a closed pipe."""
    import subprocess

    from tests.support import CLI

    with subprocess.Popen(
        [CLI, "render"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == 2
    assert stderr.splitlines()[-1] == (
        "kube-audit-rest: error: stdout was closed before all manifests were written"
    )
    assert "Traceback" not in stderr

"""Checks for Kubernetes manifests: OpenAPI schemas, client models, certificates.

Used by the render, k8s/ and (other streams') example tests: every object we
ship must pass the API server's published schema (offline, kubernetes-validate)
and load into the kubernetes client's models without losing a field.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from tests.support import CLI

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "k8s"
# The oldest Kubernetes version we claim to support and the newest schema shipped.
SCHEMA_VERSIONS = ("1.25", kubernetes_validate.latest_version())

MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): (
        "V1ValidatingWebhookConfiguration"
    ),
}
# Custom resources: no published schema, no client model; checked field by field.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load_yaml_stream(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def validate_schema(obj: dict[str, Any]) -> None:
    """Strict (no unknown fields) validation against the published OpenAPI schemas."""
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            raise AssertionError(
                f"{obj['kind']} {obj['metadata'].get('name')} is invalid for Kubernetes "
                f"{version}: {error.message} at {list(error.path)}"
            ) from None


def load_model(obj: dict[str, Any]) -> Any:
    """Deserialize into the client's model; serializing back must give *obj* again."""
    model_name = MODELS[(obj["apiVersion"], obj["kind"])]
    api = client.ApiClient()
    # The private deserializer takes a dict; the public one needs an HTTP
    # response, and its signature differs between client versions.
    deserialize: Callable[[Any, str], Any] = getattr(api, "_ApiClient__deserialize")  # noqa: B009
    sanitize: Callable[[Any], Any] = api.sanitize_for_serialization
    model = deserialize(obj, model_name)
    assert type(model).__name__ == model_name
    assert sanitize(model) == obj, f"{model_name} lost or changed fields"
    return model


def check_object(obj: dict[str, Any]) -> None:
    key = (obj["apiVersion"], obj["kind"])
    if key in CUSTOM_KINDS:
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        return
    assert key in MODELS, f"no check for {key}"
    validate_schema(obj)
    load_model(obj)


def check_all(objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        check_object(obj)


def by_kind(objects: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in result, f"two {obj['kind']} objects"
        result[obj["kind"]] = obj
    return result


def b64decode(text: str) -> bytes:
    """Base64 as the API server reads it: Go's decoder skips CR and LF."""
    return base64.b64decode(text.replace("\n", "").replace("\r", ""), validate=True)


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False
    )


def render(*args: str) -> list[dict[str, Any]]:
    result = run_cli("render", *args)
    assert result.returncode == 0, result.stderr
    return load_yaml_stream(result.stdout)


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (apt-get install -y kubectl)")
    return path


def kustomize(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return load_yaml_stream(result.stdout)

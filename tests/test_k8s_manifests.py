"""k8s/: valid on its own, and `kubectl apply -k k8s/` applies what `render` prints.

The kustomize tests need kubectl (Debian package ``kubectl``) and skip without
it. They build a copy of k8s/ after ``kube-audit-rest certs --out-dir tls``,
exactly as the README tells users to, and compare with ``render --cert-dir``
on the same files: the objects must be identical, certificates included.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_support import (
    K8S_DIR,
    REPO,
    b64decode,
    by_kind,
    check_all,
    kustomize,
    load_yaml_stream,
    render,
    run_cli,
)

RESOURCE_FILES = ("namespace.yaml", "service.yaml", "deployment.yaml", "pdb.yaml", "webhook.yaml")


def _normalise_base64(obj: dict[str, Any]) -> dict[str, Any]:
    """kustomize writes base64 wrapped at 70 columns; the API server (Go's
    decoder) skips the line breaks, the Python client's model does not: compare
    and load the unwrapped form."""
    copy: dict[str, Any] = yaml.safe_load(yaml.safe_dump(obj))
    if copy["kind"] == "Secret":
        copy["data"] = {k: v.replace("\n", "") for k, v in copy["data"].items()}
    for webhook in copy.get("webhooks", []):
        bundle = webhook["clientConfig"]["caBundle"]
        webhook["clientConfig"]["caBundle"] = bundle.replace("\n", "")
    return copy


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A copy of k8s/ with a fresh certificate in tls/, built by kubectl kustomize."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, folder, ignore=shutil.ignore_patterns("tls"))
    created = run_cli("certs", f"--out-dir={folder / 'tls'}")
    assert created.returncode == 0, created.stderr
    return folder, [_normalise_base64(obj) for obj in kustomize(folder)]


def test_every_file_is_valid_on_its_own() -> None:
    objects = []
    for name in RESOURCE_FILES:
        docs = load_yaml_stream((K8S_DIR / name).read_text())
        assert len(docs) == 1, name
        objects.extend(docs)
    check_all(objects)


def test_kustomize_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["resources"] == list(RESOURCE_FILES)
    listed = {*RESOURCE_FILES, "kustomization.yaml", "log-shipper-patch.example.yaml"}
    assert {p.name for p in K8S_DIR.iterdir() if p.is_file()} <= listed


def test_apply_k_gives_exactly_what_render_prints(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    folder, objects = built
    check_all(objects)
    rendered = render(f"--cert-dir={folder / 'tls'}")
    assert by_kind(objects) == by_kind(rendered)
    # kubectl applies in its own order; the webhook configuration still comes last.
    assert objects[-1]["kind"] == "ValidatingWebhookConfiguration"


def test_ca_bundle_comes_from_the_generated_ca(built: tuple[Path, list[dict[str, Any]]]) -> None:
    folder, objects = built
    webhook = by_kind(objects)["ValidatingWebhookConfiguration"]["webhooks"][0]
    assert (
        b64decode(webhook["clientConfig"]["caBundle"]) == (folder / "tls" / "ca.crt").read_bytes()
    )
    secret = by_kind(objects)["Secret"]
    assert b64decode(secret["data"]["tls.key"]) == (folder / "tls" / "tls.key").read_bytes()
    assert "ca.key" not in secret["data"]


def test_log_shipper_patch_adds_a_valid_read_only_sidecar(
    built: tuple[Path, list[dict[str, Any]]],
) -> None:
    folder, _ = built
    kustomization = folder / "kustomization.yaml"
    text = kustomization.read_text()
    kustomization.write_text(text + "\npatches:\n  - path: log-shipper-patch.example.yaml\n")
    objects = [_normalise_base64(obj) for obj in kustomize(folder)]
    check_all(objects)
    pod = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"kube-audit-rest", "log-shipper"}
    shipper = containers["log-shipper"]
    assert shipper["volumeMounts"] == [
        {"name": "logs", "mountPath": "/var/log/kube-audit-rest", "readOnly": True}
    ]
    assert shipper["securityContext"] == containers["kube-audit-rest"]["securityContext"]


def test_without_certificates_kustomize_says_what_is_missing(tmp_path: Path) -> None:
    from tests.k8s_support import kubectl

    folder = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, folder, ignore=shutil.ignore_patterns("tls"))
    result = subprocess.run(
        [kubectl(), "kustomize", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "tls/ca.crt" in result.stderr


def test_generated_key_material_stays_out_of_git() -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        [git, "check-ignore", "k8s/tls/tls.key", "k8s/tls/ca.key"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.split() == ["k8s/tls/tls.key", "k8s/tls/ca.key"]

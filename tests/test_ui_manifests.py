"""The optional UI manifests: `render --ui` and the kustomize component k8s/ui/.

Validated offline against the Kubernetes schemas (tests/k8s_support.py); the
kustomize comparison needs kubectl and skips without it. The sidecar's args
are run for real (paths moved into the test's folder) to show they serve.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.k8s_support import K8S_DIR, check_all, kustomize, render, run_cli
from tests.test_k8s_manifests import _normalise_base64
from tests.ui_support import running_ui


def _keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


def _sorted_pod_lists(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            for field in ("containers", "volumes"):
                pod[field] = sorted(pod[field], key=lambda item: item["name"])
    return objects


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_ui_is_off_by_default() -> None:
    objects = render()
    assert [c["name"] for c in _pod(objects)["containers"]] == ["kube-audit-rest"]
    assert ("Service", "kube-audit-rest-ui") not in _keyed(objects)


def test_render_ui_adds_a_read_only_loopback_sidecar_and_its_service() -> None:
    objects = render("--ui")
    check_all(objects)
    pod = _pod(objects)
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"kube-audit-rest", "ui"}
    ui = containers["ui"]
    assert ui["image"] == containers["kube-audit-rest"]["image"]
    assert ui["args"][0] == "ui" and "--address=127.0.0.1" in ui["args"]
    mounts = {m["name"]: m for m in ui["volumeMounts"]}
    assert mounts["logs"] == {
        "name": "logs",
        "mountPath": "/var/log/kube-audit-rest",
        "readOnly": True,
    }
    assert not mounts["ui-index"].get("readOnly")
    assert ui["securityContext"] == containers["kube-audit-rest"]["securityContext"]
    assert ui["securityContext"]["readOnlyRootFilesystem"] is True
    assert ui["resources"]["limits"]["memory"] == "256Mi"
    volumes = {v["name"] for v in pod["volumes"]}
    assert {"ui-index", "ui-tmp", "logs"} <= volumes
    service = _keyed(objects)[("Service", "kube-audit-rest-ui")]
    assert service["spec"]["ports"] == [
        {"name": "ui", "port": 8080, "targetPort": "ui", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == pod_labels(objects)


def pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_sidecar_args_serve_the_ui(tmp_path: Path) -> None:
    ui = next(c for c in _pod(render("--ui"))["containers"] if c["name"] == "ui")
    log = tmp_path / "kube-audit-rest.log"
    log.write_bytes(b"")
    args = [
        a.replace("/var/log/kube-audit-rest", str(tmp_path)).replace(
            "/var/lib/kube-audit-rest-ui", str(tmp_path / "index")
        )
        for a in ui["args"]
        if not a.startswith("--port=")
    ]
    from tests.support import CLI

    with running_ui([CLI, *args]) as server:
        assert server.get("/")[0] == 200
    assert (tmp_path / "index" / "index.sqlite3").exists()


def test_kustomize_component_gives_what_render_ui_prints(tmp_path: Path) -> None:
    folder = tmp_path / "k8s"
    shutil.copytree(K8S_DIR, folder, ignore=shutil.ignore_patterns("tls"))
    created = run_cli("certs", f"--out-dir={folder / 'tls'}")
    assert created.returncode == 0, created.stderr
    kustomization = folder / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "\ncomponents:\n  - ui\n")
    objects = [_normalise_base64(obj) for obj in kustomize(folder)]
    check_all(objects)
    rendered = render("--ui", f"--cert-dir={folder / 'tls'}")
    # A strategic merge patch puts its list items first; order aside, the same.
    assert [c["name"] for c in _pod(objects)["containers"]] == ["ui", "kube-audit-rest"]
    assert _keyed(_sorted_pod_lists(objects)) == _keyed(_sorted_pod_lists(rendered))
    annotations = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "kube-audit-rest"
    # The component is not in the default build.
    default = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert "components" not in default

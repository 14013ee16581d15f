"""Request bodies for the benchmark: AdmissionReview templates with a uid placeholder.

Each template is one compact JSON document on one line in which every occurrence
of the original quoted ``request.uid`` value is replaced by ``"@@UID@@"``. The
load generators substitute a unique uid per request, so every acknowledged
request can be found again in the audit log (the loss check).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PLACEHOLDER = "@@UID@@"
MEBIBYTE = 1024 * 1024
CORPUS_FILE = "kube-audit-rest.log"


def template_from_line(line: str) -> str | None:
    """The line with its quoted request.uid replaced by the placeholder, or None."""
    try:
        document = json.loads(line)
    except ValueError:
        return None
    request = document.get("request") if isinstance(document, dict) else None
    uid = request.get("uid") if isinstance(request, dict) else None
    if not isinstance(uid, str) or not uid:
        return None
    quoted = json.dumps(uid)
    return line.replace(quoted, f'"{PLACEHOLDER}"')


def load_corpus(folder: Path) -> list[str]:
    """Templates from ``folder/kube-audit-rest.log`` (one AdmissionReview a line)."""
    path = folder / CORPUS_FILE
    if not path.is_file():
        return []
    templates: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            template = template_from_line(raw.strip())
            if template is not None:
                templates.append(template)
    return templates


def _synthetic_review(index: int, operation: str, kind: str, obj: Any) -> dict[str, Any]:
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": f"synthetic-{index}",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": kind.lower() + "s"},
            "namespace": "default",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:bench",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


def _config_map(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"bench-{index}", "namespace": "default", "labels": {"app": "x"}},
        "data": {f"key-{k}": f"value-{index}-{k}" * 8 for k in range(12)},
    }


def _pod(index: int) -> dict[str, Any]:
    container = {
        "name": "app",
        "image": "registry.example/app:1.2.3",
        "args": ["--port=8080", "--verbose"],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "env": [{"name": f"VAR_{k}", "value": str(k) * 10} for k in range(10)],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{index}", "namespace": "default"},
        "spec": {"containers": [container], "serviceAccountName": "default"},
    }


def synthetic_templates(count: int = 16) -> list[str]:
    """Generated AdmissionReviews (about 1-3 KB, like real ones) when no corpus exists."""
    templates: list[str] = []
    for index in range(count):
        if index % 2:
            review = _synthetic_review(index, "CREATE", "Pod", _pod(index))
        else:
            review = _synthetic_review(index, "UPDATE", "ConfigMap", _config_map(index))
        line = json.dumps(review, separators=(",", ":"))
        template = template_from_line(line)
        assert template is not None
        templates.append(template)
    return templates


def large_template(templates: list[str], size: int = MEBIBYTE) -> str:
    """A template padded to ``size`` bytes with a string field inside request.object."""
    base: dict[str, Any] | None = None
    for template in templates:
        document = json.loads(template)
        if isinstance(document["request"].get("object"), dict):
            base = document
            break
    if base is None:
        base = json.loads(synthetic_templates(1)[0])
    base["request"]["object"]["benchPadding"] = ""
    empty = json.dumps(base, separators=(",", ":"))
    base["request"]["object"]["benchPadding"] = "x" * max(0, size - len(empty.encode()))
    return json.dumps(base, separators=(",", ":"))


def uid_for(run_id: str, worker: int, counter: int) -> str:
    """The uid format shared by the Lua script and the Python client."""
    return f"bench-{run_id}-{worker}-{counter}"


def fill(template: str, uid: str) -> bytes:
    return template.replace(PLACEHOLDER, uid).encode()

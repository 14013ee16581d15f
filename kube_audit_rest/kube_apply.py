"""Apply and remove plain object dicts on a cluster, the way ``kubectl apply`` reports it.

The engine works on the same dicts ``render`` prints, so what ``install``
applies is exactly what a GitOps user would commit. For each object it GETs
the live copy first and compares: when every field we set already has the
value we want (the API server's defaults and status are ignored), nothing is
sent and the object is reported ``unchanged``. Otherwise it sends a
server-side apply patch (``application/apply-patch+yaml``) with our field
manager, so fields we set before and no longer set are removed too, and
fields other managers own are left alone.

Only the API paths of the kinds we render are known (``RESOURCES``); the
kubernetes client's generated API classes are not used so that any kind,
including a ServiceMonitor CRD, goes through one code path.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote

FIELD_MANAGER = "kube-audit-rest"
# API groups served by custom resource definitions, not by every cluster.
CUSTOM_GROUPS = ("monitoring.coreos.com",)
# (connect, read) seconds for one API request.
REQUEST_TIMEOUT = (10.0, 30.0)

Obj = dict[str, Any]


class KubeError(Exception):
    """An API or connection failure, as one line a user can act on."""


@dataclass(frozen=True)
class Resource:
    """Where the objects of one kind live in the REST API."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def collection(self, namespace: str | None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced:
            if not namespace:
                raise KubeError(f"{self.plural} need a metadata.namespace")
            base += f"/namespaces/{quote(namespace, safe='')}"
        return f"{base}/{self.plural}"


RESOURCES: dict[tuple[str, str], Resource] = {
    ("v1", "Namespace"): Resource("", "v1", "namespaces", False),
    ("v1", "Secret"): Resource("", "v1", "secrets", True),
    ("v1", "ConfigMap"): Resource("", "v1", "configmaps", True),
    ("v1", "Service"): Resource("", "v1", "services", True),
    ("v1", "ServiceAccount"): Resource("", "v1", "serviceaccounts", True),
    ("apps/v1", "Deployment"): Resource("apps", "v1", "deployments", True),
    ("policy/v1", "PodDisruptionBudget"): Resource("policy", "v1", "poddisruptionbudgets", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): Resource(
        "networking.k8s.io", "v1", "networkpolicies", True
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): Resource(
        "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", False
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): Resource(
        "monitoring.coreos.com", "v1", "servicemonitors", True
    ),
}


def resource_of(obj: Mapping[str, Any]) -> Resource:
    key = (str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    try:
        return RESOURCES[key]
    except KeyError:
        raise KubeError(f"do not know how to apply {key[1]} of apiVersion {key[0]}") from None


def describe(obj: Mapping[str, Any]) -> str:
    """The object as kubectl names it: ``deployment.apps/kube-audit-rest``."""
    resource = resource_of(obj)
    kind = str(obj["kind"]).lower()
    name = obj.get("metadata", {}).get("name", "?")
    return f"{kind}.{resource.group}/{name}" if resource.group else f"{kind}/{name}"


def _name(obj: Mapping[str, Any]) -> str:
    name = obj.get("metadata", {}).get("name")
    if not isinstance(name, str) or not name:
        raise KubeError(f"{obj.get('kind', 'object')} without metadata.name")
    return name


def _path(obj: Mapping[str, Any]) -> str:
    namespace = obj.get("metadata", {}).get("namespace")
    collection = resource_of(obj).collection(namespace)
    return f"{collection}/{quote(_name(obj), safe='')}"


def normalize(obj: Mapping[str, Any]) -> Obj:
    """The object as the API server will store it, where that is knowable offline.

    A Secret's ``stringData`` is write-only: the server merges it into
    ``data`` (base64). Doing the same here lets the comparison see a match.
    """
    result: Obj = json.loads(json.dumps(obj))
    if result.get("kind") == "Secret" and result.get("stringData"):
        data = dict(result.get("data") or {})
        for key, value in result.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        result["data"] = data
    return result


_QUANTITY_PARENTS = frozenset({"limits", "requests"})
_QUANTITY_KEYS = frozenset({"sizeLimit"})


def _same_quantity(left: str, right: str) -> bool:
    from kubernetes import utils

    parse: Callable[[str], Any] = utils.parse_quantity
    try:
        return bool(parse(left) == parse(right))
    except ValueError:
        return False


def _is_empty(value: Any) -> bool:
    # The API server omits zero values of non-pointer fields (omitempty).
    return value is None or value in ({}, [], "", False, 0)


def differences(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths where *live* lacks a value of *desired*; extra live fields are ignored."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        found: list[str] = []
        for key, value in desired.items():
            child = f"{path}.{key}" if path else key
            if key not in live:
                if not _is_empty(value):
                    found.append(child)
                continue
            if (
                isinstance(value, str)
                and isinstance(live[key], str | int | float)
                and (path.rsplit(".", 1)[-1] in _QUANTITY_PARENTS or key in _QUANTITY_KEYS)
            ):
                if value != live[key] and not _same_quantity(value, str(live[key])):
                    found.append(child)
                continue
            found.extend(differences(value, live[key], child))
        return found
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        found = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            found.extend(differences(want, have, f"{path}[{index}]"))
        return found
    if isinstance(desired, bool) or isinstance(live, bool):
        return [] if desired is live else [path]
    return [] if desired == live else [path]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Cluster:
    """A thin REST client over a configured ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client: Any, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self.host = str(api_client.configuration.host)

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Obj]:
        """Send one request; return (status, decoded JSON body) or raise KubeError."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            serialized = self.api.param_serialize(
                method,
                path,
                query_params=list(query or []),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(*serialized, _request_timeout=REQUEST_TIMEOUT)
            raw = response.read()
        except ApiException as error:  # the client's wrapper around TLS failures
            raise KubeError(
                f"cannot talk to the API server at {self.host}: {_one_line(str(error.reason))}"
            ) from None
        except urllib3.exceptions.HTTPError as error:
            reason = getattr(error, "reason", None) or error
            raise KubeError(
                f"cannot reach the API server at {self.host}: {_one_line(str(reason))}"
            ) from None
        status = int(response.status)
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {"message": raw.decode("utf-8", "replace")[:200]}
        if not isinstance(decoded, dict):
            decoded = {"message": str(decoded)[:200]}
        return status, decoded

    def get(self, obj: Mapping[str, Any]) -> Obj | None:
        status, body = self.request("GET", _path(obj))
        if status == 404:
            return None
        _raise_unless_ok(status, body, "read", obj)
        return body

    def apply(self, obj: Mapping[str, Any], dry_run: bool = False) -> Obj:
        query = [("fieldManager", self.field_manager), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        status, body = self.request(
            "PATCH", _path(obj), query, dict(obj), "application/apply-patch+yaml"
        )
        _raise_unless_ok(status, body, "apply", obj)
        return body

    def delete(self, obj: Mapping[str, Any], dry_run: bool = False) -> bool:
        """Delete; False when it was already absent."""
        query = [("dryRun", "All")] if dry_run else []
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        status, body = self.request("DELETE", _path(obj), query, options)
        if status == 404:
            return False
        _raise_unless_ok(status, body, "delete", obj)
        return True


def _raise_unless_ok(
    status: int, body: Mapping[str, Any], verb: str, obj: Mapping[str, Any]
) -> None:
    if 200 <= status < 300:
        return
    message = _one_line(str(body.get("message") or body.get("reason") or "no message"))
    reason = body.get("reason")
    label = f"{status} {reason}" if isinstance(reason, str) and reason else str(status)
    namespace = obj.get("metadata", {}).get("namespace")
    where = f" in namespace {namespace}" if namespace else ""
    hint = ""
    if status == 404 and verb == "apply" and resource_of(obj).group.endswith(CUSTOM_GROUPS):
        hint = f" (is the CustomResourceDefinition for {obj.get('kind')} installed?)"
    raise KubeError(f"cannot {verb} {describe(obj)}{where}: {label}: {message}{hint}")


@dataclass(frozen=True)
class Outcome:
    """What happened to one object: the line printed for it."""

    obj: Obj
    action: str  # created, configured, unchanged, deleted, absent
    detail: str = ""

    def line(self, dry_run: bool) -> str:
        verb = self.action
        if dry_run and verb in ("created", "configured", "deleted"):
            verb = f"would be {verb} (dry run)"
        elif verb == "absent":
            verb = "not found (nothing to delete)"
        text = f"{describe(self.obj)} {verb}"
        return f"{text}: {self.detail}" if self.detail else text


def apply_one(cluster: Cluster, obj: Mapping[str, Any], dry_run: bool = False) -> Outcome:
    """Create or update *obj* unless the live object already matches it."""
    desired = normalize(obj)
    live = cluster.get(desired)
    if live is None:
        if not dry_run:
            cluster.apply(desired)
        return Outcome(desired, "created")
    changed = [p for p in differences(desired, live) if p.split(".")[0] != "status"]
    if not changed:
        return Outcome(desired, "unchanged")
    if not dry_run:
        cluster.apply(desired)
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return Outcome(desired, "configured", f"changed {shown}")


def delete_one(cluster: Cluster, obj: Mapping[str, Any], dry_run: bool = False) -> Outcome:
    found = cluster.get(obj) is not None if dry_run else cluster.delete(obj)
    return Outcome(dict(obj), "deleted" if found else "absent")


def deployment_progress(live: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment's rollout is complete, as ``kubectl rollout status`` judges it."""
    metadata = cast(Mapping[str, Any], live.get("metadata") or {})
    spec = cast(Mapping[str, Any], live.get("spec") or {})
    status = cast(Mapping[str, Any], live.get("status") or {})
    wanted = int(spec.get("replicas", 1))
    generation = int(metadata.get("generation", 0))
    if int(status.get("observedGeneration", 0)) < generation:
        return False, "waiting for the deployment controller to see the new spec"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            raise KubeError(
                f"deployment {metadata.get('name')} exceeded its progress deadline: "
                f"{_one_line(str(condition.get('message', '')))}"
            )
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    if updated < wanted:
        return False, f"{updated} of {wanted} replicas updated"
    if total > updated:
        return False, f"{total - updated} old replicas pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas available"
    return True, f"{available}/{wanted} replicas available"


def wait_for_deployment(
    cluster: Cluster,
    obj: Mapping[str, Any],
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the rollout is complete; return the final progress text."""
    deadline = clock() + timeout
    progress = "not found"
    while True:
        live = cluster.get(obj)
        if live is not None:
            done, progress = deployment_progress(live)
            if done:
                return progress
        remaining = deadline - clock()
        if remaining <= 0:
            why = pod_problems(cluster, live or obj)
            raise KubeError(
                f"{describe(obj)} was not ready within {timeout:g}s ({progress})"
                + (f"; {why}" if why else "")
            )
        sleep(min(interval, remaining))


def _pod_problem(pod: Mapping[str, Any]) -> str:
    """The first reason a pod is not ready, from its container statuses and conditions."""
    status = cast(Mapping[str, Any], pod.get("status") or {})
    statuses = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in statuses:
        state = container.get("state") or {}
        for phase in ("waiting", "terminated"):
            detail = state.get(phase)
            if detail and detail.get("reason") not in (None, "Completed"):
                message = _one_line(str(detail.get("message", "")))[:200]
                text = f"container {container.get('name')} {detail['reason']}"
                return f"{text}: {message}" if message else text
        if container.get("ready") is False and (container.get("restartCount") or 0) > 0:
            return f"container {container.get('name')} restarted {container['restartCount']} times"
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason"):
            message = _one_line(str(condition.get("message", "")))[:200]
            return f"{condition['type']}: {condition['reason']} {message}".rstrip()
    return ""


def pod_problems(cluster: Cluster, deployment: Mapping[str, Any]) -> str:
    """What the Deployment's pods report (best effort: '' when the pods cannot be listed)."""
    metadata = deployment.get("metadata") or {}
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selector or not metadata.get("namespace"):
        return ""
    path = Resource("", "v1", "pods", True).collection(metadata["namespace"])
    query = [("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items())))]
    try:
        status, body = cluster.request("GET", path, query)
    except KubeError:
        return ""
    if status != 200:
        return ""
    pods = body.get("items") or []
    if not pods:
        return "no pods were created (see: kubectl describe replicaset)"
    for pod in pods:
        problem = _pod_problem(pod)
        if problem:
            return f"pod {pod.get('metadata', {}).get('name')}: {problem}"
    return ""


def wait_until_absent(
    cluster: Cluster,
    obj: Mapping[str, Any],
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll until *obj* is gone (a Namespace stays ``Terminating`` while it empties)."""
    deadline = clock() + timeout
    while cluster.get(obj) is not None:
        remaining = deadline - clock()
        if remaining <= 0:
            raise KubeError(f"{describe(obj)} was still being deleted after {timeout:g}s")
        sleep(min(interval, remaining))

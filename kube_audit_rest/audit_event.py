"""An AdmissionReview as an ``audit.k8s.io/v1`` ``Event`` (``--output-format=audit-event``).

The mapping (README, "Audit Event output") follows what kube-apiserver would
have written for the same request, as far as admission shows it: the verb as
``requestinfo`` derives it from the HTTP method (``policy.admission_verbs``
for the PATCH case), ``objectRef`` from the resource the client asked for,
``requestObject`` the body the request carried (the object, or for a delete
its ``DeleteOptions``). Nothing admission does not carry is invented:
``sourceIPs``, ``userAgent``, ``responseStatus`` and ``responseObject`` are
left out. ``requestURI`` (a required field upstream) is rebuilt from the
resource, namespace, name and subresource; its query string is not known.
"""

from __future__ import annotations

import time
from typing import Any

from kube_audit_rest.policy import Level, admission_verbs

API_VERSION = "audit.k8s.io/v1"
SOURCE_ANNOTATION = "kube-audit-rest/source"
SOURCE = "admission-webhook"
DRY_RUN_ANNOTATION = "kube-audit-rest/dry-run"
OPERATION_ANNOTATION = "kube-audit-rest/operation"


def micro_time(epoch_ns: int) -> str:
    """metav1.MicroTime's JSON form: RFC 3339 in UTC with exactly six fractional digits."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{base}.{nanos // 1000:06d}Z"


def _text(mapping: Any, key: str) -> str:
    if not isinstance(mapping, dict):
        return ""
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


def event_verb(request: dict[str, Any]) -> str:
    """The verb kube-apiserver's audit log would show for this admission request.

    CREATE -> create, UPDATE -> update, either with ``options.kind`` =
    ``PatchOptions`` -> patch, DELETE -> delete, CONNECT -> create (the POST
    form; a WebSocket client's GET would show as get, which admission cannot
    tell apart).
    """
    verbs = admission_verbs(request)
    return verbs[0] if verbs else ""


def _user(request: dict[str, Any]) -> dict[str, Any]:
    info = request.get("userInfo")
    user: dict[str, Any] = {}
    if not isinstance(info, dict):
        return user
    for key in ("username", "uid"):
        if isinstance(info.get(key), str) and info[key]:
            user[key] = info[key]
    groups = info.get("groups")
    if isinstance(groups, list):
        user["groups"] = [group for group in groups if isinstance(group, str)]
    extra = info.get("extra")
    if isinstance(extra, dict):
        user["extra"] = {
            key: [value for value in values if isinstance(value, str)]
            for key, values in extra.items()
            if isinstance(values, list)
        }
    return user


def _resource(request: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The resource (group/version/resource) the client asked for, and its subresource."""
    if isinstance(request.get("requestResource"), dict):
        return request["requestResource"], _text(request, "requestSubResource")
    resource = request.get("resource")
    return (resource if isinstance(resource, dict) else {}), _text(request, "subResource")


def _object_ref(request: dict[str, Any]) -> dict[str, str]:
    resource, subresource = _resource(request)
    ref: dict[str, str] = {}
    fields = (
        ("resource", _text(resource, "resource")),
        ("namespace", _text(request, "namespace")),
        ("name", _text(request, "name")),
        ("apiGroup", _text(resource, "group")),
        ("apiVersion", _text(resource, "version")),
        ("subresource", subresource),
    )
    for key, value in fields:
        if value:
            ref[key] = value
    # The object's uid when the object says (objectRef.uid upstream is the
    # persisted object's); resourceVersion is left out: admission only sees
    # the one the client sent, not the one the write produced.
    operation = request.get("operation")
    source = request.get("oldObject") if operation == "DELETE" else request.get("object")
    uid = _text(source.get("metadata") if isinstance(source, dict) else None, "uid")
    if uid:
        ref["uid"] = uid
    return ref


def request_uri(request: dict[str, Any]) -> str:
    """The request's path, as the API server's URL for it would be (no query string)."""
    resource, subresource = _resource(request)
    group, version = _text(resource, "group"), _text(resource, "version")
    parts = ["/api/" + version] if not group else [f"/apis/{group}/{version}"]
    namespace = _text(request, "namespace")
    if namespace and not (group == "" and _text(resource, "resource") == "namespaces"):
        parts.append("/namespaces/" + namespace)
    parts.append("/" + _text(resource, "resource"))
    name = _text(request, "name")
    plain_create = request.get("operation") == "CREATE" and not subresource
    patch = isinstance(request.get("options"), dict) and request["options"].get("kind") == (
        "PatchOptions"
    )
    if name and (not plain_create or patch):
        parts.append("/" + name)
    if subresource:
        parts.append("/" + subresource)
    return "".join(parts)


def _request_object(request: dict[str, Any]) -> Any:
    if request.get("operation") == "DELETE":
        return request.get("options")  # the DeleteOptions the client sent, if any
    return request.get("object")


def from_admission(
    document: dict[str, Any], level: Level, received_ns: int, stage_ns: int
) -> dict[str, Any]:
    """The Event for one (already trimmed and redacted) AdmissionReview document."""
    request: dict[str, Any] = document["request"]
    event: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": API_VERSION,
        "level": level.value,
        "auditID": request["uid"],
        "stage": "ResponseComplete",
        "requestURI": request_uri(request),
        "verb": event_verb(request),
        "user": _user(request),
    }
    ref = _object_ref(request)
    if ref:
        event["objectRef"] = ref
    if level is not Level.METADATA:
        body = _request_object(request)
        if isinstance(body, dict):
            event["requestObject"] = body
    event["requestReceivedTimestamp"] = micro_time(received_ns)
    event["stageTimestamp"] = micro_time(stage_ns)
    annotations = {
        SOURCE_ANNOTATION: SOURCE,
        OPERATION_ANNOTATION: _text(request, "operation"),
        DRY_RUN_ANNOTATION: "true" if request.get("dryRun") is True else "false",
    }
    event["annotations"] = annotations
    return event

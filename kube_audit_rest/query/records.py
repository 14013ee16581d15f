"""One view of a log line, whichever of the two record formats it is in.

* our AdmissionReview line: ``{"apiVersion":...,"kind":"AdmissionReview",
  "request":{...},"requestReceivedTimestamp":"..."}``;
* an ``audit.k8s.io/v1`` ``Event`` line, as the API server's audit backends
  write it (``auditID``, ``verb``, ``user``, ``objectRef``, ``requestObject``,
  ``responseObject``, ``requestReceivedTimestamp``, ...).

Either may carry a top-level ``cluster`` string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from kube_audit_rest.query.timeparse import parse_rfc3339

Json = dict[str, Any]

# Event verbs -> the admission operation the same request would have.
_EVENT_OPERATION = {
    "create": "CREATE",
    "update": "UPDATE",
    "patch": "UPDATE",
    "delete": "DELETE",
    "deletecollection": "DELETE",
}
# Subresources that are streaming connections (admission operation CONNECT).
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
_ADMISSION_VERB = {"CREATE": "create", "DELETE": "delete", "CONNECT": "connect"}
_CONNECT_KIND = {
    "exec": "PodExecOptions",
    "attach": "PodAttachOptions",
    "portforward": "PodPortForwardOptions",
}


class MalformedRecord(ValueError):
    """The line is not a record we can read; the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    """The fields queries filter on and outputs show, plus the line itself."""

    raw: bytes
    document: Json
    format: str  # "admission" or "event"
    time_ns: int | None
    cluster: str | None
    user: str
    groups: tuple[str, ...]
    verb: str
    operation: str
    group: str
    version: str
    resource: str
    subresource: str
    namespace: str
    name: str
    kind: str
    dry_run: bool
    object: Json | None
    old_object: Json | None
    options: Json | None
    response_code: int | None = None

    @property
    def namespaced_name(self) -> str:
        if self.namespace and not is_namespace_resource(self):
            return f"{self.namespace}/{self.name or '-'}"
        return self.name or "-"

    @property
    def resource_path(self) -> str:
        """``pods``, ``apps/deployments``, ``apps/deployments/scale``, ``pods/exec``."""
        parts = [self.group] if self.group else []
        parts.append(self.resource or "-")
        if self.subresource:
            parts.append(self.subresource)
        return "/".join(parts)


def is_namespace_resource(record: Record) -> bool:
    return record.group == "" and record.resource == "namespaces"


def parse_line(raw: bytes) -> Record:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedRecord(_json_error(raw)) from None
    if not isinstance(document, dict):
        raise MalformedRecord("not a JSON object")
    request = document.get("request")
    if isinstance(request, dict):
        return _from_admission(raw, document, request)
    if isinstance(document.get("auditID"), str) or (
        document.get("kind") == "Event"
        and str(document.get("apiVersion", "")).startswith("audit.k8s.io/")
    ):
        return _from_event(raw, document)
    raise MalformedRecord("neither an AdmissionReview nor an audit.k8s.io Event record")


def _json_error(raw: bytes) -> str:
    stripped = raw.rstrip(b"\r\n")
    try:
        orjson.loads(stripped)
    except orjson.JSONDecodeError as error:
        if stripped.startswith(b"{") and not stripped.endswith(b"}"):
            return f"not valid JSON, the line looks cut short ({error})"
        return f"not valid JSON ({error})"
    return "not valid JSON"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _object(value: Any) -> Json | None:
    return value if isinstance(value, dict) else None


def _time(document: Json) -> int | None:
    stamp = document.get("requestReceivedTimestamp")
    return parse_rfc3339(stamp) if isinstance(stamp, str) else None


def _cluster(document: Json) -> str | None:
    cluster = document.get("cluster")
    return cluster if isinstance(cluster, str) and cluster else None


def _groups(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(group for group in value if isinstance(group, str))


def _from_admission(raw: bytes, document: Json, request: Json) -> Record:
    operation = _text(request.get("operation")).upper()
    options = _object(request.get("options"))
    obj = _object(request.get("object"))
    old = _object(request.get("oldObject"))
    if operation == "UPDATE":
        patch = options is not None and options.get("kind") == "PatchOptions"
        verb = "patch" if patch else "update"
    else:
        verb = _ADMISSION_VERB.get(operation, operation.lower())
    resource = _object(request.get("resource")) or {}
    kind = _object(request.get("kind")) or {}
    user = _object(request.get("userInfo")) or {}
    name = _text(request.get("name"))
    if not name:
        name = _metadata_name(obj) or _metadata_name(old)
    return Record(
        raw=raw,
        document=document,
        format="admission",
        time_ns=_time(document),
        cluster=_cluster(document),
        user=_text(user.get("username")),
        groups=_groups(user.get("groups")),
        verb=verb,
        operation=operation,
        group=_text(resource.get("group")),
        version=_text(resource.get("version")),
        resource=_text(resource.get("resource")),
        subresource=_text(request.get("subResource")),
        namespace=_text(request.get("namespace")),
        name=name,
        kind=_text(kind.get("kind")) or _text((obj or old or {}).get("kind")),
        dry_run=request.get("dryRun") is True,
        object=obj,
        old_object=old,
        options=options,
    )


def _metadata_name(obj: Json | None) -> str:
    if obj is None:
        return ""
    metadata = _object(obj.get("metadata")) or {}
    return _text(metadata.get("name"))


def _from_event(raw: bytes, document: Json) -> Record:
    verb = _text(document.get("verb"))
    ref = _object(document.get("objectRef")) or {}
    subresource = _text(ref.get("subresource"))
    if subresource in CONNECT_SUBRESOURCES and verb in ("create", "get"):
        operation = "CONNECT"
    else:
        operation = _EVENT_OPERATION.get(verb, "")
    request_object = _object(document.get("requestObject"))
    response_object = _object(document.get("responseObject"))
    obj: Json | None
    if verb in ("create", "update", "patch") and response_object is not None:
        # For a patch the request body is the patch; the response is the result.
        obj = response_object if response_object.get("kind") != "Status" else request_object
    else:
        obj = request_object
    old = None
    if verb in ("delete", "deletecollection") and response_object is not None:
        # A delete answers with the deleted object (or a Status).
        old = response_object if response_object.get("kind") != "Status" else None
        obj = None
    query = _query(_text(document.get("requestURI")))
    user = _object(document.get("user")) or {}
    status = _object(document.get("responseStatus")) or {}
    code = status.get("code")
    options = _connect_options(subresource, query) if operation == "CONNECT" else None
    return Record(
        raw=raw,
        document=document,
        format="event",
        time_ns=_time(document),
        cluster=_cluster(document),
        user=_text(user.get("username")),
        groups=_groups(user.get("groups")),
        verb=verb,
        operation=operation,
        group=_text(ref.get("apiGroup")),
        version=_text(ref.get("apiVersion")),
        resource=_text(ref.get("resource")),
        subresource=subresource,
        namespace=_text(ref.get("namespace")),
        name=_text(ref.get("name")) or _metadata_name(obj),
        kind=_text((obj or old or {}).get("kind")),
        dry_run="All" in query.get("dryRun", []),
        object=options if operation == "CONNECT" else obj,
        old_object=old,
        options=options,
        response_code=code if isinstance(code, int) else None,
    )


def _query(uri: str) -> dict[str, list[str]]:
    if "?" not in uri:
        return {}
    return parse_qs(urlsplit(uri).query, keep_blank_values=True)


def _connect_options(subresource: str, query: dict[str, list[str]]) -> Json | None:
    """The connect options an Event's request URI carries, shaped like the admission object."""
    kind = _CONNECT_KIND.get(subresource)
    if kind is None:
        return None
    options: Json = {"kind": kind, "apiVersion": "v1"}
    for flag in ("stdin", "stdout", "stderr", "tty"):
        if flag in query:
            options[flag] = query[flag][-1] in ("true", "1")
    if "container" in query:
        options["container"] = query["container"][-1]
    if "command" in query:
        options["command"] = query["command"]
    if "ports" in query:
        ports = [p for value in query["ports"] for p in value.split(",") if p]
        options["ports"] = [int(p) if p.isdigit() else p for p in ports]
    return options


def connect_options(record: Record) -> Json:
    """The recorded PodExecOptions/PodAttachOptions/PodPortForwardOptions, or {}."""
    for candidate in (record.object, record.options):
        if candidate is not None and candidate.get("kind", "").startswith("Pod"):
            return candidate
    return record.object or record.options or {}

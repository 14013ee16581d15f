"""The one-line summary of a record: "replicas 2→3", "labels +app=web", "deleted"."""

from __future__ import annotations

from typing import Any

import orjson

from kube_audit_rest.query.changes import (
    MISSING,
    UNCHANGED,
    Change,
    compare,
    format_path,
    without_noise,
)
from kube_audit_rest.query.records import Record, connect_options

MAX_CHANGES = 3
MAX_VALUE = 40


def summarise(record: Record) -> str:
    text = _describe(record)
    if record.dry_run:
        text += " (dry run)"
    if record.response_code is not None and record.response_code >= 400:
        text += f" (failed: {record.response_code})"
    return text


def _describe(record: Record) -> str:
    sub = record.subresource
    obj = record.object or {}
    if record.operation == "CONNECT":
        return _connect(record)
    if sub == "scale":
        return _scale(record)
    if sub == "eviction" and record.operation == "CREATE":
        return "evicted"
    if sub == "binding" and record.operation == "CREATE":
        target = obj.get("target")
        node = target.get("name") if isinstance(target, dict) else None
        return f"bound to node {node}" if node else "bound"
    if sub == "token" and record.operation == "CREATE":
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        audiences = spec.get("audiences") if isinstance(spec, dict) else None
        if isinstance(audiences, list) and audiences:
            return "token requested for " + ",".join(str(a) for a in audiences)
        return "token requested"
    if record.operation == "CREATE":
        return "created"
    if record.operation == "DELETE":
        return "deleted"
    if record.operation == "UPDATE":
        return _update(record)
    return record.verb or "-"


def _connect(record: Record) -> str:
    options = connect_options(record)
    sub = record.subresource or "connect"
    if sub == "exec":
        command = options.get("command")
        if isinstance(command, list) and command:
            return "exec: " + _short(" ".join(str(part) for part in command))
        return "exec"
    if sub == "portforward":
        ports = options.get("ports")
        if isinstance(ports, list) and ports:
            return "port-forward " + ",".join(str(p) for p in ports)
        return "port-forward"
    return sub


def _replicas(obj: dict[str, Any] | None) -> Any:
    spec = (obj or {}).get("spec")
    return spec.get("replicas", MISSING) if isinstance(spec, dict) else MISSING


def _scale(record: Record) -> str:
    new = _replicas(record.object)
    if new is MISSING:
        return _update(record) if record.operation == "UPDATE" else record.verb
    old = _replicas(record.old_object)
    return f"replicas {'?' if old is MISSING else old}→{new}"


def _update(record: Record) -> str:
    if record.old_object is None:
        body = record.document.get("requestObject") if record.format == "event" else None
        if record.verb == "patch" and isinstance(body, dict) and body:
            leaves = [
                c for c in compare({}, body) if c.path[:1] != ("metadata",) or len(c.path) > 2
            ]
            shown = [f"{_short_path(c.path)}={_value(c.new)}" for c in leaves[:MAX_CHANGES]]
            more = [f"+{len(leaves) - MAX_CHANGES} more"] if len(leaves) > MAX_CHANGES else []
            return "patch " + ", ".join(shown + more)
        return f"{record.verb or 'update'} (old object not recorded)"
    status_write = record.subresource == "status"
    old = without_noise(record.old_object, include_status=status_write)
    new = without_noise(record.object, include_status=status_write)
    changes = [c for c in compare(old, new) if c.redacted != UNCHANGED]
    if not changes:
        whole_old = without_noise(record.old_object, include_status=True)
        whole_new = without_noise(record.object, include_status=True)
        return "status only" if compare(whole_old, whole_new) else "no change"
    texts = [_change(change) for change in changes[:MAX_CHANGES]]
    if len(changes) > MAX_CHANGES:
        texts.append(f"+{len(changes) - MAX_CHANGES} more")
    return ", ".join(texts)


def _change(change: Change) -> str:
    path = change.path
    if len(path) == 3 and path[0] == "metadata" and path[1] in ("labels", "annotations"):
        key = str(path[2])
        if change.new is MISSING:
            return f"{path[1]} -{key}"
        if change.old is MISSING:
            return f"{path[1]} +{key}={_value(change.new)}"
        return f"{path[1]} {key}={_value(change.old)}→{_value(change.new)}"
    shown = _short_path(path)
    if change.old is MISSING:
        return f"+{shown}" if change.redacted else f"+{shown}={_value(change.new)}"
    if change.new is MISSING:
        return f"-{shown}"
    if change.redacted:
        return f"{shown} {change.redacted}"
    return f"{shown} {_value(change.old)}→{_value(change.new)}"


def _short_path(path: tuple[str | int, ...]) -> str:
    return format_path(path[1:] if path and path[0] == "spec" and len(path) > 1 else path)


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return _short(text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"

"""``-o kubectl``: the command a person would have typed to make the recorded request.

Each command does what was recorded if it is run again; where no kubectl
command does, the answer is a ``# no kubectl command: <why>`` line instead of
a guess. The README's "Query the log" section has the mapping table.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kube_audit_rest.query.changes import (
    LAST_APPLIED,
    UNCHANGED,
    compare,
    has_marker,
    without_noise,
)
from kube_audit_rest.query.records import Record, connect_options, is_namespace_resource
from kube_audit_rest.query.render_table import row
from kube_audit_rest.query.yamltext import dump

Json = dict[str, Any]

# Built-in resources whose singular name kubectl resolves unambiguously; any
# other resource is written RESOURCE.GROUP, which names exactly one.
_SINGULAR = {
    ("", "pods"): "pod",
    ("", "services"): "service",
    ("", "configmaps"): "configmap",
    ("", "secrets"): "secret",
    ("", "namespaces"): "namespace",
    ("", "nodes"): "node",
    ("", "serviceaccounts"): "serviceaccount",
    ("", "persistentvolumeclaims"): "persistentvolumeclaim",
    ("", "persistentvolumes"): "persistentvolume",
    ("", "replicationcontrollers"): "replicationcontroller",
    ("", "resourcequotas"): "resourcequota",
    ("", "limitranges"): "limitrange",
    ("apps", "deployments"): "deployment",
    ("apps", "statefulsets"): "statefulset",
    ("apps", "daemonsets"): "daemonset",
    ("apps", "replicasets"): "replicaset",
    ("batch", "jobs"): "job",
    ("batch", "cronjobs"): "cronjob",
    ("networking.k8s.io", "ingresses"): "ingress",
    ("networking.k8s.io", "networkpolicies"): "networkpolicy",
    ("rbac.authorization.k8s.io", "roles"): "role",
    ("rbac.authorization.k8s.io", "rolebindings"): "rolebinding",
    ("rbac.authorization.k8s.io", "clusterroles"): "clusterrole",
    ("rbac.authorization.k8s.io", "clusterrolebindings"): "clusterrolebinding",
    ("autoscaling", "horizontalpodautoscalers"): "horizontalpodautoscaler",
    ("policy", "poddisruptionbudgets"): "poddisruptionbudget",
    ("storage.k8s.io", "storageclasses"): "storageclass",
}
# Metadata the server sets; a manifest to apply again must not carry it.
_SERVER_METADATA = (
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_CASCADE = {"Foreground": "foreground", "Orphan": "orphan"}
_DECLINED_SUBRESOURCE = {
    "status": "a write to the status subresource is a controller reporting state; "
    "no command a person types does it",
    "binding": "a binding (pods/binding) is the scheduler placing a pod on a node",
    "eviction": "an eviction (pods/eviction) has no kubectl command of its own "
    "(kubectl drain also cordons the node and evicts every pod on it)",
    "proxy": "the proxied request itself is not recorded",
}


def render(record: Record) -> str:
    """A ``# ...`` header naming the record, then the command (or why there is none)."""
    cells = row(record)
    header = f"# {cells[0]} {cells[2]} {cells[3]} {cells[4]} {cells[5]}"
    if record.response_code is not None and record.response_code >= 400:
        header += f" (failed: {record.response_code})"
    header += "\n"
    return header + "".join(line + "\n" for line in commands(record))


def decline(why: str) -> list[str]:
    return [f"# no kubectl command: {why}"]


def type_name(record: Record) -> str:
    singular = _SINGULAR.get((record.group, record.resource))
    if singular is not None:
        return singular
    return f"{record.resource}.{record.group}" if record.group else record.resource


def _kubectl(record: Record, *words: str) -> list[str]:
    argv = ["kubectl"]
    if record.namespace and not is_namespace_resource(record):
        argv += ["-n", record.namespace]
    argv += words
    return argv


def _line(argv: Sequence[str], record: Record, dry_run_flag: bool = True) -> str:
    words = list(argv)
    if record.dry_run and dry_run_flag:
        words.append("--dry-run=server")
    return " ".join(shlex.quote(word) for word in words)


def commands(record: Record) -> list[str]:
    if not record.resource:
        return decline("the request is not about a resource")
    if (
        record.format == "event"
        and record.verb in ("get", "list", "watch")
        and (record.operation != "CONNECT")
    ):
        return _read(record)
    if record.subresource in _DECLINED_SUBRESOURCE:
        return decline(_DECLINED_SUBRESOURCE[record.subresource])
    if record.operation == "CONNECT":
        return _connect(record)
    if record.operation == "DELETE":
        return _delete(record)
    if record.subresource == "scale" and record.operation == "UPDATE":
        return _scale(record)
    if record.subresource == "token" and record.operation == "CREATE":
        return _token(record)
    if record.subresource:
        return decline(f"kubectl has no command for the {record.subresource} subresource")
    if record.operation == "CREATE":
        return _apply(record, record.object, "the created object was not recorded")
    if record.operation == "UPDATE":
        return _update(record)
    return decline(f"{record.verb or 'this'} requests are not reconstructed")


def _connect(record: Record) -> list[str]:
    options = connect_options(record)
    flags = ("i" if options.get("stdin") else "") + ("t" if options.get("tty") else "")
    container = options.get("container")
    tail = ["-c", container] if isinstance(container, str) and container else []
    if record.subresource == "exec":
        command = options.get("command")
        if not (isinstance(command, list) and command):
            return decline("the exec command was not recorded")
        head = [f"-{flags}"] if flags else []
        argv = _kubectl(record, "exec", *head, record.name, *tail, "--", *map(str, command))
        return [_line(argv, record, dry_run_flag=False)]
    if record.subresource == "attach":
        head = [f"-{flags}"] if flags else []
        return [_line(_kubectl(record, "attach", *head, record.name, *tail), record, False)]
    if record.subresource == "portforward":
        ports = options.get("ports")
        if not (isinstance(ports, list) and ports):
            return decline("the forwarded ports were not recorded")
        argv = _kubectl(record, "port-forward", f"pod/{record.name}", *map(str, ports))
        return [_line(argv, record, dry_run_flag=False)]
    return decline(f"no kubectl command connects to {record.resource_path}")


def _read(record: Record) -> list[str]:
    """An audit Event's read: ``kubectl get`` (or ``kubectl logs`` for pods/log)."""
    uri = record.document.get("requestURI")
    query = parse_qs(urlsplit(uri).query) if isinstance(uri, str) else {}
    if record.subresource == "log" and record.resource == "pods" and record.name:
        return [_line(_kubectl(record, "logs", record.name, *_log_flags(query)), record, False)]
    if record.subresource:
        return decline(f"no kubectl command reads {record.resource_path}")
    words = ["get", type_name(record)]
    if record.name:
        # A named watch is a watch with fieldSelector metadata.name=NAME.
        words.append(record.name)
        if query.get("fieldSelector", [""])[-1] == f"metadata.name={record.name}":
            del query["fieldSelector"]
    elif record.verb == "get":
        return decline("a get without a name")
    elif not record.namespace:
        words.append("--all-namespaces")
    if "labelSelector" in query:
        words += ["-l", query["labelSelector"][-1]]
    if "fieldSelector" in query:
        words += ["--field-selector", query["fieldSelector"][-1]]
    if record.verb == "watch" or query.get("watch", [""])[-1] in ("true", "1"):
        words.append("--watch")
    return [_line(_kubectl(record, *words), record, dry_run_flag=False)]


def _log_flags(query: dict[str, list[str]]) -> list[str]:
    flags = []
    if "container" in query:
        flags += ["-c", query["container"][-1]]
    for key, flag in (
        ("follow", "--follow"),
        ("previous", "--previous"),
        ("timestamps", "--timestamps"),
    ):
        if query.get(key, [""])[-1] == "true":
            flags.append(flag)
    for key, flag in (("tailLines", "--tail"), ("limitBytes", "--limit-bytes")):
        if key in query:
            flags.append(f"{flag}={query[key][-1]}")
    if "sinceSeconds" in query:
        flags.append(f"--since={query['sinceSeconds'][-1]}s")
    return flags


def _delete(record: Record) -> list[str]:
    if record.verb == "deletecollection" or not record.name:
        return decline("a delete of a whole collection is not reconstructed")
    words = ["delete", type_name(record), record.name]
    options = record.options
    if options is None and record.format == "event":
        body = record.document.get("requestObject")
        options = body if isinstance(body, dict) else None
    if options is not None:
        grace = options.get("gracePeriodSeconds")
        if isinstance(grace, int) and not isinstance(grace, bool):
            words.append(f"--grace-period={grace}")
        cascade = _CASCADE.get(str(options.get("propagationPolicy")))
        if cascade:
            words.append(f"--cascade={cascade}")
    return [_line(_kubectl(record, *words), record)]


def _scale(record: Record) -> list[str]:
    spec = (record.object or {}).get("spec")
    replicas = spec.get("replicas") if isinstance(spec, dict) else None
    if not isinstance(replicas, int) or isinstance(replicas, bool):
        return decline("the new replica count was not recorded")
    argv = _kubectl(record, "scale", type_name(record), record.name, f"--replicas={replicas}")
    return [_line(argv, record)]


def _token(record: Record) -> list[str]:
    spec = (record.object or {}).get("spec")
    if not isinstance(spec, dict):
        return decline("the token request was not recorded")
    words = ["create", "token", record.name]
    for audience in spec.get("audiences") or []:
        words.append(f"--audience={audience}")
    seconds = spec.get("expirationSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        words.append(f"--duration={seconds}s")
    bound = spec.get("boundObjectRef")
    if isinstance(bound, dict) and bound.get("kind") and bound.get("name"):
        words += [f"--bound-object-kind={bound['kind']}", f"--bound-object-name={bound['name']}"]
        if bound.get("uid"):
            words.append(f"--bound-object-uid={bound['uid']}")
    return [_line(_kubectl(record, *words), record)]


def _labels(obj: Json | None, field: str) -> dict[str, Any]:
    metadata = (obj or {}).get("metadata")
    values = metadata.get(field) if isinstance(metadata, dict) else None
    return dict(values) if isinstance(values, dict) else {}


def _update(record: Record) -> list[str]:
    if record.old_object is None:
        if record.format == "event" and not isinstance(record.document.get("responseObject"), dict):
            return decline("the request body is a patch of a type the audit Event does not record")
        return _apply(record, record.object, "the updated object was not recorded")
    old = without_noise(record.old_object, include_status=False)
    new = without_noise(record.object, include_status=False)
    changes = [c for c in compare(old, new) if c.redacted != UNCHANGED]
    old_ann, new_ann = (
        _labels(record.old_object, "annotations"),
        _labels(record.object, "annotations"),
    )
    applied = old_ann.get(LAST_APPLIED) != new_ann.get(LAST_APPLIED)
    if not changes and not applied:
        return decline("nothing changed apart from status and server-maintained metadata")
    others = [
        c
        for c in changes
        if c.path[:2] not in (("metadata", "labels"), ("metadata", "annotations"))
    ]
    if others or applied:
        return _apply(record, record.object, "the updated object was not recorded")
    lines = []
    for field, verb in (("labels", "label"), ("annotations", "annotate")):
        words = _set_words(_labels(record.old_object, field), _labels(record.object, field))
        if words:
            argv = _kubectl(record, verb, type_name(record), record.name, *words[0])
            lines.append(_line([*argv, *words[1]], record))
    return lines


def _set_words(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """``key=value`` and ``key-`` arguments, and ``--overwrite`` if a value changes."""
    words = [f"{k}={v}" for k, v in new.items() if k not in old or old[k] != v]
    words += [f"{k}-" for k in old if k not in new]
    if not words:
        return None
    overwrite = any(k in old and old[k] != v for k, v in new.items())
    return words, (["--overwrite"] if overwrite else [])


def manifest(obj: Json) -> Json:
    """The object as a manifest: without status and what the server sets."""
    clean = copy.deepcopy(obj)
    clean.pop("status", None)
    metadata = clean.get("metadata")
    if isinstance(metadata, dict):
        for key in _SERVER_METADATA:
            metadata.pop(key, None)
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict):
            annotations.pop(LAST_APPLIED, None)
            if not annotations:
                metadata.pop("annotations")
    return clean


def _apply(record: Record, obj: Json | None, missing: str) -> list[str]:
    if obj is None:
        return decline(missing)
    clean = manifest(obj)
    if has_marker(clean):
        return decline(
            "values in this object were redacted in the log; applying it would store the markers"
        )
    metadata = clean.get("metadata") if isinstance(clean.get("metadata"), dict) else {}
    verb = "apply"
    if isinstance(metadata, dict) and not metadata.get("name") and metadata.get("generateName"):
        verb = "create"  # apply needs a name; create lets the server generate one
    text = dump(clean)
    delimiter = "EOF"
    while delimiter in text.splitlines():
        delimiter += "_"
    argv = _kubectl(record, verb)
    if record.dry_run:
        argv.append("--dry-run=server")
    command = _line([*argv, "-f", "-"], record, dry_run_flag=False)
    return [f"{command} <<'{delimiter}'", *text.splitlines(), delimiter]

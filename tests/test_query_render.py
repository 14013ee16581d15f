"""The change summary, the diff and the kubectl reconstruction, case by case.

These build records in memory (``parse_line`` of a line made here) and call
the renderers directly; the golden tests cover the same code through the CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from kube_audit_rest.query import diff, kubectl
from kube_audit_rest.query.records import Record, parse_line
from kube_audit_rest.query.summary import summarise
from tests.query_support import EXPECTED_KUBECTL

HMAC_1 = "<redacted hmac-sha256:" + "1" * 64 + ">"
HMAC_2 = "<redacted hmac-sha256:" + "2" * 64 + ">"


def admission(operation: str, obj: Any = None, old: Any = None, **request: Any) -> Record:
    body: dict[str, Any] = {
        "uid": "u",
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "name": "cfg",
        "namespace": "shop",
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["dev"]},
        "object": obj,
        "oldObject": old,
    }
    body.update(request)
    line = {
        "kind": "AdmissionReview",
        "request": body,
        "requestReceivedTimestamp": "2026-11-23T14:02:05.123Z",
    }
    return parse_line(json.dumps(line).encode())


def cm(
    data: dict[str, Any], labels: dict[str, str] | None = None, **metadata: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "cfg", "namespace": "shop", **metadata}
    if labels is not None:
        meta["labels"] = labels
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": meta, "data": data}


def test_labels_overwrite_only_when_a_value_changes() -> None:
    added = admission("UPDATE", cm({}, {"a": "1", "b": "2"}), cm({}, {"a": "1"}))
    assert kubectl.commands(added) == ["kubectl -n shop label configmap cfg b=2"]
    changed = admission("UPDATE", cm({}, {"a": "9"}), cm({}, {"a": "1", "gone": "x"}))
    assert kubectl.commands(changed) == [
        "kubectl -n shop label configmap cfg a=9 gone- --overwrite"
    ]
    assert summarise(changed) == "labels a=1→9, labels -gone"


def test_labels_and_annotations_together_are_two_commands() -> None:
    old = cm({}, {"a": "1"})
    new = cm({}, {"a": "1", "b": "2"}, annotations={"note": "it's"})
    commands = kubectl.commands(admission("UPDATE", new, old, dryRun=True))
    assert commands == [
        "kubectl -n shop label configmap cfg b=2 --dry-run=server",
        "kubectl -n shop annotate configmap cfg 'note=it'\"'\"'s' --dry-run=server",
    ]
    assert shlex.split(commands[1])[6] == "note=it's"


def test_noise_alone_is_no_command_and_no_change() -> None:
    old = cm({"x": "1"}, resourceVersion="1", managedFields=[{"manager": "a"}])
    new = cm({"x": "1"}, resourceVersion="2", managedFields=[{"manager": "b"}])
    record = admission("UPDATE", new, old)
    assert kubectl.commands(record)[0].startswith("# no kubectl command: nothing changed")
    assert summarise(record) == "no change"
    assert "# no change apart from status" in diff.render(record, False, False)
    kept = diff.render(record, False, keep_noise=True)
    assert "-  resourceVersion: '1'" in kept and "+  resourceVersion: '2'" in kept


def test_status_only_churn_is_hidden_unless_asked() -> None:
    old = {**cm({"x": "1"}), "status": {"ready": False}}
    new = {**cm({"x": "1"}), "status": {"ready": True}}
    record = admission("UPDATE", new, old)
    assert summarise(record) == "status only"
    assert "no change apart from status" in diff.render(record, False, False)
    shown = diff.render(record, include_status=True, keep_noise=False)
    assert "-  ready: false\n+  ready: true\n" in shown


def test_redacted_secret_values() -> None:
    secret = {"group": "", "version": "v1", "resource": "secrets"}

    def sec(data: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "Secret", "metadata": {"name": "s"}, "data": data}

    old = sec({"same": HMAC_1, "moved": HMAC_1, "plain": "<redacted>", "leak": "c2VjcmV0"})
    new = sec(
        {"same": HMAC_1, "moved": HMAC_2, "plain": "<redacted>", "leak": HMAC_1, "new": HMAC_2}
    )
    record = admission("UPDATE", new, old, resource=secret)
    text = diff.render(record, False, False)
    assert "c2VjcmV0" not in text and "hmac-sha256" not in text
    assert "   same: <redacted, unchanged>\n" in text
    assert "-  moved: <redacted, old value>\n+  moved: <redacted, changed>\n" in text
    assert "# data.same: redacted, unchanged\n" in text
    assert "# data.moved: redacted, changed\n" in text
    assert "# data.plain: redacted (cannot tell)\n" in text
    assert "# data.leak: redacted (cannot tell)\n" in text
    assert "# data.new: redacted, added\n" in text
    assert "+  new: <redacted>\n" in text
    summary = summarise(record)
    assert "data.moved changed" in summary and "same" not in summary
    assert "c2VjcmV0" not in summary
    assert kubectl.commands(record)[0].startswith(
        "# no kubectl command: values in this object were redacted"
    )


def test_created_and_deleted_objects_are_whole_diffs() -> None:
    created = diff.render(admission("CREATE", cm({"k": "v"})), False, False)
    assert "--- /dev/null\n+++ b/configmaps shop/cfg\n" in created
    assert "+data:\n+  k: v\n" in created
    deleted = diff.render(admission("DELETE", None, cm({"k": "v"})), False, False)
    assert "--- a/configmaps shop/cfg\n+++ /dev/null\n" in deleted
    assert "-  k: v\n" in deleted


def test_apply_heredoc_gives_kubectl_the_manifest() -> None:
    """Run the reconstruction through bash, with kubectl a function that prints its stdin."""
    data = {"script": "echo $HOME `id`\nEOF\n'quoted' \\ back\n", "EOF": "x"}
    record = admission(
        "CREATE", cm(data, annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"})
    )
    lines = kubectl.commands(record)
    assert lines[0].startswith("kubectl -n shop apply -f - <<'EOF")
    script = "kubectl() { cat; }\n" + "\n".join(lines) + "\n"
    printed = subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    manifest = yaml.safe_load(printed)
    assert manifest == {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "cfg", "namespace": "shop"},
        "data": data,
    }


def test_generate_name_without_name_uses_create() -> None:
    obj = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"generateName": "job-", "namespace": "shop"},
    }
    record = admission(
        "CREATE", obj, name="", resource={"group": "", "version": "v1", "resource": "pods"}
    )
    assert kubectl.commands(record)[0] == "kubectl -n shop create -f - <<'EOF'"


def test_strange_names_are_quoted() -> None:
    record = admission("DELETE", None, None, name="a b;$(reboot)", namespace="x y")
    command = kubectl.commands(record)[0]
    assert command == "kubectl -n 'x y' delete configmap 'a b;$(reboot)'"
    assert shlex.split(command) == ["kubectl", "-n", "x y", "delete", "configmap", "a b;$(reboot)"]


def test_custom_and_cluster_scoped_resource_names() -> None:
    crd = admission(
        "DELETE", resource={"group": "example.com", "version": "v1", "resource": "widgets"}
    )
    assert kubectl.commands(crd) == ["kubectl -n shop delete widgets.example.com cfg"]
    node = admission(
        "DELETE",
        resource={"group": "", "version": "v1", "resource": "nodes"},
        namespace="",
        name="n1",
    )
    assert kubectl.commands(node) == ["kubectl delete node n1"]


def test_exec_without_command_or_tty() -> None:
    exec_resource = {"group": "", "version": "v1", "resource": "pods"}
    options = {"kind": "PodExecOptions", "command": ["ls", "-l"], "container": ""}
    record = admission("CONNECT", options, subResource="exec", resource=exec_resource, name="p")
    assert kubectl.commands(record) == ["kubectl -n shop exec p -- ls -l"]
    empty = admission(
        "CONNECT", {"kind": "PodExecOptions"}, subResource="exec", resource=exec_resource
    )
    assert kubectl.commands(empty) == ["# no kubectl command: the exec command was not recorded"]


def test_other_subresources_decline() -> None:
    record = admission("UPDATE", {}, {}, subResource="finalize")
    assert kubectl.commands(record) == [
        "# no kubectl command: kubectl has no command for the finalize subresource"
    ]


def test_header_has_no_control_characters() -> None:
    record = admission("DELETE", userInfo={"username": "eve\nkubectl delete ns prod"})
    text = kubectl.render(record)
    assert text.count("\n") == 2 and "eve?kubectl" in text


_KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(_KUBECTL is None, reason="kubectl is not installed (apt-get install kubectl)")
def test_every_flag_in_the_golden_commands_is_a_kubectl_flag() -> None:
    """Each reconstructed command uses flags the installed kubectl knows (from ``--help``)."""
    assert _KUBECTL is not None
    commands = [
        line for line in EXPECTED_KUBECTL.read_text().splitlines() if line.startswith("kubectl ")
    ]
    assert len(commands) > 15
    helps: dict[tuple[str, ...], str] = {}
    for command in commands:
        words = shlex.split(command.split(" <<")[0].split(" -- ")[0])
        if words[1] == "-n":
            words = [words[0], *words[3:]]
        verb = ("create", "token") if words[1] == "create" else (words[1],)
        if verb not in helps:
            helps[verb] = subprocess.run(
                [_KUBECTL, *verb, "--help"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        for flag in re.findall(r"(?<!\S)(--[a-z-]+)", " ".join(words)):
            assert (
                f"{flag}=" in helps[verb] or f"{flag} " in helps[verb] or f"{flag}:" in helps[verb]
            ), (
                flag,
                verb,
            )


def test_label_change_on_a_secret_with_unchanged_hmac_values_is_a_label_command() -> None:
    secrets = {"group": "", "version": "v1", "resource": "secrets"}
    old = {"kind": "Secret", "metadata": {"name": "s", "labels": {"a": "1"}}, "data": {"k": HMAC_1}}
    new = {"kind": "Secret", "metadata": {"name": "s", "labels": {"a": "2"}}, "data": {"k": HMAC_1}}
    record = admission("UPDATE", new, old, resource=secrets, name="s")
    assert kubectl.commands(record) == ["kubectl -n shop label secret s a=2 --overwrite"]
    assert summarise(record) == "labels a=1→2"
    # With plain markers nobody can tell whether the value changed too: no command.
    old["data"], new["data"] = {"k": "<redacted>"}, {"k": "<redacted>"}
    plain = admission("UPDATE", new, old, resource=secrets, name="s")
    assert kubectl.commands(plain)[0].startswith("# no kubectl command: values in this object")


def _event(verb: str, uri: str, subresource: str = "") -> Record:
    ref = {"resource": "pods", "namespace": "shop", "name": "web-1", "apiVersion": "v1"}
    if subresource:
        ref["subresource"] = subresource
    document = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "auditID": "a",
        "stage": "ResponseComplete",
        "verb": verb,
        "requestURI": uri,
        "user": {"username": "alice"},
        "objectRef": ref,
        "requestReceivedTimestamp": "2026-11-23T14:00:00.000000Z",
    }
    return parse_line(json.dumps(document).encode())


def test_event_reads() -> None:
    logs = _event(
        "get",
        "/api/v1/namespaces/shop/pods/web-1/log?container=app&follow=true&tailLines=20",
        "log",
    )
    assert kubectl.commands(logs) == ["kubectl -n shop logs web-1 -c app --follow --tail=20"]
    status = _event("get", "/api/v1/namespaces/shop/pods/web-1/status", "status")
    assert kubectl.commands(status) == [
        "# no kubectl command: no kubectl command reads pods/status"
    ]
    websocket_exec = _event(
        "get", "/api/v1/namespaces/shop/pods/web-1/exec?command=ls&stdout=true", "exec"
    )
    assert kubectl.commands(websocket_exec) == ["kubectl -n shop exec web-1 -- ls"]
    uri = "/api/v1/namespaces/shop/pods?fieldSelector=metadata.name%3Dweb-1&watch=true"
    assert kubectl.commands(_event("watch", uri)) == ["kubectl -n shop get pod web-1 --watch"]

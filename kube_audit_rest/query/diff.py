"""``--diff``: what a record changed, as a unified diff of YAML renderings.

UPDATE: ``oldObject`` against ``object``, without the noise ``changes.without_noise``
removes. CREATE: the created object (a diff from nothing); DELETE: the deleted
object (a diff to nothing). Redacted values are compared by their HMAC markers
and shown as changed / unchanged / redacted (cannot tell), never as a value.
"""

from __future__ import annotations

import difflib
from typing import Any

from kube_audit_rest.query.changes import (
    CANNOT_TELL,
    CHANGED,
    MISSING,
    UNCHANGED,
    compare,
    format_path,
    hide_markers,
    is_marker,
    redaction_state,
    without_noise,
)
from kube_audit_rest.query.records import Record
from kube_audit_rest.query.render_table import row
from kube_audit_rest.query.yamltext import dump

_OLD_PLACEHOLDER = {
    CHANGED: "<redacted, old value>",
    UNCHANGED: "<redacted, unchanged>",
    CANNOT_TELL: "<redacted (cannot tell)>",
}
_NEW_PLACEHOLDER = {
    CHANGED: "<redacted, changed>",
    UNCHANGED: "<redacted, unchanged>",
    CANNOT_TELL: "<redacted (cannot tell)>",
}
_NOTE = {CHANGED: "redacted, changed", UNCHANGED: "redacted, unchanged", CANNOT_TELL: CANNOT_TELL}


def render(record: Record, include_status: bool, keep_noise: bool) -> str:
    """The header line and the diff of one record, ending with a newline."""
    cells = row(record)
    header = f"# {cells[0]} {cells[2]} {cells[3]} {cells[4]} {cells[5]}"
    if record.cluster:
        header += f" (cluster {cells[1]})"
    if record.dry_run:
        header += " (dry run)"
    if record.response_code is not None and record.response_code >= 400:
        header += f" (failed: {record.response_code})"
    label = f"{record.resource_path} {record.namespaced_name}"
    body = _body(record, label, include_status or keep_noise, keep_noise)
    return header + "\n" + body


def _clean(obj: dict[str, Any] | None, include_status: bool, keep_noise: bool) -> Any:
    if keep_noise:
        return obj
    return without_noise(obj, include_status)


def _body(record: Record, label: str, include_status: bool, keep_noise: bool) -> str:
    if record.operation == "CONNECT":
        return f"# {record.subresource or 'connect'}: no object change\n"
    if record.operation == "UPDATE":
        if record.old_object is None:
            return _without_old(record, include_status, keep_noise)
        old = _clean(record.old_object, include_status, keep_noise)
        new = _clean(record.object, include_status, keep_noise)
        return _update(old, new, label)
    if record.operation == "CREATE":
        created = _clean(record.object, include_status, keep_noise)
        if created is None:
            return "# created; the object was not recorded\n"
        return _whole(created, label, added=True)
    if record.operation == "DELETE":
        deleted = _clean(record.old_object, include_status, keep_noise)
        if deleted is None:
            return "# deleted; the deleted object was not recorded\n"
        return _whole(deleted, label, added=False)
    return f"# {record.verb or 'request'}: no object change\n"


def _without_old(record: Record, include_status: bool, keep_noise: bool) -> str:
    """An update recorded without its old object (an audit Event): show what there is."""
    response = record.document.get("responseObject")
    if isinstance(response, dict) and response.get("kind") != "Status":
        title, shown = "the object after the request", response
    else:
        body = record.document.get("requestObject")
        title, shown = "the request body", body if isinstance(body, dict) else (record.object or {})
    cleaned = _clean(shown, include_status, keep_noise)
    if not cleaned:
        return "# neither the old object nor the request body was recorded\n"
    return f"# old object not recorded; {title}:\n" + _prefixed(dump(hide_markers(cleaned)), "  ")


def _whole(obj: Any, label: str, added: bool) -> str:
    lines = dump(hide_markers(obj)).splitlines()
    old, new = ([], lines) if added else (lines, [])
    fromfile, tofile = ("/dev/null", f"b/{label}") if added else (f"a/{label}", "/dev/null")
    return _unified(old, new, fromfile, tofile)


def _update(old: Any, new: Any, label: str) -> str:
    old_shown, new_shown = _mark(old, new)
    text = _unified(
        dump(old_shown).splitlines(), dump(new_shown).splitlines(), f"a/{label}", f"b/{label}"
    )
    if not text:
        text = (
            "# no change apart from status and server-maintained metadata"
            " (--include-status, --keep-noise show them)\n"
        )
    notes = [
        f"# {format_path(c.path)}: {_state(c.old, c.new, c.redacted)}"
        for c in compare(old, new)
        if c.redacted
    ]
    return text + "".join(note + "\n" for note in notes)


def _state(old: Any, new: Any, state: str) -> str:
    if old is MISSING:
        return "redacted, added"
    if new is MISSING:
        return "redacted, removed"
    return _NOTE[state]


def _unified(old: list[str], new: list[str], fromfile: str, tofile: str) -> str:
    lines = difflib.unified_diff(old, new, fromfile=fromfile, tofile=tofile, lineterm="")
    return "".join(line + "\n" for line in lines)


def _prefixed(text: str, prefix: str) -> str:
    return "".join(prefix + line + "\n" for line in text.splitlines())


def _mark(old: Any, new: Any) -> tuple[Any, Any]:
    """Copies of *old* and *new* with redacted leaves replaced by placeholders, pairwise."""
    if isinstance(old, dict) and isinstance(new, dict):
        left: dict[str, Any] = {}
        right: dict[str, Any] = {}
        for key, value in old.items():
            if key in new:
                left[key], _ = _mark(value, new[key])
            else:
                left[key] = hide_markers(value)
        for key, value in new.items():
            right[key] = _mark(old[key], value)[1] if key in old else hide_markers(value)
        return left, right
    if isinstance(old, list) and isinstance(new, list):
        pairs = [_mark(a, b) for a, b in zip(old, new, strict=False)]
        left_list = [a for a, _ in pairs] + [hide_markers(v) for v in old[len(new) :]]
        right_list = [b for _, b in pairs] + [hide_markers(v) for v in new[len(old) :]]
        return left_list, right_list
    if is_marker(old) or is_marker(new):
        state = redaction_state(old, new)
        return _OLD_PLACEHOLDER[state], _NEW_PLACEHOLDER[state]
    return hide_markers(old), hide_markers(new)

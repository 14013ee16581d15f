"""Secrets only ever appear redacted, whatever the log holds.

The server redacts Secrets by default (``<redacted>`` or an HMAC marker), but
a log written with ``--no-redact-secrets`` (or by the API server's own audit
backend) holds their values in clear. Before a line is indexed, every string
under a Secret's ``data``/``stringData`` (and in its last-applied annotation)
that is not already a marker becomes ``<redacted>``; markers are kept, so the
diff can still say "unchanged" from HMAC markers.
"""

from __future__ import annotations

from typing import Any

import orjson

from kube_audit_rest.query.changes import LAST_APPLIED, is_marker

PLAIN = "<redacted>"
_SECRET_FIELDS = ("data", "stringData")
# Where a record holds objects: AdmissionReview request, audit Event.
_REQUEST_OBJECTS = ("object", "oldObject")
_EVENT_OBJECTS = ("requestObject", "responseObject")


def _is_secret_record(document: dict[str, Any]) -> bool:
    request = document.get("request")
    if isinstance(request, dict):
        resource = request.get("resource")
        # Any group's "secrets" counts: redacting too much is the safe mistake.
        if isinstance(resource, dict) and resource.get("resource") == "secrets":
            return True
        return any(_kind(request.get(key)) for key in _REQUEST_OBJECTS)
    ref = document.get("objectRef")
    if isinstance(ref, dict) and ref.get("resource") == "secrets":
        return True
    return any(_kind(document.get(key)) for key in _EVENT_OBJECTS)


def _kind(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("kind") in ("Secret", "SecretList")


def _redact_values(values: Any) -> int:
    if not isinstance(values, dict):
        return 0
    count = 0
    for key, value in values.items():
        if not is_marker(value):
            values[key] = PLAIN
            count += 1
    return count


def _redact_secret(obj: Any) -> int:
    """Redact one Secret (or each item of a SecretList) in place; how many values changed."""
    if not isinstance(obj, dict):
        return 0
    items = obj.get("items")
    count = sum(_redact_secret(item) for item in items) if isinstance(items, list) else 0
    for field in _SECRET_FIELDS:
        if field in obj and not isinstance(obj[field], dict) and obj[field] is not None:
            obj[field] = PLAIN
            count += 1
        count += _redact_values(obj.get(field))
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict) and isinstance(annotations.get(LAST_APPLIED), str):
        count += _redact_last_applied(annotations)
    return count


def _redact_last_applied(annotations: dict[str, Any]) -> int:
    text = annotations[LAST_APPLIED]
    try:
        applied = orjson.loads(text)
    except orjson.JSONDecodeError:
        annotations[LAST_APPLIED] = PLAIN
        return 1
    changed = _redact_secret(applied)
    if changed:
        annotations[LAST_APPLIED] = orjson.dumps(applied).decode()
    return changed


def redact_line(raw: bytes) -> bytes:
    """*raw* unchanged, or re-encoded with every clear Secret value replaced."""
    if b"ecret" not in raw and b"\\u" not in raw:  # Secret/secrets, unless escaped
        return raw
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(document, dict) or not _is_secret_record(document):
        return raw
    holder = document.get("request")
    keys = _REQUEST_OBJECTS if isinstance(holder, dict) else _EVENT_OBJECTS
    if not isinstance(holder, dict):
        holder = document
    if sum(_redact_secret(holder.get(key)) for key in keys) == 0:
        return raw
    return orjson.dumps(document) + b"\n"

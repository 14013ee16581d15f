"""Native audit events (``POST /audit-webhook``): one line per event, policy and redaction.

An event that neither the policy nor redaction changes is written as its own
bytes from the compacted body, with ``"cluster"`` (when known) and then
``"requestReceivedTimestamp"`` (only when the event has none) appended as the
last members. A changed event is re-encoded compactly from the parsed item,
the way ``record_pipeline`` writes a changed admission record.

The policy can only lower an event's level (kube-apiserver already applied
its own): the level kept is the lower of the event's and the policy's;
``None`` drops the event. ``Metadata`` removes ``requestObject`` and
``responseObject``, ``Request`` removes ``responseObject``, and the event's
``level`` then says what it was recorded at. Secrets (and custom redaction
rules) are redacted in ``requestObject`` and ``responseObject``, in each
item of a list too (a ``get``/``list`` of Secrets returns their data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from kube_audit_rest.eventlist import EventList
from kube_audit_rest.policy import Attributes, Decision, Level, Policy
from kube_audit_rest.privacy_config import PrivacyConfig
from kube_audit_rest.record_pipeline import exact_dumps, exact_loads
from kube_audit_rest.redaction import Encoder, Path
from kube_audit_rest.review import CLUSTER_KEY, TIMESTAMP_KEY, StdlibDocument, format_timestamp

_RANK = {Level.NONE: 0, Level.METADATA: 1, Level.REQUEST: 2, Level.REQUEST_RESPONSE: 3}
_LEVELS = {level.value: level for level in Level}
_TIMESTAMP_MEMBER = b',"' + TIMESTAMP_KEY.encode() + b'":"'
_OBJECT_KEYS = ("requestObject", "responseObject")
# An integer beyond 64 bits, which orjson reads as a double.
_LONG_INTEGER = re.compile(rb"[0-9]{20}")


@dataclass(frozen=True, slots=True)
class Batch:
    """The lines of one EventList, to be written in one call, and what was dropped."""

    data: bytes
    written: int
    dropped: int
    redacted: int


def _text(mapping: Any, key: str) -> str:
    if not isinstance(mapping, dict):
        return ""
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


def event_attributes(event: dict[str, Any]) -> Attributes:
    """What a policy rule matches, taken from an audit Event."""
    user = event.get("user")
    groups = user.get("groups") if isinstance(user, dict) else None
    ref = event.get("objectRef") or {}
    return Attributes(
        user=_text(user, "username"),
        groups=tuple(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else (),
        verbs=(_text(event, "verb"),),
        namespace=_text(ref, "namespace"),
        api_group=_text(ref, "apiGroup"),
        resource=_text(ref, "resource"),
        subresource=_text(ref, "subresource"),
        name=_text(ref, "name"),
    )


def _url_matches(pattern: str, path: str) -> bool:
    if pattern == "*" or pattern == path:
        return True
    return pattern.endswith("*") and path.startswith(pattern[:-1])


def decide(policy: Policy, event: dict[str, Any]) -> Decision:
    """The policy's decision for one event, resource or non-resource request."""
    attrs = event_attributes(event)
    if isinstance(event.get("objectRef"), dict):
        return policy.decide(attrs)
    # A non-resource request (/healthz, /version, ...): matched by
    # nonResourceURLs, never by rules restricted to resources or namespaces.
    path = _text(event, "requestURI").split("?", 1)[0]
    for rule in policy.rules:
        if rule.users and attrs.user not in rule.users:
            continue
        if rule.user_groups and rule.user_groups.isdisjoint(attrs.groups):
            continue
        if rule.verbs and rule.verbs.isdisjoint(attrs.verbs):
            continue
        if rule.resources or rule.namespaces:
            continue
        if rule.non_resource_urls and not any(
            _url_matches(p, path) for p in rule.non_resource_urls
        ):
            continue
        omit = policy.omit_managed_fields
        if rule.omit_managed_fields is not None:
            omit = rule.omit_managed_fields
        return Decision(rule.level, omit, str(rule.index))
    return Decision(Level.NONE, policy.omit_managed_fields, "default")


def _has_managed_fields(obj: Any) -> bool:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    return isinstance(metadata, dict) and "managedFields" in metadata


def _redaction_paths(config: PrivacyConfig, event: dict[str, Any]) -> tuple[Path, ...] | None:
    ref = event.get("objectRef")
    if not isinstance(ref, dict):
        return None
    resource = {"group": _text(ref, "apiGroup"), "resource": _text(ref, "resource")}
    return config.redactor.paths_for({"resource": resource})


def _redact(
    config: PrivacyConfig, event: dict[str, Any], paths: tuple[Path, ...], encode: Encoder
) -> int:
    count = 0
    for key in _OBJECT_KEYS:
        obj = event.get(key)
        count += config.redactor.redact_object(obj, paths, encode)
        items = obj.get("items") if isinstance(obj, dict) else None
        if isinstance(items, list):
            for item in items:
                count += config.redactor.redact_object(item, paths, encode)
    return count


def _trim(event: dict[str, Any], level: Level, omit_managed_fields: bool) -> None:
    if _RANK[level] <= _RANK[Level.METADATA]:
        event.pop("requestObject", None)
    if _RANK[level] <= _RANK[Level.REQUEST]:
        event.pop("responseObject", None)
    if omit_managed_fields:
        for key in _OBJECT_KEYS:
            if _has_managed_fields(event.get(key)):
                del event[key]["metadata"]["managedFields"]
    event["level"] = level.value


def _appended(raw: bytes, cluster: bytes, has_timestamp: bool, stamp: bytes) -> bytes:
    """The event's own bytes with cluster, then the receive time if missing, as last members."""
    tail = cluster
    if not has_timestamp:
        tail += _TIMESTAMP_MEMBER + stamp + b'"'
    if not tail:
        return raw + b"\n"
    if len(raw) == 2:  # {} cannot happen for a validated event, but stay valid JSON
        tail = tail[1:]
    return raw[:-1] + tail + b"}\n"


def render_batch(
    events: EventList,
    compacted: bytes,
    exact: bool,
    config: PrivacyConfig,
    cluster: str | None,
    received_ns: int,
    dropped: Callable[[str], None] = lambda _rule: None,
) -> Batch:
    """Every kept event's line, concatenated; *exact*: orjson could not read the body."""
    stamp_text = format_timestamp(received_ns)
    stamp = stamp_text.encode("ascii")
    cluster_member = (
        b',"' + CLUSTER_KEY.encode() + b'":' + orjson.dumps(cluster) if cluster else b""
    )
    policy = config.policy
    lines: list[bytes] = []
    written = skipped = redacted = 0
    for item, (start, end) in zip(events.items, events.spans, strict=True):
        level = _LEVELS[item["level"]]
        omit = False
        if policy is not None:
            decision = decide(policy, item)
            if _RANK[decision.level] < _RANK[level]:
                level = decision.level
            omit = decision.omit_managed_fields
            if level is Level.NONE:
                dropped(decision.rule)
                skipped += 1
                continue
        paths = _redaction_paths(config, item)
        changed = (
            paths is not None
            or level.value != item["level"]
            or (cluster is not None and CLUSTER_KEY in item)
            or (omit and any(_has_managed_fields(item.get(key)) for key in _OBJECT_KEYS))
        )
        raw = compacted[start:end]
        if not changed:
            lines.append(_appended(raw, cluster_member, TIMESTAMP_KEY in item, stamp))
            written += 1
            continue
        event: Any = item
        encode: Encoder = orjson.dumps
        if exact or _LONG_INTEGER.search(raw):
            # Numbers orjson cannot hold exactly: keep their spelling.
            event, encode = exact_loads(raw) or item, exact_dumps
        _trim(event, level, omit)
        if paths is not None:
            redacted += bool(_redact(config, event, paths, encode))
        if cluster:
            event.pop(CLUSTER_KEY, None)
            event[CLUSTER_KEY] = cluster
        if TIMESTAMP_KEY not in event:
            event[TIMESTAMP_KEY] = stamp_text
        try:
            lines.append(encode(event) + b"\n")
        except orjson.JSONEncodeError:  # deeper than orjson's limit
            lines.append(exact_dumps(event) + b"\n")
        written += 1
    return Batch(b"".join(lines), written, skipped, redacted)


def is_exact_document(document: Any) -> bool:
    """Whether the body was read by the stdlib fallback (see ``review.StdlibDocument``)."""
    return isinstance(document, StdlibDocument)

"""Redaction: values replaced by a marker in ``request.object`` and ``request.oldObject``.

Secrets (core group, resource ``secrets``) have the values under ``data`` and
``stringData`` redacted by default; a redaction file adds paths for any other
group/resource. The same paths are redacted inside the object's
``kubectl.kubernetes.io/last-applied-configuration`` annotation, which holds a
copy of the applied object as a JSON string.

The marker is ``"<redacted>"``, or with an HMAC key
``"<redacted hmac-sha256:HEX>"`` over the value's UTF-8 bytes (a non-string
value: over its compact JSON), so equal markers mean equal values.

Path syntax: segments separated by ``.``; ``*`` is any key of an object or any
element of a list; a number picks that element of a list (or is a key of an
object); ``\\.``, ``\\*`` and ``\\\\`` write a literal dot, star or backslash. A
path ending in ``*`` also replaces a non-null scalar found where the object or
list was expected, so a malformed value is never let through.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from kube_audit_rest.config_files import ConfigFileError, Fields, read_document, type_name

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
PLAIN_MARKER: Final = "<redacted>"


class _Wildcard:
    def __repr__(self) -> str:
        return "*"


WILDCARD: Final = _Wildcard()
Segment = str | _Wildcard
Path = tuple[Segment, ...]
Encoder = Callable[[Any], bytes]

SECRET_PATHS: tuple[Path, ...] = (("data", WILDCARD), ("stringData", WILDCARD))
SECRETS = ("", "secrets")


def parse_path(text: str) -> Path:
    """``spec.users.*.password`` -> ("spec", "users", WILDCARD, "password"); ValueError if bad."""
    segments: list[Segment] = []
    current: list[str] = []
    literal_star = False
    escaped = False
    for char in text:
        if escaped:
            if char not in ".*\\":
                raise ValueError(f"unknown escape \\{char} (use \\. \\* or \\\\)")
            current.append(char)
            literal_star = True
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            segments.append(_segment(current, literal_star))
            current, literal_star = [], False
        else:
            current.append(char)
    if escaped:
        raise ValueError("ends with a lone backslash")
    segments.append(_segment(current, literal_star))
    return tuple(segments)


def _segment(chars: list[str], escaped: bool) -> Segment:
    text = "".join(chars)
    if not text:
        raise ValueError("has an empty segment")
    if text == "*" and not escaped:
        return WILDCARD
    return text


@dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces values at paths by markers; counts what it replaced."""

    hmac_key: bytes | None = None
    rules: Mapping[tuple[str, str], tuple[Path, ...]] = field(default_factory=dict)

    def paths_for(self, request: Mapping[str, Any]) -> tuple[Path, ...] | None:
        """The paths to redact for this request's resource, or None: cheap on the hot path."""
        if not self.rules:
            return None
        resource = request.get("resource")
        if not isinstance(resource, dict):
            return None
        name = resource.get("resource")
        group = resource.get("group", "")
        if not isinstance(name, str) or not isinstance(group, str):
            return None
        return self.rules.get((group, name))

    def marker(self, value: Any, encode: Encoder = orjson.dumps) -> str:
        if self.hmac_key is None:
            return PLAIN_MARKER
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
        else:
            try:
                data = encode(value)
            except orjson.JSONEncodeError:  # deeper than orjson's 255 levels
                text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
                data = text.encode("utf-8", "surrogatepass")
        digest = hmac.new(self.hmac_key, data, hashlib.sha256).hexdigest()
        return f"<redacted hmac-sha256:{digest}>"

    def redact_object(self, obj: Any, paths: tuple[Path, ...], encode: Encoder) -> int:
        """Redact *paths* in one object (in place) and in its last-applied annotation."""
        if not isinstance(obj, dict):
            return 0
        count = sum(self._apply(obj, path, 0, encode) for path in paths)
        return count + self._redact_last_applied(obj, paths, encode)

    def _apply(self, node: Any, path: Path, index: int, encode: Encoder) -> int:
        segment = path[index]
        last = index == len(path) - 1
        keys: list[Any]
        if isinstance(node, dict):
            keys = list(node) if segment is WILDCARD else [segment] if segment in node else []
        elif isinstance(node, list):
            if segment is WILDCARD:
                keys = list(range(len(node)))
            elif isinstance(segment, str) and segment.isdigit() and int(segment) < len(node):
                keys = [int(segment)]
            else:
                keys = []
        else:
            return 0
        count = 0
        for key in keys:
            child = node[key]
            if last:
                if child is not None:
                    node[key] = self.marker(child, encode)
                    count += 1
            elif (
                index + 2 == len(path)
                and path[index + 1] is WILDCARD
                and child is not None
                and not isinstance(child, dict | list)
            ):
                # `data.*` where data is a scalar: replace it whole.
                node[key] = self.marker(child, encode)
                count += 1
            else:
                count += self._apply(child, path, index + 1, encode)
        return count

    def _redact_last_applied(
        self, obj: dict[str, Any], paths: tuple[Path, ...], enc: Encoder
    ) -> int:
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            return 0
        annotations = metadata.get("annotations")
        if not isinstance(annotations, dict) or LAST_APPLIED not in annotations:
            return 0
        text = annotations[LAST_APPLIED]
        if text is None:
            return 0
        try:
            applied = orjson.loads(text) if isinstance(text, str) else None
        except orjson.JSONDecodeError:
            applied = None
        if not isinstance(applied, dict):
            # Not a JSON object (or not parseable by the strict reader): it may
            # still carry the values, so it goes as a whole.
            annotations[LAST_APPLIED] = self.marker(text, enc)
            return 1
        count = sum(self._apply(applied, path, 0, orjson.dumps) for path in paths)
        # Re-encoded even when nothing was replaced: duplicate keys collapse,
        # so no copy of a value hides behind a later duplicate.
        newline = "\n" if text.endswith("\n") else ""
        try:
            annotations[LAST_APPLIED] = orjson.dumps(applied).decode() + newline
        except orjson.JSONEncodeError:  # nested too deeply for the encoder
            annotations[LAST_APPLIED] = self.marker(text, enc)
            return 1
        return count


# --------------------------------------------------------------------------- files


_RULE_FIELDS = ("group", "resource", "paths")


def parse_rules(file: str, document: Any) -> dict[tuple[str, str], tuple[Path, ...]]:
    """Validate a redaction file: a list of {group, resource, paths}."""
    if document is None:
        return {}
    if not isinstance(document, list):
        raise ConfigFileError(
            f"{file}: (top level): must be a list of {{group, resource, paths}}, "
            f"got {type_name(document)}"
        )
    rules: dict[tuple[str, str], tuple[Path, ...]] = {}
    for index, item in enumerate(document):
        fields = Fields(file, f"[{index}]", item, _RULE_FIELDS)
        group = fields.string("group", default="")
        resource = fields.string("resource", required=True)
        assert group is not None and resource is not None
        if not resource:
            fields.fail(fields.at("resource"), "must not be empty")
        texts = fields.strings("paths")
        if not texts:
            fields.fail(fields.at("paths"), "must list at least one path")
        compiled = []
        for n, text in enumerate(texts):
            try:
                compiled.append(parse_path(text))
            except ValueError as error:
                fields.fail(f"{fields.at('paths')}[{n}]", f"{text!r} {error}")
        key = (group, resource)
        rules[key] = rules.get(key, ()) + tuple(compiled)
    return rules


def load_rules(path: str) -> dict[tuple[str, str], tuple[Path, ...]]:
    return parse_rules(path, read_document(path))


def load_hmac_key(path: str) -> bytes:
    """The key is the file's bytes, exactly (a trailing newline is part of it)."""
    try:
        with open(path, "rb") as handle:
            key = handle.read()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read: {error.strerror}") from None
    if not key:
        raise ConfigFileError(f"{path}: the HMAC key file is empty")
    return key


def build_redactor(
    redact_secrets: bool,
    custom: Mapping[tuple[str, str], tuple[Path, ...]],
    hmac_key: bytes | None,
) -> Redactor:
    rules = dict(custom)
    if redact_secrets:
        rules[SECRETS] = SECRET_PATHS + rules.get(SECRETS, ())
    return Redactor(hmac_key, rules)

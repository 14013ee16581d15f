"""What an UPDATE changed: noise removal, leaf-by-leaf comparison, redaction markers.

A redacted value is the string ``<redacted>`` or ``<redacted hmac-sha256:HEX>``
(see the README's redaction section). Two HMAC markers can be compared: equal
markers mean the value did not change. Anything else at a redacted place is
"cannot tell", and no value is ever shown for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
Path = tuple[str | int, ...]

_MARKER = re.compile(r"<redacted(?: hmac-sha256:[0-9a-f]{64})?>", re.ASCII)
_HMAC_MARKER = re.compile(r"<redacted hmac-sha256:[0-9a-f]{64}>", re.ASCII)
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Fields the server maintains on every write; a diff of them says nothing.
NOISE_METADATA = ("managedFields", "resourceVersion", "generation")

CHANGED = "changed"
UNCHANGED = "unchanged"
CANNOT_TELL = "redacted (cannot tell)"


def is_marker(value: Any) -> bool:
    return isinstance(value, str) and _MARKER.fullmatch(value) is not None


def has_marker(value: Any) -> bool:
    if isinstance(value, dict):
        return any(has_marker(v) for v in value.values())
    if isinstance(value, list):
        return any(has_marker(v) for v in value)
    # A marker inside a string: the last-applied annotation holds the object as JSON.
    return isinstance(value, str) and _MARKER.search(value) is not None


def redaction_state(old: Any, new: Any) -> str:
    both_hmac = (
        isinstance(old, str)
        and isinstance(new, str)
        and _HMAC_MARKER.fullmatch(old) is not None
        and _HMAC_MARKER.fullmatch(new) is not None
    )
    if both_hmac:
        return UNCHANGED if old == new else CHANGED
    return CANNOT_TELL


def without_noise(obj: Json | None, include_status: bool) -> Json | None:
    """A copy without managedFields, resourceVersion, generation, the last-applied
    annotation (a copy of the object itself) and, unless asked, status."""
    if obj is None:
        return None
    # Shallow copies of the levels we change; the rest is shared, never mutated.
    clean = dict(obj)
    metadata = clean.get("metadata")
    if isinstance(metadata, dict):
        metadata = clean["metadata"] = {
            k: v for k, v in metadata.items() if k not in NOISE_METADATA
        }
        annotations = metadata.get("annotations")
        if isinstance(annotations, dict) and LAST_APPLIED in annotations:
            annotations = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
            if annotations:
                metadata["annotations"] = annotations
            else:
                del metadata["annotations"]
    if not include_status:
        clean.pop("status", None)
    return clean


@dataclass(frozen=True, slots=True)
class Change:
    path: Path
    old: Any  # MISSING when added
    new: Any  # MISSING when removed
    redacted: str = ""  # CHANGED / UNCHANGED / CANNOT_TELL for redacted leaves


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def compare(old: Any, new: Any, path: Path = ()) -> list[Change]:
    """Leaf changes from *old* to *new*; redacted leaves are listed even when unchanged.

    A map that appears or disappears counts as its keys appearing or disappearing,
    so a first label reads ``labels +app=web``.
    """
    if isinstance(new, dict) and (old is MISSING or old is None) and new:
        old = {}
    if isinstance(old, dict) and (new is MISSING or new is None) and old:
        new = {}
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[Change] = []
        for key in list(old) + [k for k in new if k not in old]:
            found.extend(compare(old.get(key, MISSING), new.get(key, MISSING), (*path, key)))
        return found
    if isinstance(old, list) and isinstance(new, list):
        found = []
        for index in range(max(len(old), len(new))):
            left = old[index] if index < len(old) else MISSING
            right = new[index] if index < len(new) else MISSING
            found.extend(compare(left, right, (*path, index)))
        return found
    if is_marker(old) or is_marker(new):
        if old is MISSING or new is MISSING:
            return [Change(path, old, new, CHANGED)]
        return [Change(path, old, new, redaction_state(old, new))]
    if old is MISSING and new is MISSING:
        return []
    if old == new and type(old) is type(new):
        return []
    return [Change(path, old, new)]


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            text += f".{part}" if text else part
        else:
            text += f'["{part}"]'
    return text


def hide_markers(value: Any, placeholder: str = "<redacted>") -> Any:
    """A copy where every redaction marker (HMAC included) reads *placeholder*."""
    if isinstance(value, dict):
        return {k: hide_markers(v, placeholder) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_markers(v, placeholder) for v in value]
    return placeholder if is_marker(value) else value

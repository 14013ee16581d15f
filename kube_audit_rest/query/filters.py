"""Which records a query keeps: a cheap test on the raw line, then the exact one.

``Criteria.may_match(raw)`` looks for literal pieces of the wanted values in
the line's bytes and rules most lines out without parsing their JSON, which is
where a filtered scan gets its speed. It only rules a line out when the value
cannot be in it: a wanted value made of letters, digits and ``-._:@`` is
written as those same bytes in JSON unless the line uses ``\\u`` escapes, so a
line that has a ``\\u`` escape anywhere is always parsed. ``matches(record)``
then decides on the parsed record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from kube_audit_rest.query.records import Record
from kube_audit_rest.query.timeparse import parse_rfc3339

_GLOB_CHARS = re.compile(r"[*?\[]")
# Characters JSON never needs to escape; a needle made of them is found verbatim.
_PLAIN = re.compile(r"[A-Za-z0-9._:@-]+", re.ASCII)
_ESCAPE = b"\\u"
_TIME_KEY = b'"requestReceivedTimestamp":"'

OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
VERBS = (
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "connect",
    "get",
    "list",
    "watch",
)


def _raw_time(raw: bytes) -> int | None:
    """The record time read from the bytes, when the line has exactly one such key.

    An unescaped ``"requestReceivedTimestamp":"`` can only be a key (a quote
    inside a JSON string is escaped); when it occurs once, it is the record's
    time or, if the record has none at top level, the record fails the window
    on its parsed time anyway.
    """
    start = raw.find(_TIME_KEY)
    if start < 0 or raw.rfind(_TIME_KEY) != start:
        return None
    start += len(_TIME_KEY)
    end = raw.find(b'"', start)
    if end < 0:
        return None
    try:
        return parse_rfc3339(raw[start:end].decode("ascii"))
    except UnicodeDecodeError:
        return None


class Pattern:
    """An exact value or an ``fnmatch`` glob (``*``, ``?``, ``[...]``), case-sensitive."""

    __slots__ = ("exact", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.exact = _GLOB_CHARS.search(text) is None

    def __call__(self, value: str) -> bool:
        return value == self.text if self.exact else fnmatchcase(value, self.text)

    def needles(self) -> tuple[bytes, ...] | None:
        """Bytes that are all in every line holding a matching value, if we can tell.

        An exact value is looked for with its quotes; a glob by each of its literal
        pieces (every piece of a glob is in any string it matches).
        """
        if self.exact:
            if _PLAIN.fullmatch(self.text):
                return (b'"' + self.text.encode() + b'"',)
            return None
        pieces = [p for p in re.split(r"\[[^\]]*\]?|[*?]", self.text) if p]
        plain = tuple(p.encode() for p in pieces if _PLAIN.fullmatch(p))
        return plain or None


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A ``--resource`` value: ``deployments``, ``apps/deployments``, ``deployments.apps``,
    ``pods/exec``, ``apps/deployments/scale``.

    Two parts are read both ways, as group/resource and as resource/subresource;
    a resource alone matches it in any group and with any subresource. Each
    part may be a glob (``*/scale``).
    """

    alternatives: tuple[tuple[str | None, str, str | None], ...]

    @classmethod
    def parse(cls, text: str) -> ResourceSpec:
        parts = text.split("/")
        if any(not part for part in parts) or len(parts) > 3:
            raise ValueError(
                f"invalid --resource {text!r}: use RESOURCE, GROUP/RESOURCE or RESOURCE/SUBRESOURCE"
            )
        if len(parts) == 3:
            return cls(((parts[0], parts[1], parts[2]),))
        if len(parts) == 2:
            resource, group = _split_dotted(parts[1]) if "." in parts[1] else (parts[1], None)
            if group is not None:
                return cls(((group, resource, None),))
            first, first_group = _split_dotted(parts[0])
            return cls(((parts[0], parts[1], None), (first_group, first, parts[1])))
        resource, group = _split_dotted(parts[0])
        return cls(((group, resource, None),))

    def __call__(self, record: Record) -> bool:
        for group, resource, subresource in self.alternatives:
            if not _same(resource, record.resource):
                continue
            if group is not None and not _same(group, record.group):
                continue
            if subresource is not None and not _same(subresource, record.subresource):
                continue
            return True
        return False

    def needles(self) -> tuple[tuple[bytes, ...], ...]:
        """Alternatives of bytes in every line about a matching resource (none: cannot tell)."""
        if not all(_PLAIN.fullmatch(r) for _g, r, _s in self.alternatives):
            return ()
        return tuple((b'"' + r.encode() + b'"',) for _g, r, _s in self.alternatives)


def _same(wanted: str, value: str) -> bool:
    """Equal, or matched as a glob when *wanted* has glob characters (``*/scale``)."""
    if _GLOB_CHARS.search(wanted) is None:
        return wanted == value
    return fnmatchcase(value, wanted)


def _split_dotted(text: str) -> tuple[str, str | None]:
    """``deployments.apps`` -> (deployments, apps); ``pods`` -> (pods, None); ``core`` is ''."""
    resource, _, group = text.partition(".")
    if not group:
        return resource, None
    return resource, "" if group == "core" else group


@dataclass(slots=True)
class Criteria:
    """All filters of one query; every given filter must match (any of its values)."""

    users: list[Pattern] = field(default_factory=list)
    groups: list[Pattern] = field(default_factory=list)
    namespaces: list[Pattern] = field(default_factory=list)
    names: list[Pattern] = field(default_factory=list)
    clusters: list[Pattern] = field(default_factory=list)
    resources: list[ResourceSpec] = field(default_factory=list)
    operations: set[str] = field(default_factory=set)
    verbs: set[str] = field(default_factory=set)
    dry_run: bool | None = None
    since_ns: int | None = None  # inclusive
    until_ns: int | None = None  # exclusive
    texts: list[bytes] = field(default_factory=list)
    # Per filter, alternatives (one per value) of byte strings that must all be present.
    _needles: list[tuple[tuple[bytes, ...], ...]] = field(default_factory=list)

    def prepare(self) -> None:
        """Work out the byte needles of the filters that have them."""
        self._needles = []
        for patterns in (self.users, self.namespaces, self.names, self.clusters, self.groups):
            alternatives = [p.needles() for p in patterns]
            if patterns and all(alternatives):
                self._needles.append(tuple(a for a in alternatives if a))
        if self.resources:
            per_spec = [spec.needles() for spec in self.resources]
            if all(per_spec):
                self._needles.append(tuple(a for needles in per_spec for a in needles))

    def may_match(self, raw: bytes) -> bool:
        for text in self.texts:
            if text not in raw:
                return False
        if self._needles and _ESCAPE not in raw:
            for alternatives in self._needles:
                if not any(all(n in raw for n in pieces) for pieces in alternatives):
                    return False
        if self.since_ns is not None or self.until_ns is not None:
            stamp = _raw_time(raw)
            if stamp is not None:
                if self.since_ns is not None and stamp < self.since_ns:
                    return False
                if self.until_ns is not None and stamp >= self.until_ns:
                    return False
        return True

    def matches(self, record: Record) -> bool:
        if self.users and not any(p(record.user) for p in self.users):
            return False
        if self.groups and not any(p(g) for p in self.groups for g in record.groups):
            return False
        if self.namespaces and not any(p(record.namespace) for p in self.namespaces):
            return False
        if self.names and not any(p(record.name) for p in self.names):
            return False
        if self.clusters and not any(p(record.cluster or "") for p in self.clusters):
            return False
        if self.resources and not any(spec(record) for spec in self.resources):
            return False
        if self.operations and record.operation not in self.operations:
            return False
        if self.verbs and not (
            record.verb in self.verbs or ("connect" in self.verbs and record.operation == "CONNECT")
        ):
            return False
        if self.dry_run is not None and record.dry_run != self.dry_run:
            return False
        if self.since_ns is not None or self.until_ns is not None:
            if record.time_ns is None:
                return False
            if self.since_ns is not None and record.time_ns < self.since_ns:
                return False
            if self.until_ns is not None and record.time_ns >= self.until_ns:
                return False
        return True

"""The kube-apiserver audit ``Policy`` (``audit.k8s.io/v1``), applied to admission requests.

Matching follows kube-apiserver's policy checker: rules are tried in order and
the first whose every field matches decides the level; a request that matches
no rule gets level ``None`` (so a policy should end with a catch-all rule). An
empty list in a rule matches everything. ``resources`` entries match on the API
group exactly (``""`` is the core group), then on ``resource`` or
``resource/subresource`` with the forms ``*``, ``pods/*`` and ``*/status``,
optionally restricted to ``resourceNames``; ``namespaces`` uses ``""`` for
cluster-scoped objects.

An AdmissionReview carries no HTTP verb, so the verb is derived from the
admission operation (see ``admission_verbs``), and the request's name is the
one the API server's URL would carry: empty for a plain create.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_audit_rest.config_files import ConfigFileError, Fields, read_document, type_name

API_VERSION = "audit.k8s.io/v1"
STAGES = ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")


class Level(enum.Enum):
    NONE = "None"
    METADATA = "Metadata"
    REQUEST = "Request"
    REQUEST_RESPONSE = "RequestResponse"


_LEVELS = {level.value: level for level in Level}
_LEVEL_NAMES = ", ".join(_LEVELS)


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a policy rule can match, taken from an admission request."""

    user: str
    groups: tuple[str, ...]
    verbs: tuple[str, ...]  # one verb, or the two a CONNECT may have been
    namespace: str
    api_group: str
    resource: str
    subresource: str
    name: str


@dataclass(frozen=True, slots=True)
class GroupResources:
    group: str
    resources: tuple[str, ...]
    resource_names: frozenset[str]

    def matches(self, attrs: Attributes) -> bool:
        if self.group != attrs.api_group:
            return False
        if not self.resources:
            return True
        if self.resource_names and attrs.name not in self.resource_names:
            return False
        combined = attrs.resource
        if attrs.subresource:
            combined = f"{attrs.resource}/{attrs.subresource}"
        for pattern in self.resources:
            if pattern in ("*", combined):
                return True
            if attrs.subresource and pattern == "*/" + attrs.subresource:
                return True
            if pattern.endswith("/*") and pattern[:-2] == attrs.resource:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Rule:
    index: int
    level: Level
    users: frozenset[str]
    user_groups: frozenset[str]
    verbs: frozenset[str]
    resources: tuple[GroupResources, ...]
    namespaces: frozenset[str]
    non_resource_urls: tuple[str, ...]
    omit_managed_fields: bool | None

    def matches(self, attrs: Attributes) -> bool:
        if self.users and attrs.user not in self.users:
            return False
        if self.user_groups and self.user_groups.isdisjoint(attrs.groups):
            return False
        if self.verbs and self.verbs.isdisjoint(attrs.verbs):
            return False
        if self.namespaces or self.resources:
            if self.namespaces and attrs.namespace not in self.namespaces:
                return False
            return not self.resources or any(gr.matches(attrs) for gr in self.resources)
        # Admission requests are all resource requests, which a rule
        # restricted to non-resource URLs never matches.
        return not self.non_resource_urls


@dataclass(frozen=True, slots=True)
class Decision:
    level: Level
    omit_managed_fields: bool
    rule: str  # the index of the matching rule, or "default" when none matched


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...]
    omit_managed_fields: bool
    warnings: tuple[str, ...]

    def decide(self, attrs: Attributes) -> Decision:
        for rule in self.rules:
            if rule.matches(attrs):
                omit = self.omit_managed_fields
                if rule.omit_managed_fields is not None:
                    omit = rule.omit_managed_fields
                return Decision(rule.level, omit, str(rule.index))
        return Decision(Level.NONE, self.omit_managed_fields, "default")


# ------------------------------------------------------------------ admission -> attributes

# CONNECT reaches admission without its HTTP method; the API server's verb is
# "create" for a POST (SPDY clients) and "get" for a GET (WebSocket upgrades).
_CONNECT_VERBS = ("create", "get")
_OPERATION_VERBS = {
    "CREATE": ("create",),
    "UPDATE": ("update",),
    "DELETE": ("delete",),
    "CONNECT": _CONNECT_VERBS,
}


def _text(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    return value if isinstance(value, str) else ""


def _mapping(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def admission_verbs(request: Mapping[str, Any]) -> tuple[str, ...]:
    """The API verb(s) of an admission request.

    A PATCH (merge, JSON or server-side apply) reaches admission as UPDATE, or
    as CREATE when an apply creates the object, with ``options.kind`` =
    ``PatchOptions``: its verb is ``patch``.
    """
    options = request.get("options")
    if isinstance(options, dict) and options.get("kind") == "PatchOptions":
        return ("patch",)
    operation = request.get("operation")
    if isinstance(operation, str):
        verbs = _OPERATION_VERBS.get(operation)
        if verbs is not None:
            return verbs
        return (operation.lower(),)
    return ()


def attributes(request: Mapping[str, Any]) -> Attributes:
    """The matchable attributes of an admission ``request`` object."""
    user_info = _mapping(request, "userInfo")
    raw_groups = user_info.get("groups")
    groups = (
        tuple(g for g in raw_groups if isinstance(g, str)) if isinstance(raw_groups, list) else ()
    )
    # requestResource is what the client asked for (the URL the API server's
    # policy sees); resource may be a conversion of it for this webhook.
    resource = _mapping(request, "requestResource") or _mapping(request, "resource")
    if "requestResource" in request:
        subresource = _text(request, "requestSubResource")
    else:
        subresource = _text(request, "subResource")
    verbs = admission_verbs(request)
    name = _text(request, "name")
    if verbs == ("create",) and not subresource:
        # POST to the collection: the URL, and so the API server's policy, has no name.
        name = ""
    return Attributes(
        user=_text(user_info, "username"),
        groups=groups,
        verbs=verbs,
        namespace=_text(request, "namespace"),
        api_group=_text(resource, "group"),
        resource=_text(resource, "resource"),
        subresource=subresource,
        name=name,
    )


# --------------------------------------------------------------------------- loading


_POLICY_FIELDS = ("apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields")
_RULE_FIELDS = (
    "level",
    "users",
    "userGroups",
    "verbs",
    "resources",
    "namespaces",
    "nonResourceURLs",
    "omitStages",
    "omitManagedFields",
)
_GROUP_RESOURCE_FIELDS = ("group", "resources", "resourceNames")


def _stages(fields: Fields, key: str) -> tuple[str, ...]:
    stages = fields.strings(key)
    for index, stage in enumerate(stages):
        if stage not in STAGES:
            fields.fail(f"{fields.at(key)}[{index}]", f"must be one of {', '.join(STAGES)}")
    return stages


def _group_resources(file: str, where: str, value: Any) -> GroupResources:
    fields = Fields(file, where, value, _GROUP_RESOURCE_FIELDS)
    group = fields.string("group", default="")
    assert group is not None
    resources = fields.strings("resources")
    for index, resource in enumerate(resources):
        parts = resource.split("/")
        if len(parts) > 2 or not all(parts):
            fields.fail(
                f"{fields.at('resources')}[{index}]",
                "must be a resource, resource/subresource, *, resource/* or */subresource",
            )
    names = fields.strings("resourceNames")
    if names and not resources:
        fields.fail(fields.at("resourceNames"), "needs resources to be given as well")
    return GroupResources(group, resources, frozenset(names))


def _rule(file: str, index: int, value: Any, warnings: list[str]) -> Rule:
    where = f"rules[{index}]"
    fields = Fields(file, where, value, _RULE_FIELDS)
    level_name = fields.string("level", required=True)
    if level_name not in _LEVELS:
        fields.fail(fields.at("level"), f"must be one of {_LEVEL_NAMES}")
    resources = tuple(
        _group_resources(file, f"{where}.resources[{n}]", item)
        for n, item in enumerate(fields.items("resources"))
    )
    namespaces = fields.strings("namespaces")
    urls = fields.strings("nonResourceURLs")
    if urls and (resources or namespaces):
        fields.fail(fields.at("nonResourceURLs"), "cannot be combined with resources or namespaces")
    for n, url in enumerate(urls):
        if not url.startswith("/") and url != "*":
            fields.fail(f"{fields.at('nonResourceURLs')}[{n}]", "must start with /")
    if urls:
        warnings.append(
            f"{file}: {where}.nonResourceURLs: admission requests are never non-resource "
            "requests, so this rule never matches"
        )
    if _stages(fields, "omitStages"):
        warnings.append(f"{file}: {where}.omitStages: ignored, an admission record has no stages")
    return Rule(
        index=index,
        level=_LEVELS[level_name],
        users=frozenset(fields.strings("users")),
        user_groups=frozenset(fields.strings("userGroups")),
        verbs=frozenset(fields.strings("verbs")),
        resources=resources,
        namespaces=frozenset(namespaces),
        non_resource_urls=urls,
        omit_managed_fields=fields.boolean("omitManagedFields"),
    )


def parse_policy(file: str, document: Any) -> Policy:
    """Validate a parsed policy document; ConfigFileError names the field and the problem."""
    if document is None:
        raise ConfigFileError(f"{file}: the file is empty")
    fields = Fields(file, "", document, _POLICY_FIELDS)
    if fields.string("apiVersion", required=True) != API_VERSION:
        fields.fail("apiVersion", f"must be {API_VERSION}")
    if fields.string("kind", required=True) != "Policy":
        fields.fail("kind", "must be Policy")
    metadata = document.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        fields.fail("metadata", f"must be a mapping, got {type_name(metadata)}")
    warnings: list[str] = []
    if _stages(fields, "omitStages"):
        warnings.append(f"{file}: omitStages: ignored, an admission record has no stages")
    rules = tuple(
        _rule(file, index, item, warnings) for index, item in enumerate(fields.items("rules"))
    )
    if not rules:
        warnings.append(f"{file}: rules: empty, so every record is dropped (level None)")
    return Policy(rules, bool(fields.boolean("omitManagedFields")), tuple(warnings))


def load_policy(path: str) -> Policy:
    return parse_policy(path, read_document(path))

"""Reading the user's YAML/JSON configuration files with one-line errors.

The policy and redaction files are small documents written by hand, so every
mistake is reported as one line naming the file, the field and the problem,
for example ``policy.yaml: rules[2].level: must be one of None, Metadata``.
Duplicate keys are refused (YAML and JSON readers disagree on which one wins).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any, NoReturn

import yaml

FileSignature = tuple[tuple[int, int, int, int], ...]


class ConfigFileError(ValueError):
    """A configuration file is unusable; the message is one line: file: field: problem."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe YAML loader, refusing a mapping that repeats a key."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} at line {mark.line + 1}", None
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"duplicate key {key!r}")
        mapping[key] = value
    return mapping


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_document(path: str) -> Any:
    """Parse *path* as JSON (if it looks like JSON) or YAML; ConfigFileError otherwise."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise ConfigFileError(f"{path}: cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not valid UTF-8") from None
    if text.lstrip().startswith(("{", "[")) or path.endswith(".json"):
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except ValueError as error:
            if path.endswith(".json"):
                raise ConfigFileError(f"{path}: not valid JSON: {_one_line(str(error))}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigFileError(f"{path}: not valid YAML: {_one_line(str(error))}") from None


def signature(paths: Iterable[str]) -> FileSignature:
    """``stat`` of each file, following symlinks, or an empty entry when it is missing.

    A Kubernetes ConfigMap or Secret volume update swaps the ``..data`` symlink:
    the path then names another inode, which changes the signature.
    """
    entries = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            entries.append((-1, -1, -1, -1))
            continue
        entries.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


class Fields:
    """Checks the members of one mapping in a configuration file, naming each by its path."""

    def __init__(self, file: str, where: str, value: Any, allowed: Iterable[str]) -> None:
        self.file = file
        self.where = where
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, got {type_name(value)}")
        self.value: dict[Any, Any] = value
        allowed_set = set(allowed)
        for key in value:
            if key not in allowed_set:
                names = ", ".join(sorted(allowed_set))
                self.fail(self.at(str(key)), f"unknown field (expected one of: {names})")

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, where: str, problem: str) -> NoReturn:
        raise ConfigFileError(f"{self.file}: {where or '(top level)'}: {problem}")

    def string(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        if key not in self.value or self.value[key] is None:
            if required:
                self.fail(self.at(key), "is required")
            return default
        value = self.value[key]
        if not isinstance(value, str):
            self.fail(self.at(key), f"must be a string, got {type_name(value)}")
        return value

    def boolean(self, key: str) -> bool | None:
        if key not in self.value or self.value[key] is None:
            return None
        value = self.value[key]
        if not isinstance(value, bool):
            self.fail(self.at(key), f"must be true or false, got {type_name(value)}")
        return value

    def items(self, key: str) -> list[Any]:
        if key not in self.value or self.value[key] is None:
            return []
        value = self.value[key]
        if not isinstance(value, list):
            self.fail(self.at(key), f"must be a list, got {type_name(value)}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        found = self.items(key)
        for index, item in enumerate(found):
            if not isinstance(item, str):
                self.fail(f"{self.at(key)}[{index}]", f"must be a string, got {type_name(item)}")
        return tuple(found)


def type_name(value: Any) -> str:
    """How a YAML/JSON user would call the type of *value*."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__

"""An ``audit.k8s.io/v1`` ``EventList`` body: validation, and each item's own bytes.

The audit webhook backend of kube-apiserver POSTs batches of events as one
``EventList``. Each event is recorded as its own line, byte-preserved: the
item's bytes exactly as sent, compacted, never re-encoded. ``item_spans``
finds where each element of the top-level ``items`` array starts and ends in
the compacted body with a small tokenizer (strings are single tokens, so
brackets inside strings never count); the parsed document (orjson) is used
for validation only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kube_audit_rest.policy import STAGES, Level
from kube_audit_rest.review import InvalidReview

API_VERSION = "audit.k8s.io/v1"
LEVELS = frozenset(level.value for level in Level)

# A JSON string token or one structural character; whatever else lies between
# (numbers, true/false/null) is skipped by finditer.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]', re.DOTALL)
_ITEMS_KEY = b'"items"'


class InvalidEventList(InvalidReview):
    """The body is not an EventList we can record; the message says why."""


@dataclass(frozen=True, slots=True)
class EventList:
    """A validated batch: the parsed items, and their byte spans in the compacted body."""

    items: list[dict[str, Any]]
    spans: list[tuple[int, int]]


def item_spans(compacted: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of each element of the top-level ``items`` array of *compacted*.

    *compacted* must be valid JSON with no whitespace outside strings (see
    ``review.compact``) whose top level is an object. With a duplicated
    ``items`` key the last one counts, as for orjson. None when there is no
    top-level ``items`` array.
    """
    depth = 0
    expect_key = False
    items_next = False  # the key just read at depth 1 is "items"
    in_items = False
    element_start = 0
    spans: list[tuple[int, int]] | None = None
    current: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(compacted):
        first = compacted[match.start()]
        if first == 0x22:  # a string
            if depth == 1 and expect_key:
                items_next = match.group() == _ITEMS_KEY
                expect_key = False
            continue
        if first in (0x7B, 0x5B):  # { [
            depth += 1
            if depth == 1:
                expect_key = True
            elif depth == 2 and items_next:
                items_next = False
                if first == 0x5B:
                    in_items = True
                    current = []
                    element_start = match.end()
            elif depth == 2:
                items_next = False
        elif first in (0x7D, 0x5D):  # } ]
            if depth == 2 and in_items:
                if match.start() > element_start:
                    current.append((element_start, match.start()))
                in_items = False
                spans = current
            depth -= 1
        elif first == 0x2C:  # ,
            if depth == 1:
                expect_key = True
                items_next = False  # a scalar value of "items"
            elif depth == 2 and in_items:
                current.append((element_start, match.start()))
                element_start = match.end()
    return spans


def _fail(index: int, message: str) -> InvalidEventList:
    return InvalidEventList(f"items[{index}]: {message}")


def validate_event(index: int, item: Any) -> dict[str, Any]:
    """What an event needs to be recorded: an object with level, auditID, stage and verb."""
    if not isinstance(item, dict):
        raise _fail(index, "must be a JSON object")
    level = item.get("level")
    if level not in LEVELS:
        raise _fail(index, f"level must be one of {', '.join(sorted(LEVELS))}")
    audit_id = item.get("auditID")
    if not isinstance(audit_id, str) or not audit_id:
        raise _fail(index, "auditID must be a non-empty string")
    if item.get("stage") not in STAGES:
        raise _fail(index, f"stage must be one of {', '.join(STAGES)}")
    verb = item.get("verb")
    if not isinstance(verb, str) or not verb:
        raise _fail(index, "verb must be a non-empty string")
    for key in ("requestReceivedTimestamp", "cluster"):
        if key in item and not isinstance(item[key], str):
            raise _fail(index, f"{key} must be a string")
    for key in ("objectRef", "user"):
        if key in item and not isinstance(item[key], dict):
            raise _fail(index, f"{key} must be a JSON object")
    return item


def parse_event_list(document: Any, compacted: bytes) -> EventList:
    """Validate a parsed body and find its items' spans; InvalidEventList says why not."""
    if not isinstance(document, dict):
        raise InvalidEventList("body must be a JSON object")
    if document.get("kind") != "EventList":
        raise InvalidEventList("kind must be EventList")
    if document.get("apiVersion") != API_VERSION:
        raise InvalidEventList(f"apiVersion must be {API_VERSION}")
    items = document.get("items")
    if not isinstance(items, list):
        raise InvalidEventList("items must be a JSON array")
    events = [validate_event(index, item) for index, item in enumerate(items)]
    spans = item_spans(compacted)
    if spans is None or len(spans) != len(events):  # pragma: no cover - a scanner bug
        raise InvalidEventList("items could not be located in the body")
    return EventList(events, spans)

"""AdmissionReview validation, the byte-preserving audit record, and the response.

This module is the single owner of the audit line's bytes. It is a pure function
of (body bytes, receive time): no Flask, no I/O. The record is the request body
exactly as received, minus insignificant whitespace, with
``"requestReceivedTimestamp"`` as the last top-level member, as the Go original
(``json.Compact`` after ``sjson.Set``) writes it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

TIMESTAMP_KEY = "requestReceivedTimestamp"
# --cluster-name: a top-level member just before the timestamp.
CLUSTER_KEY = "cluster"
DEFAULT_API_VERSION = "admission.k8s.io/v1"

# A JSON string token: a quote, then any run of non-quote/non-backslash bytes or
# backslash escapes, then a quote. Unrolled so the regex engine does not backtrack.
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
# Splitting on a captured string token alternates outside-string and string parts.
_SPLIT_STRINGS = re.compile(rb"(" + _STRING + rb")", re.DOTALL)
_TOP_LEVEL_TOKEN = re.compile(_STRING + rb"|[{}\[\],:]|[^\"{}\[\],:]+", re.DOTALL)
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
# RFC 8259's insignificant whitespace. Valid JSON holds these inside strings
# only as escapes, except the space.
_WHITESPACE = b" \t\n\r"


class InvalidReview(ValueError):
    """The body is not an AdmissionReview we can record; the message says why."""


@dataclass(frozen=True, slots=True)
class Review:
    """What the webhook needs from a valid AdmissionReview body."""

    uid: str
    api_version: str
    has_timestamp_key: bool
    # The parsed body, for the record pipeline (policy and redaction).
    document: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


class StdlibDocument(dict[str, Any]):
    """A document that orjson refused and the stdlib read: its integers are
    floats, and it may hold infinities or lone surrogates, so whoever
    re-encodes it must go back to the body (see ``record_pipeline``)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> Any:
    """Parse strictly per RFC 8259.

    orjson is fast and strict, but refuses two things the RFC grammar allows:
    numbers that overflow a double (``1e999``) and lone surrogate escapes
    (``"\\ud800"``). Only when orjson fails do we ask the standard library,
    which accepts those but must be told to refuse NaN and Infinity. Deep
    nesting is refused by both (orjson at depth 1024, the stdlib by recursion).
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as fast_error:
        if "depth" in str(fast_error):
            raise InvalidReview("JSON nesting is too deep") from None
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidReview("body is not valid UTF-8") from None
        try:
            # parse_int=float: only strings are read from the document, and the
            # stdlib's int() refuses integers longer than 4300 digits, which the
            # RFC grammar allows (orjson calls those infinity).
            document = json.loads(text, parse_constant=_reject_constant, parse_int=float)
            return StdlibDocument(document) if isinstance(document, dict) else document
        except RecursionError:
            raise InvalidReview("JSON nesting is too deep") from None
        except ValueError:
            raise InvalidReview(f"body is not valid JSON: {fast_error}") from None


def parse_json(body: bytes) -> Any:
    """A JSON body parsed strictly (RFC 8259); InvalidReview says why not."""
    return _parse_json(body)


def parse_review(body: bytes) -> Review:
    """Validate a webhook body; raise InvalidReview with a short reason."""
    if not body:
        raise InvalidReview("body is empty")
    document = _parse_json(body)
    if not isinstance(document, dict):
        raise InvalidReview("body must be a JSON object")
    request = document.get("request")
    if not isinstance(request, dict):
        raise InvalidReview("request must be a JSON object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise InvalidReview("request.uid must be a non-empty string")
    api_version = document.get("apiVersion")
    if not isinstance(api_version, str) or not api_version:
        api_version = DEFAULT_API_VERSION
    return Review(
        uid=uid,
        api_version=api_version,
        has_timestamp_key=TIMESTAMP_KEY in document,
        document=document,
    )


def _has_whitespace_outside_strings(body: bytes) -> bool:
    """Whether valid JSON *body* has any whitespace between its tokens.

    With the escapes taken out, every remaining quote opens or closes a string,
    so the parts between quotes alternate outside/inside. All of it runs in C:
    the API server sends compact JSON, and this check is all it then costs.
    """
    if b"\\" in body:
        body = _ESCAPE.sub(b"", body)
    outside = b"".join(body.split(b'"')[::2])
    return len(outside.translate(None, _WHITESPACE)) != len(outside)


def compact(body: bytes) -> bytes:
    """Remove insignificant whitespace from *valid* JSON without re-encoding it."""
    # The API server's encoder ends its JSON with a newline.
    body = body.strip(_WHITESPACE)
    if not _has_whitespace_outside_strings(body):
        return body
    parts = _SPLIT_STRINGS.split(body)
    parts[::2] = [part.translate(None, _WHITESPACE) for part in parts[::2]]
    return b"".join(parts)


_last_second: tuple[int, str] = (-1, "")


def format_timestamp(epoch_ns: int) -> str:
    """RFC 3339 in UTC with up to nine fractional digits, trailing zeros trimmed.

    This is Go's ``time.RFC3339Nano`` layout, which the original uses.
    """
    global _last_second
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    cached_seconds, base = _last_second
    if seconds != cached_seconds:
        # strftime costs more than the rest of the record; it changes once a second.
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, base)
    if nanos:
        return f"{base}.{nanos:09d}".rstrip("0") + "Z"
    return base + "Z"


def _replace_top_level_values(compacted: bytes, key: str, value: bytes) -> bytes:
    """Replace the value of every top-level member named *key* where it stands.

    Every occurrence is replaced (JSON readers disagree on which duplicate wins),
    so a sender cannot smuggle a second timestamp past a reader.
    """
    out: list[bytes] = []
    depth = 0
    expect_key = False
    pending_key = False
    skipping = False
    for match in _TOP_LEVEL_TOKEN.finditer(compacted):
        token = match.group()
        first = token[:1]
        if skipping:
            if depth == 1 and first in (b",", b"}"):
                skipping = False
            elif first in (b"{", b"["):
                depth += 1
                continue
            elif first in (b"}", b"]"):
                depth -= 1
                continue
            else:
                continue
        if first in (b"{", b"["):
            depth += 1
            expect_key = depth == 1 and first == b"{"
        elif first in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and first == b",":
            expect_key = True
        elif depth == 1 and expect_key and first == b'"':
            pending_key = json.loads(token) == key
            expect_key = False
        elif depth == 1 and first == b":" and pending_key:
            out.append(token)
            out.append(value)
            pending_key = False
            skipping = True
            continue
        out.append(token)
    return b"".join(out)


def render_record(body: bytes, review: Review, epoch_ns: int, cluster: str | None = None) -> bytes:
    """The audit line for a validated body: compact JSON, timestamp last, newline.

    With *cluster*, a ``"cluster"`` member goes just before the timestamp; the
    caller makes sure the body has neither member already (the record
    pipeline re-encodes such bodies instead).
    """
    return render_compact(body, review.has_timestamp_key, epoch_ns, cluster)


def render_compact(
    body: bytes, has_timestamp_key: bool, epoch_ns: int, cluster: str | None = None
) -> bytes:
    """``render_record`` for callers that hold the parsed document rather than a Review."""
    compacted = compact(body)
    stamp = b'"' + format_timestamp(epoch_ns).encode("ascii") + b'"'
    if has_timestamp_key:
        return _replace_top_level_values(compacted, TIMESTAMP_KEY, stamp) + b"\n"
    separator = b"," if len(compacted) > 2 else b""
    middle = b""
    if cluster:
        middle = b'"' + CLUSTER_KEY.encode() + b'":' + orjson.dumps(cluster) + b","
    return (
        compacted[:-1] + separator + middle + b'"' + TIMESTAMP_KEY.encode() + b'":' + stamp + b"}\n"
    )


def build_response(review: Review) -> bytes:
    """The AdmissionReview answer: always allowed, uid and apiVersion echoed."""
    answer = {
        "apiVersion": review.api_version,
        "kind": "AdmissionReview",
        "response": {"uid": review.uid, "allowed": True},
    }
    try:
        return orjson.dumps(answer)
    except TypeError:
        # A lone surrogate (valid JSON escape, not valid UTF-8) in the uid or
        # apiVersion: the stdlib escapes it back to \uXXXX.
        return json.dumps(answer, separators=(",", ":")).encode("ascii")

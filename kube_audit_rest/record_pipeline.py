"""The record hook: dry-run switch, audit policy and redaction, between the review and the sink.

``RecordPipeline.process`` returns the audit line for a valid review, or None
when the record is dropped. A record that neither the policy nor redaction
changes is exactly ``review.render_record``'s bytes; the common case costs a
dictionary lookup or two (and the policy's rule matching when one is set).

A changed record is re-encoded from the parsed document as compact JSON, with
``requestReceivedTimestamp`` moved to the end. Secret records (and records of
a resource with custom redaction rules) are always re-encoded, so that a body
with duplicate keys cannot carry a value past the redactor under a key that a
later duplicate hides. Re-encoding writes what the strict reader understood:
duplicate keys collapse to the last one, numbers are written by value (for
example ``1.50E+3`` as ``1500.0``). Bodies whose values orjson cannot hold
exactly (integers beyond 64 bits, which it rounds to a double; numbers beyond
a double's range and lone ``\\uD800``-style escapes, which it refuses) take a
slower exact path that keeps number spellings and escapes lone surrogates.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from kube_audit_rest import audit_event, privacy_config
from kube_audit_rest.config import Settings
from kube_audit_rest.metrics import CounterBatch, Metrics
from kube_audit_rest.policy import Level, attributes
from kube_audit_rest.privacy_config import ConfigStore, PrivacyConfig, Sources
from kube_audit_rest.redaction import Encoder, Path, Redactor
from kube_audit_rest.review import CLUSTER_KEY, TIMESTAMP_KEY, format_timestamp, render_compact

# An integer beyond 64 bits, which orjson reads as a double.
_LONG_INTEGER = re.compile(rb"[0-9]{20}")


class _Config(Protocol):
    @property
    def current(self) -> PrivacyConfig: ...

    def request_reload(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FixedConfig:
    """A configuration that never changes (tests, tools)."""

    current: PrivacyConfig

    def request_reload(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PipelineEvents:
    """Callbacks for what the metrics count; no-ops by default."""

    received: Callable[[int], None] = lambda _size: None
    dropped: Callable[[str, str], None] = lambda _reason, _rule: None
    redacted: Callable[[], None] = lambda: None


@dataclass(frozen=True, slots=True)
class Output:
    """How lines are shaped beyond the default byte-preserving AdmissionReview line."""

    cluster: str | None = None  # --cluster-name: a top-level "cluster" member
    audit_event: bool = False  # --output-format=audit-event


class RecordPipeline:
    """One per worker: turns a valid review into its audit line, or drops it."""

    def __init__(
        self,
        config: _Config,
        events: PipelineEvents | None = None,
        output: Output | None = None,
    ) -> None:
        self._config = config
        self._events = events or PipelineEvents()
        # None for the default line: the hot path checks this one attribute.
        self._output = output if output and (output.cluster or output.audit_event) else None

    @property
    def config(self) -> PrivacyConfig:
        """The privacy configuration in force (for the native audit webhook)."""
        return self._config.current

    def reload_soon(self) -> None:
        """Re-read the configuration files now (SIGHUP); safe in a signal handler."""
        self._config.request_reload()

    def process(self, body: bytes, document: dict[str, Any], received_ns: int) -> bytes | None:
        """The audit line (newline-terminated), or None when the record is dropped.

        *document* is the parsed body; it may be modified.
        """
        config = self._config.current
        events = self._events
        events.received(len(body))
        request = document["request"]
        if config.drop_dry_run and request.get("dryRun") is True:
            events.dropped("dry_run", "")
            return None
        level = Level.REQUEST_RESPONSE
        omit_managed_fields = False
        if config.policy is not None:
            decision = config.policy.decide(attributes(request))
            if decision.level is Level.NONE:
                events.dropped("policy", decision.rule)
                return None
            level, omit_managed_fields = decision.level, decision.omit_managed_fields
        paths = config.redactor.paths_for(request)
        output = self._output
        if paths is None and not _trims(request, level, omit_managed_fields):
            if output is None:
                return render_compact(body, TIMESTAMP_KEY in document, received_ns)
            if (
                not output.audit_event
                and TIMESTAMP_KEY not in document
                and CLUSTER_KEY not in document
            ):
                return render_compact(body, False, received_ns, output.cluster)

        redactor = config.redactor
        if type(document) is dict:  # read by orjson
            line, redacted = _rewrite(
                document, level, omit_managed_fields, redactor, paths, received_ns, output
            )
            # orjson writes a double of 1e16 or more with "e+"; one it read from
            # a 20-digit integer lost digits: redo that record the exact way.
            if b"e+" in line and _LONG_INTEGER.search(body):
                exact = _exact_loads(body)
                if exact is not None:
                    line, redacted = _rewrite(
                        exact, level, omit_managed_fields, redactor, paths, received_ns, output
                    )
        else:  # orjson refused the body and the stdlib read it (review.StdlibDocument)
            exact = _exact_loads(body)
            line, redacted = _rewrite(
                exact if exact is not None else document,
                level,
                omit_managed_fields,
                redactor,
                paths,
                received_ns,
                output,
            )
        if redacted:
            events.redacted()
        return line


def _rewrite(
    document: dict[str, Any],
    level: Level,
    omit_managed_fields: bool,
    redactor: Redactor,
    paths: tuple[Path, ...] | None,
    received_ns: int,
    output: Output | None = None,
) -> tuple[bytes, int]:
    """The re-encoded line of a changed record, and how many values were redacted."""
    encode: Encoder = orjson.dumps if type(document) is dict else exact_dumps
    request = document["request"]
    _trim(request, level, omit_managed_fields)
    redacted = 0
    if paths is not None:
        for key in ("object", "oldObject"):
            redacted += redactor.redact_object(request.get(key), paths, encode)
    if output is not None and output.audit_event:
        document = audit_event.from_admission(document, level, received_ns, time.time_ns())
        if output.cluster:
            document[CLUSTER_KEY] = output.cluster
    else:
        document.pop(TIMESTAMP_KEY, None)
        if output is not None and output.cluster:
            document.pop(CLUSTER_KEY, None)
            document[CLUSTER_KEY] = output.cluster
        document[TIMESTAMP_KEY] = format_timestamp(received_ns)
    try:
        return encode(document) + b"\n", redacted
    except orjson.JSONEncodeError:  # orjson stops at 255 levels of nesting
        return exact_dumps(document) + b"\n", redacted


def default_pipeline() -> RecordPipeline:
    """Secrets redacted, nothing else changed: what the command does without privacy flags."""
    return RecordPipeline(FixedConfig(Sources().load()))


def worker_pipeline(
    settings: Settings, metrics: Metrics, counters: CounterBatch | None = None
) -> RecordPipeline:
    """A worker's pipeline: its configuration watched for changes, its events counted."""
    batch = counters or CounterBatch()
    store = ConfigStore(
        Sources.from_settings(settings),
        metrics.config_reload_failures.inc,
        fallback=privacy_config.startup,
    )
    if store.watched:
        store.watch(settings.config_reload_interval)
    events = PipelineEvents(
        received=lambda size: batch.inc(metrics.received_bytes, size),
        dropped=lambda reason, rule: metrics.dropped_records.labels(reason, rule).inc(),
        redacted=metrics.redacted_records.inc,
    )
    output = Output(settings.cluster_name, settings.output_format == "audit-event")
    return RecordPipeline(store, events, output)


def _has_managed_fields(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("metadata"), dict)
        and "managedFields" in obj["metadata"]
    )


def _trims(request: dict[str, Any], level: Level, omit_managed_fields: bool) -> bool:
    """Whether the level or omitManagedFields removes anything from this request."""
    if level is Level.METADATA:
        return "object" in request or "oldObject" in request
    if level is Level.REQUEST and "oldObject" in request:
        return True
    return omit_managed_fields and (
        _has_managed_fields(request.get("object")) or _has_managed_fields(request.get("oldObject"))
    )


def _trim(request: dict[str, Any], level: Level, omit_managed_fields: bool) -> None:
    if level is Level.METADATA:
        request.pop("object", None)
        request.pop("oldObject", None)
        return
    if level is Level.REQUEST:
        request.pop("oldObject", None)
    if omit_managed_fields:
        for key in ("object", "oldObject"):
            if _has_managed_fields(request.get(key)):
                del request[key]["metadata"]["managedFields"]


# --------------------------------------------------------------------------- exact JSON


class RawNumber(str):
    """A JSON number kept as it was spelled."""

    __slots__ = ()


class ExactDocument(dict[str, Any]):
    """A document from ``_exact_loads``: encode it with ``exact_dumps``."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _exact_loads(body: bytes) -> Any:
    """The body with numbers kept as spelled; None if the stdlib reader cannot nest that deep."""
    try:
        document = json.loads(
            body.decode("utf-8"),
            parse_int=RawNumber,
            parse_float=RawNumber,
            parse_constant=_reject_constant,
        )
    except RecursionError:
        return None
    return ExactDocument(document) if isinstance(document, dict) else None


def exact_loads(body: bytes) -> Any:
    """The JSON object in *body* with numbers kept as spelled (None: too deep, or not an object)."""
    return _exact_loads(body)


def _string(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: write it as a \\u escape
        return json.dumps(text)
    return json.dumps(text, ensure_ascii=False)


def _scalar(value: Any) -> str:
    if isinstance(value, RawNumber):
        return str.__str__(value)
    if isinstance(value, str):
        return _string(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float.__repr__(value)
        if not math.isnan(value):  # only a huge literal reads as infinity: write one back
            return "1e999" if value > 0 else "-1e999"
    raise ValueError(f"cannot encode {type(value).__name__} {value!r} as JSON")


class _Token(str):
    __slots__ = ()


def _object_tokens(mapping: dict[str, Any]) -> Iterator[Any]:
    yield _Token("{")
    for index, (key, value) in enumerate(mapping.items()):
        yield _Token(("," if index else "") + _string(key) + ":")
        yield value
    yield _Token("}")


def _array_tokens(items: list[Any]) -> Iterator[Any]:
    yield _Token("[")
    for index, value in enumerate(items):
        if index:
            yield _Token(",")
        yield value
    yield _Token("]")


def exact_dumps(value: Any) -> bytes:
    """Compact JSON of a document from ``_exact_loads`` (or orjson), at any depth."""
    parts: list[str] = []
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, _Token):
            parts.append(item)
        elif isinstance(item, dict):
            stack.append(_object_tokens(item))
        elif isinstance(item, list):
            stack.append(_array_tokens(item))
        else:
            parts.append(_scalar(item))
    return "".join(parts).encode("utf-8")

"""Issue 8, point 3: hostile bodies.

Property tests (hypothesis) of validation plus the record pipeline the server
really uses (``parse_review`` then ``default_pipeline().process``, which adds
redaction and the policy to what ``tests/test_review.py`` already checks of
``render_record``): any JSON text is recorded as the input minus insignificant
whitespace, byte-exact, with the timestamp last; invalid UTF-8 anywhere is an
``InvalidReview`` (the server's 400); nothing else ever raises.

Then a bounded fuzz run against the live server: 100,000 bodies mutated from
generated AdmissionReviews (truncations, bit flips, inserted and deleted bytes,
invalid UTF-8, huge strings, nesting just under and over the limit, many keys,
duplicate keys), sent over eight pipelined keep-alive TLS connections. A
second, smaller run mutates the shared corpus's captures and skips when that
is absent. Last, 32 bodies of 16 MiB at once, with the memory of master and
workers measured throughout.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kube_audit_rest.record_pipeline import default_pipeline
from kube_audit_rest.review import TIMESTAMP_KEY, InvalidReview, format_timestamp, parse_review
from tests.conftest import StartServer
from tests.reliability_support import (
    AsyncClient,
    check_log,
    log_files,
    read_response,
    request_bytes,
    rss_bytes,
    server_pids,
    wait_for_workers,
    worker_pids,
)
from tests.support import SHARED_CORPUS, Server, client_context

MIB = 1024 * 1024
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PIPELINE = default_pipeline()
NS = 1_700_000_000_123_456_789
STAMP_TAIL = f',"{TIMESTAMP_KEY}":"{format_timestamp(NS)}"}}\n'.encode()
MAX_DEPTH = 1024  # orjson's limit; one more level is "JSON nesting is too deep"


def accept(body: bytes) -> bytes | None:
    """What the server does with a body: its record, or None for a 400. Nothing else."""
    try:
        review = parse_review(body)
    except InvalidReview:
        return None
    record = PIPELINE.process(body, review.document, NS)
    assert record is not None  # no policy, no --drop-dry-run: every valid review is kept
    return record


# --------------------------------------------------------------------------- properties

_KEYS = st.text(max_size=6).filter(lambda key: key != TIMESTAMP_KEY)
_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=4),
    max_leaves=20,
)
_KINDS = st.sampled_from(["ConfigMap", "Pod", "Secret", "Deployment"])
_SPACE = st.text(alphabet=" \t\r\n", max_size=2)


@st.composite
def _review_documents(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(_KINDS)
    group = "apps" if kind == "Deployment" else ""
    obj: dict[str, Any] = {"kind": kind, "metadata": {"name": draw(st.text(max_size=5))}}
    obj.update(draw(st.dictionaries(_KEYS, _VALUES, max_size=3)))
    if kind == "Secret":
        obj["data"] = {"k": draw(st.text(max_size=8))}
    request = {
        "uid": draw(st.text(min_size=1, max_size=10)),
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
        "operation": draw(st.sampled_from(["CREATE", "UPDATE", "DELETE"])),
        "object": obj,
    }
    document: dict[str, Any] = {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}
    document["request"] = request
    document.update(draw(st.dictionaries(_KEYS.filter(lambda k: k != "request"), _VALUES)))
    return document


def _pretty(document: Any, ensure_ascii: bool, space: str) -> bytes:
    return json.dumps(
        document, ensure_ascii=ensure_ascii, separators=(space + "," + space, space + ":" + space)
    ).encode("utf-8")


@given(document=_review_documents(), ensure_ascii=st.booleans(), space=_SPACE, indent=st.booleans())
@SETTINGS
def test_any_json_review_is_recorded_as_the_input_minus_whitespace(
    document: dict[str, Any], ensure_ascii: bool, space: str, indent: bool
) -> None:
    """Non-Secret reviews byte-exact; Secrets with only their data values redacted."""
    if indent:
        body = json.dumps(document, ensure_ascii=ensure_ascii, indent=2).encode("utf-8")
    else:
        body = _pretty(document, ensure_ascii, space)
    record = accept(body)
    assert record is not None
    assert record.endswith(STAMP_TAIL) and record.count(b"\n") == 1
    assert json.loads(record)[TIMESTAMP_KEY] == format_timestamp(NS)
    canonical = _pretty(document, ensure_ascii, "")
    if document["request"]["kind"]["kind"] != "Secret":
        assert record == canonical[:-1] + STAMP_TAIL
    else:
        decoded = json.loads(record)  # re-encoded with the data value redacted
        data = decoded["request"]["object"]["data"]
        assert set(data) == {"k"} and isinstance(data["k"], str)
        decoded["request"]["object"]["data"] = document["request"]["object"]["data"]
        del decoded[TIMESTAMP_KEY]
        assert decoded == document


_BAD_UTF8 = st.sampled_from(
    [b"\xff", b"\xfe", b"\x80", b"\xc0\x80", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xf8\x88"]
)


@given(document=_review_documents(), bad=_BAD_UTF8, where=st.floats(0, 1))
@SETTINGS
def test_invalid_utf8_anywhere_is_rejected(
    document: dict[str, Any], bad: bytes, where: float
) -> None:
    body = _pretty(document, False, "")
    at = int(where * len(body))
    mutated = body[:at] + bad + body[at:]
    try:
        mutated.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        assume(False)  # the insertion completed a character by chance
    assert accept(mutated) is None


def _mutations(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if not data:
            break
        at = rng.randrange(len(data))
        if choice < 0.3:
            data[at] ^= 1 << rng.randrange(8)
        elif choice < 0.5:
            del data[at]
        elif choice < 0.7:
            data.insert(at, rng.randrange(256))
        elif choice < 0.85:
            del data[at:]
        else:
            data[at:at] = rng.choice([b"{", b"[", b'"', b"\\", b",", b":", b"\\u", b"\xed\xa0"])
    return bytes(data)


@given(document=_review_documents(), seed=st.integers(0, 2**32))
@SETTINGS
def test_mutated_reviews_are_recorded_whole_or_rejected_and_nothing_else_raises(
    document: dict[str, Any], seed: int
) -> None:
    mutated = _mutations(random.Random(seed), _pretty(document, False, ""))  # noqa: S311
    record = accept(mutated)
    if record is not None:
        decoded = json.loads(record)
        assert isinstance(decoded["request"]["uid"], str)
        assert record.endswith(STAMP_TAIL) and record.count(b"\n") == 1


@given(st.binary(max_size=300))
@SETTINGS
def test_arbitrary_bytes_never_raise_anything_but_a_rejection(data: bytes) -> None:
    record = accept(data)
    assert record is None or record.endswith(b"\n")


# --------------------------------------------------------------------------- the live fuzz


def _seed_documents(rng: random.Random) -> list[dict[str, Any]]:
    """Our own AdmissionReviews, shaped like real ones (ConfigMap, Pod, Secret, odd numbers)."""
    seeds: list[dict[str, Any]] = []
    for n in range(24):
        kind = ["ConfigMap", "Pod", "Secret", "Deployment"][n % 4]
        group = "apps" if kind == "Deployment" else ""
        obj: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {
                "name": f"seed-{n}",
                "namespace": "default",
                "labels": {"app": "fuzz", "n": str(n)},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}],
            },
        }
        if kind in ("ConfigMap", "Secret"):
            obj["data"] = {f"key-{k}": f"dmFsdWUt{k}{'x' * rng.randrange(50)}" for k in range(6)}
        else:
            obj["spec"] = {
                "replicas": n,
                "containers": [{"name": "app", "image": "registry.example/app:1.2.3"}],
                "ratio": 0.25 * n,
                "big": 10**20 + n,
            }
        seeds.append(
            {
                "kind": "AdmissionReview",
                "apiVersion": "admission.k8s.io/v1" if n % 5 else "admission.k8s.io/v1beta1",
                "request": {
                    "uid": "@@UID@@",
                    "kind": {"group": group, "version": "v1", "kind": kind},
                    "resource": {"group": group, "version": "v1", "resource": kind.lower() + "s"},
                    "namespace": "default",
                    "operation": ["CREATE", "UPDATE", "DELETE"][n % 3],
                    "userInfo": {"username": "fuzzer", "groups": ["system:authenticated"]},
                    "object": obj,
                    "oldObject": None,
                    "dryRun": n % 7 == 0,
                },
            }
        )
    return seeds


def _nested(uid: str, depth: int) -> bytes:
    """A review whose deepest value is *depth* levels down, counting the top object."""
    inner = depth - 2  # the top object and "x"'s array itself
    return (
        b'{"request":{"uid":"' + uid.encode() + b'"},"x":' + b"[" * (inner + 1) + b"]" * (inner + 1)
    ) + b"}"


class BodyFactory:
    """Body number n, deterministic: mostly mutated templates, some valid, some extreme."""

    def __init__(self, templates: list[bytes], prefix: str) -> None:
        self.templates = templates
        self.prefix = prefix

    def __call__(self, n: int) -> bytes:
        rng = random.Random(n)  # noqa: S311 - reproducible test data
        uid = f"{self.prefix}-{n}"
        template = self.templates[n % len(self.templates)]
        body = template.replace(b"@@UID@@", uid.encode())
        roll = rng.random()
        if roll < 0.15:
            return body  # valid, unchanged
        if roll < 0.16:
            return _nested(uid, MAX_DEPTH if n % 2 else MAX_DEPTH + 1)
        if roll < 0.163:
            huge = b"h" * rng.choice([64 * 1024, MIB, 3 * MIB])
            return body.replace(b'"namespace":"default"', b'"namespace":"' + huge + b'"', 1)
        if roll < 0.166:
            keys = b",".join(b'"k%d":%d' % (k, k) for k in range(rng.choice([1000, 20000])))
            return body[:-1] + b"," + keys + b"}"
        if roll < 0.2:
            # Duplicate keys: a second uid (the last one wins, in the record and the answer).
            return body.replace(b'"request":{', b'"request":{"uid":"dup-' + uid.encode() + b'",', 1)
        if roll < 0.22:
            return body.replace(b'"namespace":"default"', b'"namespace":NaN', 1)
        if roll < 0.25:
            return body.replace(b'"fuzzer"', b'"fuzz\xffer"', 1)
        if roll < 0.4:
            return body[: rng.randrange(len(body))]
        return _mutations(rng, body)


async def _fuzz_connection(
    server: Server,
    make: Callable[[int], bytes],
    indexes: Iterator[int],
    lock: threading.Lock,
    acked: Counter[str],
    statuses: Counter[int],
    problems: list[str],
    depth: int = 16,
) -> None:
    client = AsyncClient(server)
    await client.connect()
    reader, writer = client.reader, client.writer
    assert reader is not None and writer is not None
    try:
        while True:
            with lock:
                batch = [n for _, n in zip(range(depth), indexes, strict=False)]
            if not batch:
                break
            writer.write(b"".join(request_bytes(make(n), server.port) for n in batch))
            await writer.drain()
            for n in batch:
                status, headers, answer = await asyncio.wait_for(read_response(reader), 60)
                statuses[status] += 1
                if status == 200:
                    acked[json.loads(answer)["response"]["uid"]] += 1
                elif status != 400:
                    problems.append(f"body {n}: {status} {answer[:200]!r}")
                if headers.get("connection", "").lower() == "close":
                    problems.append(f"body {n}: the server closed the connection")
                    return
    finally:
        await client.aclose()


def _fuzz(server: Server, make: Callable[[int], bytes], count: int, connections: int = 8) -> None:
    indexes = iter(range(count))
    lock = threading.Lock()
    acked: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    pids = [server.process.pid, *wait_for_workers(server, 2)]
    started = time.monotonic()

    async def main() -> None:
        await asyncio.gather(
            *(
                _fuzz_connection(server, make, indexes, lock, acked, statuses, problems)
                for _ in range(connections)
            )
        )

    asyncio.run(main())
    elapsed = time.monotonic() - started
    assert not problems, problems[:10]
    assert sum(statuses.values()) == count
    assert statuses[200] > count // 10 and statuses[400] > count // 10, statuses
    # No crash: the master and the same workers are still there.
    assert server.process.poll() is None
    assert server_pids(server) == pids, "a worker died during the fuzz run"
    assert server.stop() == 0
    check = check_log(log_files(server))
    assert not check.bad_lines, check.bad_lines[:5]
    # Every accepted body recorded once per acceptance; no record for a rejected one.
    assert check.lines == statuses[200]
    assert check.uids == acked
    print(f"fuzz: {count} bodies in {elapsed:.1f} s, answers {dict(statuses)}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_fuzz_100k_mutated_reviews_against_the_live_server(start: StartServer) -> None:
    rng = random.Random(3)  # noqa: S311 - reproducible test data
    templates = [
        json.dumps(document, separators=(",", ":")).encode() for document in _seed_documents(rng)
    ]
    server = start("--workers=2", "--logger-max-size=64", "--logger-max-backups=0")
    _fuzz(server, BodyFactory(templates, "fuzz"), 100_000)


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.skipif(
    not (SHARED_CORPUS / "kube-audit-rest.log").exists(),
    reason=f"the shared corpus is not at {SHARED_CORPUS}",
)
def test_fuzz_mutated_corpus_captures_against_the_live_server(start: StartServer) -> None:
    templates = []
    for line in (SHARED_CORPUS / "kube-audit-rest.log").read_bytes().splitlines():
        uid = json.loads(line)["request"]["uid"]
        templates.append(line.replace(json.dumps(uid).encode(), b'"@@UID@@"'))
    server = start("--workers=2", "--logger-max-size=64", "--logger-max-backups=0")
    _fuzz(server, BodyFactory(templates, "corpus"), 20_000)


# --------------------------------------------------------------------------- large bodies

LARGE = 16 * MIB - 4096  # just under the default --max-request-bytes (16 MiB)
LARGE_COUNT = 32


def _large_body(uid: str) -> bytes:
    head = b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"'
    head += uid.encode() + b'","operation":"CREATE","object":{"kind":"ConfigMap","data":{"big":"'
    tail = b'"}}}}'
    return head + b"b" * (LARGE - len(head) - len(tail)) + tail


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_32_concurrent_16_mib_bodies_stay_within_the_memory_bound(start: StartServer) -> None:
    """Bound (README, Reliability): peak RSS of master + workers <= baseline
    + the bodies in flight + 4 bodies per worker.

    Each worker holds the bodies of its open requests while they arrive, then
    handles one request at a time (join, parse, compact, write), so the peak is
    the in-flight bodies plus a few copies of one body per worker.
    """
    server = start("--workers=2", "--logger-max-backups=0")
    workers = wait_for_workers(server, 2)
    baseline = sum(rss_bytes(pid) for pid in server_pids(server))
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], sum(rss_bytes(pid) for pid in [server.process.pid, *workers]))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    statuses: list[int] = []

    async def one(n: int) -> None:
        client = AsyncClient(server, client_context(server.ca_path))
        status, _ = await client.post(_large_body(f"large-{n}"), timeout=240)
        statuses.append(status)
        await client.aclose()

    async def main() -> None:
        await asyncio.gather(*(one(n) for n in range(LARGE_COUNT)))

    try:
        asyncio.run(main())
    finally:
        stop.set()
        sampler.join()
    assert statuses == [200] * LARGE_COUNT
    assert worker_pids(server) == workers
    bound = baseline + LARGE_COUNT * LARGE + 4 * len(workers) * LARGE
    print(
        f"32 x 16 MiB: baseline {baseline / MIB:.0f} MiB, peak {peak[0] / MIB:.0f} MiB, "
        f"bound {bound / MIB:.0f} MiB"
    )
    assert peak[0] <= bound
    assert server.stop() == 0
    check = check_log(log_files(server))
    check.assert_exactly_once([f"large-{n}" for n in range(LARGE_COUNT)])


def test_bodies_module_constants_are_sane() -> None:
    assert len(_nested("u", MAX_DEPTH)) < 5000
    with pytest.raises(InvalidReview, match="too deep"):
        parse_review(_nested("u", MAX_DEPTH + 1))
    assert parse_review(_nested("u", MAX_DEPTH)).uid == "u"
    assert Path(__file__).name.startswith("test_reliability_")

"""Speed of ``kube-audit-rest ui``: timeline latency over a million records, indexing rate, memory.

    .venv/bin/python bench/ui_index.py                   # 1,000,000 records, 256 MB log
    .venv/bin/python bench/ui_index.py --records 200000 --index-mb 64

1. Query speed: a SQLite index of ``--records`` synthetic records (200 users,
   100 namespaces, 30 resources, 5000 names over 30 days) is bulk-loaded
   straight into the index tables, then a real ``kube-audit-rest ui --no-index``
   serves it; the bench requests timeline pages over HTTP (first pages and
   deeper pages through the "older" cursor) for each common filter, and prints
   p50 / p95 / max per filter. The goal: p95 under 300 ms.
2. Indexing speed: ``bench/query_scan.py``'s realistic log (3.5 KB records
   with managedFields) is indexed from scratch by ``ui --index-only``; records
   per second from start to the last record committed. The goal: 5,000/s.
3. Memory: the peak RSS (VmHWM) of the UI's gunicorn master and worker, and of
   the indexer. The goal: under 200 MB each.

Everything lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe
from query_scan import generate

from kube_audit_rest.query.records import parse_line
from kube_audit_rest.ui import db

CLI = str(Path(sys.executable).with_name("kube-audit-rest"))
START_NS = 1_795_392_000 * 10**9  # 2026-11-23T00:00:00Z
SPAN_NS = 30 * 86400 * 10**9
USERS = [f"user-{i}@example.com" for i in range(190)] + [
    f"system:serviceaccount:kube-system:controller-{i}" for i in range(10)
]
NAMESPACES = [f"team-{i}" for i in range(100)]
RESOURCES = [
    ("apps", "deployments", "Deployment"),
    ("", "configmaps", "ConfigMap"),
    ("", "pods", "Pod"),
    ("", "secrets", "Secret"),
    ("", "services", "Service"),
    ("batch", "jobs", "Job"),
    ("coordination.k8s.io", "leases", "Lease"),
    ("networking.k8s.io", "ingresses", "Ingress"),
] + [(f"example{i}.io", f"widgets{i}", f"Widget{i}") for i in range(22)]
NAMES = [f"app-{i}" for i in range(5000)]
OPERATIONS = ["CREATE", "UPDATE", "UPDATE", "UPDATE", "DELETE"]


def _raw(i: int, rng: random.Random, ts: int) -> tuple[str, dict[str, Any]]:
    user = (
        USERS[min(int(rng.paretovariate(1.2)) - 1, len(USERS) - 1)] if i % 3 else rng.choice(USERS)
    )
    namespace = rng.choice(NAMESPACES)
    group, resource, kind = rng.choice(RESOURCES)
    name = rng.choice(NAMES)
    operation = rng.choice(OPERATIONS)
    seconds, nanos = divmod(ts, 10**9)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
    obj = {
        "apiVersion": f"{group}/v1" if group else "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"replicas": rng.randint(1, 5)},
    }
    old = dict(obj, spec={"replicas": rng.randint(1, 5)})
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"{i:08x}-0000-4000-8000-000000000000",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "object": None if operation == "DELETE" else obj,
            "oldObject": None if operation == "CREATE" else old,
            "dryRun": False,
        },
        "requestReceivedTimestamp": stamp,
    }
    return orjson.dumps(document).decode(), document


def bulk_load(index_dir: Path, count: int, seed: int = 11) -> float:
    """Write *count* records straight into a fresh SQLite index; seconds taken."""
    started = time.monotonic()
    engine = db.open_engine(db.url_for(str(index_dir), None))
    db.create_schema(engine)
    engine.dispose()
    path = index_dir / db.SQLITE_FILE
    conn = sqlite3.connect(path)
    indexes = [
        row[0]
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name='kar_records' "
            "AND sql IS NOT NULL"
        )
    ]
    for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='kar_records' "
        "AND sql IS NOT NULL"
    ).fetchall():
        conn.execute(f"DROP INDEX {name}")
    rng = random.Random(seed)
    columns = list(db.records.c.keys())[1:]
    insert = (
        f"INSERT INTO kar_records ({', '.join(columns)}) "  # noqa: S608 - our own column names
        f"VALUES ({', '.join('?' for _ in columns)})"
    )
    times = sorted(START_NS + rng.randrange(SPAN_NS) for _ in range(count))
    batch: list[tuple[Any, ...]] = []
    for i, ts in enumerate(times):
        raw, _document = _raw(i, rng, ts)
        values = db.row_values(parse_line(raw.encode()), raw)
        batch.append(tuple(values[c] for c in columns))
        if len(batch) == 50_000:
            conn.executemany(insert, batch)
            conn.commit()
            batch = []
    if batch:
        conn.executemany(insert, batch)
        conn.commit()
    for sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    return time.monotonic() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _get(url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - our http:// URL
        body = response.read()
    return time.perf_counter() - started, body


def _older(body: bytes) -> str | None:
    marker = b'" id="older">'
    end = body.find(marker)
    if end < 0:
        return None
    start = body.rfind(b'href="', 0, end) + len(b'href="')
    return body[start:end].decode().replace("&amp;", "&")


def query_speed(index_dir: Path, rounds: int, seed: int = 5) -> dict[str, Any]:
    port = _free_port()
    process = subprocess.Popen(
        [CLI, "ui", "--no-index", "--index-dir", str(index_dir), "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(base + "/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        rng = random.Random(seed)

        def window() -> dict[str, str]:
            start = START_NS + rng.randrange(SPAN_NS - 3600 * 10**9)
            fmt = "%Y-%m-%dT%H:%M:%SZ"
            return {
                "since": time.strftime(fmt, time.gmtime(start // 10**9)),
                "until": time.strftime(fmt, time.gmtime(start // 10**9 + 3600)),
            }

        filters: dict[str, Any] = {
            "no filter": lambda: {},
            "user": lambda: {"user": rng.choice(USERS)},
            "namespace": lambda: {"namespace": rng.choice(NAMESPACES)},
            "resource": lambda: {"resource": rng.choice(RESOURCES)[1]},
            "name": lambda: {"name": rng.choice(NAMES)},
            "time window (1 h)": window,
            "namespace + resource": lambda: {
                "namespace": rng.choice(NAMESPACES),
                "resource": rng.choice(RESOURCES)[1],
            },
            "user + time window": lambda: {"user": rng.choice(USERS), **window()},
        }
        _get(base + "/")  # warm up
        results: dict[str, Any] = {}
        for label, make in filters.items():
            timings = []
            for _ in range(rounds):
                url: str | None = base + "/?" + urllib.parse.urlencode(make())
                for _page in range(3):  # the first page, then two older ones
                    assert url is not None
                    elapsed, body = _get(url)
                    timings.append(elapsed)
                    older = _older(body)
                    if older is None:
                        break
                    url = base + older
            timings.sort()
            results[label] = (
                len(timings),
                statistics.median(timings),
                timings[math.ceil(len(timings) * 0.95) - 1],  # nearest rank
                timings[-1],
            )
        memory = {"master": _hwm_mb(process.pid)}
        for child in _children(process.pid):
            memory[f"worker {child}"] = _hwm_mb(child)
        results["memory"] = memory
        return results
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def index_speed(folder: Path, megabytes: int) -> tuple[int, float, float]:
    log = folder / "kube-audit-rest.log"
    _size, lines = generate(log, megabytes)
    index_dir = folder / "fresh-index"
    process = subprocess.Popen(
        [CLI, "ui", "--index-only", "--logger-filename", str(log), "--index-dir", str(index_dir)],
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    path = index_dir / db.SQLITE_FILE
    peak = 0.0
    try:
        while True:
            peak = max(peak, _hwm_mb(process.pid))
            done = 0
            if path.exists():
                try:
                    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                        done = conn.execute("SELECT count(*) FROM kar_records").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
            if done >= lines:
                break
            if time.monotonic() - started > 1800:
                raise RuntimeError("indexing did not finish in 30 minutes")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        peak = max(peak, _hwm_mb(process.pid))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return lines, elapsed, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=20, help="random values per filter")
    parser.add_argument("--index-mb", type=int, default=256, help="log size for indexing speed")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="kar-ui-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(describe(folder, sys.version.split()[0]))
        index_dir = folder / "index"
        index_dir.mkdir(exist_ok=True)
        loaded = bulk_load(index_dir, args.records)
        size = sum(p.stat().st_size for p in index_dir.iterdir()) / 2**20
        print(f"index: {args.records} records bulk-loaded in {loaded:.0f} s, {size:.0f} MB SQLite")
        results = query_speed(index_dir, args.rounds)
        memory = results.pop("memory")
        print("timeline over HTTP (first page and two older pages, 50 rows each)")
        print(f"{'filter':<24} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for label, (n, p50, p95, worst) in results.items():
            print(f"{label:<24} {n:>8} {p50 * 1000:>8.1f} {p95 * 1000:>8.1f} {worst * 1000:>8.1f}")
        shutil.rmtree(index_dir)
        lines, elapsed, peak = index_speed(folder, args.index_mb)
        print(
            f"indexing: {lines} records ({args.index_mb} MB log) in {elapsed:.1f} s = "
            f"{lines / elapsed:.0f} records/s, indexer peak RSS {peak:.0f} MB"
        )
        print("UI peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in memory.items()))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Scan speed of ``kube-audit-rest query``: MB of log per second on one core.

    .venv/bin/python bench/query_scan.py            # 256 MB log
    .venv/bin/python bench/query_scan.py --mb 512

It writes a log of realistic AdmissionReview lines (a busy cluster's mix:
Lease and EndpointSlice updates, Events, Pods, ConfigMaps, Deployments,
Secrets with redaction markers, execs; 0.5 to 6 KB each, with managedFields)
into a temporary folder, then runs queries through the real CLI pinned to one
core (``taskset -c 0`` when available), output to a pipe it reads, and prints
the log size divided by the wall time of each (MB/s) and by its CPU time
(MB/CPU-s: what the query itself costs, which varies less on a shared
machine). The folder is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

START = 1_795_000_000  # 2026-11-18T...Z; records are 20 per second from here
CLI = str(Path(sys.executable).with_name("kube-audit-rest"))
NAMESPACES = [f"team-{i}" for i in range(60)] + ["kube-system", "monitoring", "ingress"]
HUMANS = [f"user{i}@example.com" for i in range(25)]
CONTROLLERS = [
    "system:serviceaccount:kube-system:deployment-controller",
    "system:serviceaccount:kube-system:replicaset-controller",
    "system:serviceaccount:kube-system:endpointslice-controller",
    "system:kube-controller-manager",
    "system:kube-scheduler",
]
NODES = [f"system:node:node-{i}" for i in range(30)]

# (weight, group, resource, kind, operation, who)
MIX = [
    (30, "coordination.k8s.io", "leases", "Lease", "UPDATE", "node"),
    (15, "discovery.k8s.io", "endpointslices", "EndpointSlice", "UPDATE", "controller"),
    (15, "", "events", "Event", "CREATE", "node"),
    (10, "", "pods", "Pod", "UPDATE", "node"),
    (6, "", "pods", "Pod", "CREATE", "controller"),
    (4, "", "pods", "Pod", "DELETE", "controller"),
    (6, "apps", "deployments", "Deployment", "UPDATE", "human"),
    (3, "apps", "replicasets", "ReplicaSet", "UPDATE", "controller"),
    (5, "", "configmaps", "ConfigMap", "UPDATE", "human"),
    (3, "", "secrets", "Secret", "UPDATE", "human"),
    (2, "", "pods", "PodExecOptions", "CONNECT", "human"),
    (1, "apps", "deployments", "Deployment", "DELETE", "human"),
]


def _user(who: str, rng: random.Random) -> str:
    if who == "node":
        return rng.choice(NODES)
    if who == "controller":
        return rng.choice(CONTROLLERS)
    if rng.random() < 0.3:
        return f"system:serviceaccount:{rng.choice(NAMESPACES)}:deployer"
    return rng.choice(HUMANS)


def _object(
    kind: str, name: str, namespace: str, rng: random.Random, version: int
) -> dict[str, Any]:
    managed = [
        {
            "manager": rng.choice(
                ["kubelet", "kube-controller-manager", "kubectl-client-side-apply", "helm"]
            ),
            "operation": "Update",
            "apiVersion": "v1",
            "time": "2026-11-23T10:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {f"f:k{i}": {} for i in range(rng.randint(2, 30))},
            },
        }
        for _ in range(rng.randint(1, 3))
    ]
    metadata = {
        "name": name,
        "namespace": namespace,
        "uid": f"{rng.getrandbits(64):016x}-{version}",
        "resourceVersion": str(100000 + version),
        "labels": {"app": name.rsplit("-", 1)[0], "team": namespace},
        "managedFields": managed,
    }
    body: dict[str, Any] = {"kind": kind, "apiVersion": "v1", "metadata": metadata}
    if kind == "Secret":
        body["data"] = {
            f"key{i}": "<redacted hmac-sha256:" + f"{rng.getrandbits(256):064x}" + ">"
            for i in range(3)
        }
    elif kind == "ConfigMap":
        body["data"] = {
            f"file{i}.conf": "x = 1\n" * rng.randint(5, 200) for i in range(rng.randint(1, 4))
        }
    elif kind == "PodExecOptions":
        return {
            "kind": kind,
            "apiVersion": "v1",
            "stdin": True,
            "tty": True,
            "container": "app",
            "command": ["sh"],
        }
    else:
        body["spec"] = {
            "replicas": rng.randint(1, 5),
            "containers": [
                {
                    "name": f"c{i}",
                    "image": f"registry.example.com/{name}:{version}",
                    "env": [{"name": "A", "value": "b" * rng.randint(5, 300)}],
                }
                for i in range(rng.randint(1, 4))
            ],
        }
        body["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    return body


def generate(path: Path, megabytes: int, seed: int = 7) -> tuple[int, int]:
    """Write about *megabytes* MB of records; returns (bytes, lines)."""
    rng = random.Random(seed)
    weights = [entry[0] for entry in MIX]
    target = megabytes * 1_000_000
    written = lines = 0
    start = START
    with path.open("wb") as out:
        while written < target:
            _w, group, res, kind, operation, who = rng.choices(MIX, weights)[0]
            namespace = rng.choice(NAMESPACES)
            name = f"{res[:-1]}-{rng.randint(0, 400)}"
            obj: dict[str, Any] | None = _object(kind, name, namespace, rng, lines)
            old = _object(kind, name, namespace, rng, lines - 1) if operation == "UPDATE" else None
            if operation == "DELETE":
                obj, old = None, obj
            request = {
                "uid": f"{rng.getrandbits(128):032x}",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": res},
                **({"subResource": "exec"} if operation == "CONNECT" else {}),
                "name": name,
                "namespace": namespace,
                "operation": operation,
                "userInfo": {"username": _user(who, rng), "groups": ["system:authenticated"]},
                "object": obj,
                "oldObject": old,
                "dryRun": False,
                "options": None
                if operation == "CONNECT"
                else {"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"},
            }
            seconds = start + lines // 20
            stamp = (
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{lines % 1000:03d}Z"
            )
            line = (
                orjson.dumps(
                    {
                        "kind": "AdmissionReview",
                        "apiVersion": "admission.k8s.io/v1",
                        "request": request,
                        "requestReceivedTimestamp": stamp,
                    }
                )
                + b"\n"
            )
            out.write(line)
            written += len(line)
            lines += 1
    return written, lines


QUERIES = [
    ("namespace + resource", ["-n", "team-17", "--resource", "apps/deployments"]),
    (
        "user glob + operation",
        ["--user", "system:serviceaccount:*:deployer", "--operation", "UPDATE"],
    ),
    ("name glob + verb", ["--name", "deployment-4?", "--verb", "delete"]),
    ("free text", ["user7@example.com"]),
    ("time window (a tenth)", ["--since", "{since}", "--until", "{until}"]),
    ("no filter, -o json", ["-o", "json"]),
]


def _stamp(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def run_query(log: Path, args: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, output lines) of one query."""
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(
        [*pin, CLI, "query", "--file", str(log), *args],
        capture_output=True,
        check=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, completed.stdout.count(b"\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="log size in MB (default 256)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args()
    root = Path(
        tempfile.mkdtemp(
            prefix="kube-audit-rest-query-bench-",
            dir="/var/tmp" if os.path.isdir("/var/tmp") else None,
        )
    )
    try:
        log = root / "audit.log"
        size, count = generate(log, options.mb)
        print(describe(root, sys.version.split()[0]))
        print(
            f"log: {size / 1e6:.0f} MB, {count} records, {size / count:.0f} bytes each on average"
        )
        print(
            "pinned to one core with taskset -c 0"
            if shutil.which("taskset")
            else "taskset missing: not pinned"
        )
        run_query(log, ["--name", "warm-up-the-page-cache"])
        columns = ("lines out", "wall s", "CPU s", "MB/s")
        print(f"{'query':<24} " + " ".join(f"{c:>10}" for c in columns) + f" {'MB/CPU-s':>10}")
        span = count // 20
        bounds = {
            "since": _stamp(START + span * 45 // 100),
            "until": _stamp(START + span * 55 // 100),
        }
        for title, args in QUERIES:
            wall, cpu, out = run_query(log, [arg.format(**bounds) for arg in args])
            mb = size / 1e6
            cells = (f"{out}", f"{wall:.2f}", f"{cpu:.2f}", f"{mb / wall:.0f}", f"{mb / cpu:.0f}")
            print(f"{title:<24} " + " ".join(f"{cell:>10}" for cell in cells))
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

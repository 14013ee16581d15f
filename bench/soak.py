"""Soak: a fixed request rate for a long time, watching memory, descriptors and loss.

Starts the server as users do (the ``kube-audit-rest`` CLI, ``--self-signed``
TLS, the default worker count, file output on a disk folder), sizes
``--logger-max-size`` so that at the chosen rate the file rotates about once a
minute, keeps every backup (``--logger-max-backups=0``) so the final loss check
can read all records, and drives an open-loop load (``open_loop.py``: request
*i* due at ``t0 + i / rate``, keep-alive TLS connections). Every ``--interval``
seconds it prints one line: elapsed time, RSS and open file descriptors of the
master and of each worker (from ``/proc``), rotations so far (backup files in
the folder) and requests ok / failed. The summary compares the first sample
after ``--warmup`` with the last one and the largest: both RSS and fds of
master + workers must stay within ``--tolerance`` (10 %) of that first sample.
The loss check then reads every file: each acknowledged uid exactly once, no
uid twice, every line one record.

Exit status: 0 if flat and no loss, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bodies import fill, load_corpus, synthetic_templates
from loss import log_files
from open_loop import Job, OpenLoopResult, _connection, percentile
from server_proc import (
    LOG_NAME,
    _rss_bytes,
    pids_listening_on,
    process_tree,
    start_server,
)

MIB = 1024 * 1024


@dataclass
class Sample:
    elapsed: float
    rss: dict[int, int]  # pid -> bytes, master first
    fds: dict[int, int]
    rotations: int
    ok: int
    failed: int

    @property
    def total_rss(self) -> int:
        return sum(self.rss.values())

    @property
    def total_fds(self) -> int:
        return sum(self.fds.values())


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)


def _fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def master_and_workers(master: int, port: int) -> list[int]:
    """The master and the children holding the webhook's listening socket (the workers).

    The metrics process is a child too but does not listen on the webhook port.
    """
    children = [pid for pid in process_tree(master) if pid != master]
    return [master, *sorted(pids_listening_on(port, children))]


def rotations(folder: Path) -> int:
    return sum(1 for path in log_files(folder) if path.name != LOG_NAME)


def take_sample(
    master: int, port: int, folder: Path, elapsed: float, result: OpenLoopResult
) -> Sample:
    pids = master_and_workers(master, port)
    return Sample(
        elapsed=elapsed,
        rss={pid: _rss_bytes(pid) for pid in pids},
        fds={pid: _fd_count(pid) for pid in pids},
        rotations=rotations(folder),
        ok=len(result.acked),
        failed=result.errors + result.non2xx,
    )


def describe(sample: Sample, master: int) -> str:
    parts = [f"t={sample.elapsed:7.1f}s"]
    for pid in sample.rss:
        role = "master" if pid == master else f"worker {pid}"
        parts.append(f"{role}: {sample.rss[pid] / MIB:6.1f} MiB {sample.fds[pid]:3d} fds")
    parts.append(f"total {sample.total_rss / MIB:6.1f} MiB {sample.total_fds} fds")
    parts.append(f"rotations {sample.rotations}")
    parts.append(f"ok {sample.ok} failed {sample.failed}")
    return " | ".join(parts)


async def _dispatch(
    queue: asyncio.Queue[Job | None],
    templates: list[str],
    run_id: str,
    rate: float,
    duration: float,
    result: OpenLoopResult,
) -> None:
    total = int(rate * duration)
    t0 = time.perf_counter() + 0.05
    for index in range(total):
        due = t0 + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        uid = f"soak-{run_id}-{index}"
        queue.put_nowait(Job(uid, fill(templates[index % len(templates)], uid), due))
        result.scheduled += 1


async def _reporter(
    master: int,
    port: int,
    folder: Path,
    interval: float,
    result: OpenLoopResult,
    soak: Soak,
    started: float,
    done: asyncio.Event,
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=interval)
        sample = take_sample(master, port, folder, time.perf_counter() - started, result)
        soak.samples.append(sample)
        print(describe(sample, master), flush=True)
        if done.is_set():
            return


async def drive(
    master: int,
    port: int,
    cafile: Path,
    folder: Path,
    templates: list[str],
    run_id: str,
    args: argparse.Namespace,
) -> tuple[OpenLoopResult, Soak]:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False  # connecting by IP; the chain is still verified
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    result, soak = OpenLoopResult(), Soak()
    started = time.perf_counter()
    done = asyncio.Event()
    reporter = asyncio.create_task(
        _reporter(master, port, folder, args.interval, result, soak, started, done)
    )
    workers = [
        asyncio.create_task(_connection(queue, port, context, result))
        for _ in range(args.connections)
    ]
    await _dispatch(queue, templates, run_id, args.rate, args.duration, result)
    # The last sample is taken with the load's connections still open.
    done.set()
    await reporter
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.elapsed = time.perf_counter() - started
    result.sent = len(result.latencies) + result.errors
    return result, soak


@dataclass(frozen=True)
class Flatness:
    name: str
    first: float
    last: float
    peak: float
    tolerance: float

    @property
    def ok(self) -> bool:
        limit = self.first * (1 + self.tolerance)
        low = self.first * (1 - self.tolerance)
        return self.peak <= limit and low <= self.last <= limit

    def describe(self, unit: str, scale: float = 1.0) -> str:
        verdict = "flat" if self.ok else "NOT FLAT"
        change = (self.last - self.first) / self.first * 100 if self.first else 0.0
        return (
            f"{self.name}: first {self.first / scale:.1f}{unit}, last {self.last / scale:.1f}{unit}"
            f" ({change:+.1f} %), max {self.peak / scale:.1f}{unit}: {verdict}"
            f" (within {self.tolerance * 100:.0f} % of the first sample after warm-up)"
        )


def flatness(samples: list[Sample], warmup: float, tolerance: float) -> tuple[Flatness, Flatness]:
    steady = [sample for sample in samples if sample.elapsed >= warmup] or samples[-1:]
    rss = [float(sample.total_rss) for sample in steady]
    fds = [float(sample.total_fds) for sample in steady]
    return (
        Flatness("RSS master+workers", rss[0], rss[-1], max(rss), tolerance),
        Flatness("fds master+workers", fds[0], fds[-1], max(fds), tolerance),
    )


@dataclass(frozen=True)
class SoakLoss:
    acknowledged: int
    records: int
    missing: int
    duplicated: int
    bad_lines: int
    files: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.bad_lines)

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"loss check {verdict}: {self.acknowledged} acknowledged, {self.records} records in "
            f"{self.files} file(s), {self.missing} missing, {self.duplicated} duplicated, "
            f"{self.bad_lines} lines not exactly one record"
        )


def check_loss(files: Iterable[Path], run_id: str, total: int, acked: list[str]) -> SoakLoss:
    """Count each uid's records with a byte per request index (millions of uids, little memory).

    A line counts as a record if it ends with a newline, parses as JSON and
    holds exactly one uid of this run.
    """
    pattern = re.compile(rb"soak-" + re.escape(run_id.encode()) + rb"-(\d+)(?=\")")
    seen = bytearray(total)
    bad = files_read = records = 0
    for path in files:
        files_read += 1
        with path.open("rb") as handle:
            for line in handle:
                found = set(pattern.findall(line))
                if len(found) != 1 or not line.endswith(b"\n"):
                    bad += 1
                    continue
                try:
                    json.loads(line)
                except ValueError:
                    bad += 1
                    continue
                index = int(found.pop())
                records += 1
                if index < total:
                    seen[index] = min(255, seen[index] + 1)
    prefix = len(f"soak-{run_id}-")
    missing = sum(1 for uid in acked if seen[int(uid[prefix:])] == 0)
    duplicated = sum(1 for count in seen if count > 1)
    return SoakLoss(len(acked), records, missing, duplicated, bad, files_read)


def record_size(templates: list[str]) -> float:
    """Average record size: the body plus the received timestamp and a newline."""
    return sum(len(fill(t, "soak-0000000000-0000000")) for t in templates) / len(templates) + 60


def max_size_mb(rate: float, templates: list[str], every: float) -> int:
    """``--logger-max-size`` (whole MiB) for about one rotation every ``every`` seconds."""
    return max(1, round(rate * every * record_size(templates) / MIB))


def disk_folder() -> Path:
    """/var/tmp unless it is memory-backed (then bench/.out), as bench/run.py does."""
    candidate = Path("/var/tmp")
    try:
        with open("/proc/mounts", encoding="ascii") as mounts:
            best, fstype = "", ""
            for line in mounts:
                fields = line.split()
                mount = fields[1]
                if str(candidate).startswith(mount) and len(mount) > len(best):
                    best, fstype = mount, fields[2]
        if fstype not in ("tmpfs", "ramfs"):
            return candidate
    except OSError:
        return candidate
    fallback = Path(__file__).resolve().parent / ".out"
    fallback.mkdir(exist_ok=True)
    return fallback


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/soak", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before the flatness baseline"
        " (default: 10 %% of the duration, at least 30 s, at most 300 s)",
    )
    parser.add_argument("--tolerance", type=float, default=0.10, help="flatness (default 0.10)")
    parser.add_argument("--rotate-every", type=float, default=60.0, help="seconds per rotation")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--folder", type=Path, default=None, help="parent of the log folder")
    parser.add_argument(
        "--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus"
    )
    parser.add_argument("--keep", action="store_true", help="keep the log folder afterwards")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.interval <= 0:
        parser.error("--duration, --rate and --interval must be positive")
    if args.warmup is None:
        args.warmup = min(300.0, max(30.0, args.duration * 0.1))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    templates = load_corpus(args.corpus) or synthetic_templates()
    megabytes = max_size_mb(args.rate, templates, args.rotate_every)
    parent = args.folder or disk_folder()
    work = Path(tempfile.mkdtemp(prefix="kube-audit-rest-soak-", dir=parent))
    folder = work / "log"
    folder.mkdir()
    run_id = f"{int(time.time())}"
    print(
        f"soak: {args.rate:g} req/s for {args.duration:g} s, {args.connections} connections, "
        f"{len(templates)} templates (~{record_size(templates):.0f} B a record), "
        f"--logger-max-size={megabytes} (a rotation every ~{args.rotate_every:g} s), "
        f"log folder {folder}, warm-up {args.warmup:g} s",
        flush=True,
    )
    server = start_server(work, folder, [f"--logger-max-size={megabytes}"])
    try:
        print(f"server pid {server.pid}, webhook port {server.port}", flush=True)
        result, soak = asyncio.run(
            drive(server.pid, server.port, server.cert_path, folder, templates, run_id, args)
        )
    finally:
        code = server.stop()
    latencies = sorted(result.latencies)
    print(f"server exit status {code}")
    print(
        f"requests: {result.scheduled} scheduled, {len(result.acked)} ok, "
        f"{result.errors} errors, {result.non2xx} non-2xx, "
        f"{len(result.latencies) / result.elapsed:.1f} req/s, p50 "
        f"{percentile(latencies, 50) * 1000:.2f} ms, p99 {percentile(latencies, 99) * 1000:.2f} ms,"
        f" p99.9 {percentile(latencies, 99.9) * 1000:.2f} ms, max "
        f"{(latencies[-1] if latencies else float('nan')) * 1000:.2f} ms"
    )
    rss, fds = flatness(soak.samples, args.warmup, args.tolerance)
    print(rss.describe(" MiB", MIB))
    print(fds.describe(""))
    print(f"rotations: {rotations(folder)}")
    loss = check_loss(log_files(folder), run_id, result.scheduled, result.acked)
    print(loss.describe())
    ok = rss.ok and fds.ok and loss.ok and not result.errors and not result.non2xx and code == 0
    print(f"soak verdict: {'PASS' if ok else 'FAIL'}", flush=True)
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

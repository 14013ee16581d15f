"""Benchmark kube-audit-rest: ``.venv/bin/python bench/run.py [--duration S] [--corpus DIR]``.

Starts the CLI as users do (TLS with --self-signed, default worker count, file
output on a real disk), drives it with wrk at 1, 16 and 64 keep-alive
connections, at a fixed 1,000 requests/s with an open-loop client, and with
1 MiB bodies, then checks that every acknowledged request was logged exactly
once. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType

import bodies
import loss
import machine
import open_loop
import server_proc
import wrk_step

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = PROJECT.parent / "shared" / "corpus"
OPEN_LOOP_RATE = 1000.0
OPEN_LOOP_CONNECTIONS = 32
LARGE_CONNECTIONS = 4
MB = 1024 * 1024


@dataclass(frozen=True)
class Load:
    """What one step's load generator measured."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    non2xx: int
    errors: int
    closes: int
    keepalives: int
    acked: list[str]
    extra: str = ""


@dataclass(frozen=True)
class StepResult:
    name: str
    connections: int
    load: Load
    cpu_per_1k: float
    peak_rss_mb: float
    peak_master_workers_mb: float
    loss: loss.LossReport


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per step")
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="folder with kube-audit-rest.log"
    )
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def log_root() -> Path:
    """/var/tmp if it is on a disk, else bench/.out (never a memory file system)."""
    var_tmp = Path("/var/tmp")
    if var_tmp.is_dir() and not machine.is_memory_backed(var_tmp):
        return var_tmp
    out = PROJECT / "bench" / ".out"
    out.mkdir(exist_ok=True)
    return out


def load_templates(corpus: Path) -> tuple[list[str], str]:
    templates = bodies.load_corpus(corpus)
    if templates:
        return templates, f"{len(templates)} bodies from {corpus / bodies.CORPUS_FILE}"
    return bodies.synthetic_templates(), f"no corpus at {corpus}; 16 synthetic bodies"


def wrk_load(
    server: server_proc.Server,
    work: Path,
    templates: list[str],
    run_id: str,
    connections: int,
    duration: float,
    timeout: float,
) -> Load:
    script, acked_path = wrk_step.write_script(work, templates, run_id)
    result = wrk_step.run_wrk(server.port, script, acked_path, connections, duration, timeout)
    fig = result.figures
    errors = sum(fig[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    return Load(
        requests=fig["requests"],
        rps=fig["rps"],
        p50_ms=fig["p50_us"] / 1000,
        p99_ms=fig["p99_us"] / 1000,
        p999_ms=fig["p999_us"] / 1000,
        non2xx=fig["non2xx"],
        errors=errors,
        closes=fig["closes"],
        keepalives=fig["keepalives"],
        acked=result.acked,
        extra=f"max {fig['max_us'] / 1000:.2f} ms",
    )


def open_loop_load(
    server: server_proc.Server, templates: list[str], run_id: str, duration: float
) -> Load:
    result = asyncio.run(
        open_loop.run_open_loop(
            server.port,
            server.cert_path,
            templates,
            run_id,
            OPEN_LOOP_RATE,
            duration,
            OPEN_LOOP_CONNECTIONS,
        )
    )
    ms = sorted(value * 1000 for value in result.latencies)

    def pct(p: float) -> float:
        return open_loop.percentile(ms, p)

    return Load(
        requests=len(ms),
        rps=len(ms) / result.elapsed if result.elapsed else 0.0,
        p50_ms=pct(50),
        p99_ms=pct(99),
        p999_ms=pct(99.9),
        non2xx=result.non2xx,
        errors=result.errors,
        closes=result.closes,
        keepalives=result.keepalives,
        acked=result.acked,
        extra=(
            f"p90 {pct(90):.2f} ms, max {ms[-1] if ms else float('nan'):.2f} ms, "
            f"{result.scheduled} scheduled at {OPEN_LOOP_RATE:.0f}/s"
        ),
    )


def run_step(
    name: str, connections: int, tmp: Path, drive: Callable[[server_proc.Server], Load], run_id: str
) -> StepResult:
    log_dir = tmp / f"logs-{run_id}"
    log_dir.mkdir()
    server = server_proc.start_server(tmp / "work", log_dir)
    try:
        cpu_before = server_proc.tree_cpu_seconds(server.pid)
        tree = server_proc.process_tree(server.pid)
        metrics_process = server_proc.pids_listening_on(server.metrics_port, tree)
        with server_proc.RssSampler(server.pid, exclude=metrics_process) as sampler:
            load = drive(server)
        cpu = server_proc.tree_cpu_seconds(server.pid) - cpu_before
    finally:
        server.stop()
    report = loss.check(log_dir, run_id, load.acked)
    shutil.rmtree(log_dir, ignore_errors=True)
    per_1k = cpu / load.requests * 1000 if load.requests else float("nan")
    return StepResult(
        name, connections, load, per_1k, sampler.peak / MB, sampler.peak_without / MB, report
    )


def keep_alive_note(step: StepResult) -> str:
    if step.load.closes:
        return f"NO: {step.load.closes} responses had 'Connection: close'"
    answered = step.load.requests
    return (
        f"yes: {step.connections} client connection(s) reused; "
        f"{step.load.keepalives} of {answered} responses said 'Connection: keep-alive', "
        "none 'close'"
    )


def print_step(step: StepResult) -> None:
    load = step.load
    print(
        f"  {step.name}: {step.connections} conn, {load.rps:,.1f} req/s "
        f"({load.requests} requests), "
        f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, p99.9 {load.p999_ms:.2f} ms"
        + (f", {load.extra}" if load.extra else "")
    )
    print(
        f"    non-2xx {load.non2xx}, socket errors/timeouts {load.errors}, "
        f"server CPU {step.cpu_per_1k:.3f} s per 1,000 requests, "
        f"peak RSS {step.peak_master_workers_mb:.1f} MB master+workers, "
        f"{step.peak_rss_mb:.1f} MB with the metrics process"
    )
    print(f"    keep-alive: {keep_alive_note(step)}")
    print(f"    loss check: {step.loss.describe()}", flush=True)


def print_summary(steps: list[StepResult]) -> None:
    header = (
        f"{'step':<18}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'non-2xx':>9}{'CPU s/1k':>10}{'RSS MB':>8}{'m+w MB':>8}  loss"
    )
    print("\nsummary")
    print(header)
    print("-" * len(header))
    for s in steps:
        print(
            f"{s.name:<18}{s.connections:>6}{s.load.rps:>10.1f}{s.load.p50_ms:>9.2f}"
            f"{s.load.p99_ms:>9.2f}{s.load.p999_ms:>10.2f}{s.load.non2xx:>9}"
            f"{s.cpu_per_1k:>10.3f}{s.peak_rss_mb:>8.1f}{s.peak_master_workers_mb:>8.1f}"
            f"  {'OK' if s.loss.ok else 'FAILED'}"
        )


def print_targets(steps: list[StepResult]) -> None:
    by_name = {s.name: s for s in steps}
    checks: list[tuple[str, bool]] = []
    for name in ("wrk-16", "wrk-64"):
        if name in by_name:
            checks.append((f">= 9,000 req/s at {name}", by_name[name].load.rps >= 9000))
    if "rate-1000" in by_name:
        checks.append(("p99 < 5 ms at 1,000 req/s", by_name["rate-1000"].load.p99_ms < 5))
    checks.append(
        (
            "peak RSS of master plus workers < 120 MB",
            all(s.peak_master_workers_mb < 120 for s in steps),
        )
    )
    checks.append(("zero loss", all(s.loss.ok for s in steps)))
    print("\ntargets (from the issue)")
    for label, met in checks:
        print(f"  {'met    ' if met else 'NOT met'}  {label}")


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_all(args: argparse.Namespace, tmp: Path) -> list[StepResult]:
    templates, source = load_templates(args.corpus)
    large = [bodies.large_template(templates)]
    print(f"bodies: {source}; large body {len(large[0].encode()) / MB:.2f} MiB")
    print(f"duration {args.duration:g} s per step; server: default workers, TLS, file output\n")
    work = tmp / "work"
    work.mkdir()
    base = uuid.uuid4().hex[:8]
    plan: list[tuple[str, int, str, Callable[[server_proc.Server], Load]]] = []
    for conns in (1, 16, 64):
        rid = f"{base}c{conns}"
        drive: Callable[[server_proc.Server], Load] = partial(
            wrk_load, work=work, templates=templates, run_id=rid, connections=conns,
            duration=args.duration, timeout=10.0,
        )  # fmt: skip
        plan.append((f"wrk-{conns}", conns, rid, drive))
    rid = f"{base}r"
    drive = partial(open_loop_load, templates=templates, run_id=rid, duration=args.duration)
    plan.append(("rate-1000", OPEN_LOOP_CONNECTIONS, rid, drive))
    rid = f"{base}big"
    drive = partial(
        wrk_load, work=work, templates=large, run_id=rid, connections=LARGE_CONNECTIONS,
        duration=args.duration, timeout=30.0,
    )  # fmt: skip
    plan.append(("wrk-1MiB", LARGE_CONNECTIONS, rid, drive))
    steps: list[StepResult] = []
    for name, conns, rid, drive in plan:
        step = run_step(name, conns, tmp, drive, rid)
        print_step(step)
        steps.append(step)
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if wrk_step.wrk_path() is None:
        print(
            "error: wrk is not on PATH. Install it first, e.g. as root: "
            "apt-get update && apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    root = log_root()
    tmp = Path(tempfile.mkdtemp(prefix="kube-audit-rest-bench-", dir=root))
    print(machine.describe(tmp, platform.python_version()))
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; temp folder {tmp}")
    try:
        steps = run_all(args, tmp)
    except KeyboardInterrupt:
        print("\ninterrupted; server stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if root.name == ".out":
            shutil.rmtree(root, ignore_errors=True)
    print_summary(steps)
    print_targets(steps)
    return 0 if all(step.loss.ok for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())

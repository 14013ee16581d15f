"""Helpers for the reliability tests (issue 8): /proc readings, a raw asyncio client, log checks.

The server is always the real CLI (``tests.support.start_server``); these
helpers only watch it from outside: which processes are its workers, how many
descriptors and how much memory they hold, and what ended up in its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.support import Server, client_context, review


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def _holds(pid: int, targets: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                return True
        except OSError:
            continue
    return False


def worker_pids(server: Server) -> list[int]:
    """The master's children that hold the webhook's listening socket (not the metrics process)."""
    listening = _listening_inodes(server.port)
    return sorted(pid for pid in children(server.process.pid) if _holds(pid, listening))


def wait_for_workers(
    server: Server, count: int, exclude: Iterable[int] = (), timeout: float = 30.0
) -> list[int]:
    """Wait until *count* workers, none of them in *exclude*, are up."""
    gone = set(exclude)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if len(pids) == count and not gone & set(pids):
            return pids
        time.sleep(0.05)
    raise AssertionError(f"workers not back to {count} within {timeout} s: {worker_pids(server)}")


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def server_pids(server: Server) -> list[int]:
    """Master plus workers (the metrics process left out)."""
    return [server.process.pid, *worker_pids(server)]


def server_fds(server: Server) -> int:
    return sum(fd_count(pid) for pid in server_pids(server))


def server_rss(server: Server) -> int:
    return sum(rss_bytes(pid) for pid in server_pids(server))


def raise_fd_limit(wanted: int) -> int:
    """Raise this (test) process's RLIMIT_NOFILE soft limit towards *wanted*; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- log files


def log_files(server: Server) -> list[Path]:
    """The active file and its rotated backups, oldest first by name."""
    folder, name = server.log_path.parent, server.log_path.name
    stem, suffix = name.rsplit(".", 1)
    return sorted(
        path
        for path in folder.iterdir()
        if path.name == name or (path.name.startswith(stem + "-") and path.suffix == "." + suffix)
    )


@dataclass
class LogCheck:
    uids: Counter[str]
    lines: int
    bad_lines: list[str]  # descriptions of lines that are not one whole record

    def assert_exactly_once(self, acked: Iterable[str]) -> None:
        assert not self.bad_lines, self.bad_lines[:5]
        acked = set(acked)
        missing = [uid for uid in acked if self.uids[uid] == 0]
        assert not missing, f"{len(missing)} acknowledged records missing, e.g. {missing[:5]}"
        twice = [uid for uid, count in self.uids.items() if count > 1]
        assert not twice, f"{len(twice)} records written twice, e.g. {twice[:5]}"


def _loads(line: bytes) -> Any:
    """orjson reads nesting up to 1024 deep (the stdlib's recursion stops near 1000);
    the stdlib reads the lone surrogate escapes that orjson refuses."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def check_log(paths: Iterable[Path]) -> LogCheck:
    """Every line must end with a newline and parse as one JSON object with request.uid."""
    uids: Counter[str] = Counter()
    lines, bad = 0, []
    for path in paths:
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            bad.append(f"{path.name}: ends with a partial line {data[-80:]!r}")
        for number, line in enumerate(data.splitlines(), 1):
            lines += 1
            try:
                document = _loads(line)
                uid = document["request"]["uid"]
            except (ValueError, KeyError, TypeError):
                bad.append(f"{path.name}:{number}: {line[:80]!r}...{line[-40:]!r}")
                continue
            uids[uid] += 1
    return LogCheck(uids, lines, bad)


# --------------------------------------------------------------------------- asyncio client


def request_bytes(body: bytes, port: int, path: str = "/log-request") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


class AsyncClient:
    """One keep-alive TLS connection that reconnects after an error."""

    def __init__(self, server: Server, context: ssl.SSLContext | None = None) -> None:
        self.port = server.port
        self.context = context or client_context(server.ca_path)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.context, server_hostname="localhost"
        )

    async def post(self, body: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
        """(status, body); raises OSError-like errors after closing the connection."""
        if self.writer is None:
            await self.connect()
            self.reconnects += 1
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(request_bytes(body, self.port))
            await self.writer.drain()
            status, headers, answer = await asyncio.wait_for(read_response(self.reader), timeout)
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def aclose(self) -> None:
        """Close and wait (briefly) for the TLS close, so no transport outlives the loop."""
        writer = self.writer
        self.close()
        if writer is not None:
            with contextlib.suppress(*CLIENT_ERRORS, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 2)


CLIENT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError)


# --------------------------------------------------------------------------- open-loop traffic


@dataclass
class Traffic:
    latencies: list[float]
    acked: list[str]
    errors: list[str]


async def open_loop(
    port: int, ca_path: Path, rate: int, seconds: float, connections: int, prefix: str
) -> Traffic:
    """Request i is due at t0 + i / rate; its latency counts from that due time."""
    context = client_context(ca_path)
    queue: asyncio.Queue[tuple[str, float] | None] = asyncio.Queue()
    result = Traffic([], [], [])

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        while (job := await queue.get()) is not None:
            uid, due = job
            try:
                writer.write(request_bytes(review(uid), port))
                await writer.drain()
                status, _, answer = await asyncio.wait_for(read_response(reader), 10)
            except CLIENT_ERRORS as error:
                result.errors.append(f"{uid}: {error!r}")
                writer.close()
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="localhost"
                )
                continue
            result.latencies.append(time.monotonic() - due)
            if status == 200 and uid.encode() in answer:
                result.acked.append(uid)
            else:
                result.errors.append(f"{uid}: {status}")
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    await asyncio.sleep(0.5)  # connected before the clock starts
    t0 = time.monotonic()
    for i in range(int(rate * seconds)):
        due = t0 + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((f"{prefix}-{i}", due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return result


def traffic_process(
    server: Server, rate: int, seconds: float, connections: int, prefix: str
) -> subprocess.Popen[bytes]:
    """Open-loop traffic from its own process, so a flood in the test's loop cannot delay it."""
    argv = [sys.executable, "-m", "tests.reliability_support", str(server.port)]
    argv += [str(server.ca_path), str(rate), str(seconds), str(connections), prefix]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])


def traffic_result(process: subprocess.Popen[bytes], timeout: float) -> Traffic:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-2000:]
    data = json.loads(out)
    return Traffic(data["latencies"], data["acked"], data["errors"])


def _main(argv: list[str]) -> int:
    port, ca, rate, seconds, connections, prefix = argv
    result = asyncio.run(
        open_loop(int(port), Path(ca), int(rate), float(seconds), int(connections), prefix)
    )
    json.dump(
        {"latencies": result.latencies, "acked": result.acked, "errors": result.errors},
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

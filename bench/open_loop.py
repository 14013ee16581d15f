"""Open-loop (fixed arrival rate) client, corrected for coordinated omission.

Why not wrk: wrk is closed-loop. Each connection sends its next request only
when the previous answer has arrived, so a server stall also stalls the client
and the requests that *should* have been sent during the stall are never
measured (coordinated omission). A webhook's callers (API servers) do not wait
for each other. wrk2 does open-loop but is not packaged in Debian/Ubuntu, so this
small asyncio client does it: request i is due at ``t0 + i / rate``; a
dispatcher releases each request at its due time into a queue served by a pool of
keep-alive TLS connections, and latency is measured from the *scheduled* time,
not from when a connection became free. If the server falls behind, the queueing
delay shows up in the latency, as it would for a real caller. 1,000 requests/s is
well within what one asyncio loop can generate.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from bodies import fill, uid_for

WORKER_ID = 9999  # the uid's "thread" field for this client, distinct from wrk's


@dataclass
class OpenLoopResult:
    latencies: list[float] = field(default_factory=list)  # seconds, scheduled -> answered
    acked: list[str] = field(default_factory=list)
    non2xx: int = 0
    errors: int = 0
    closes: int = 0
    keepalives: int = 0
    sent: int = 0
    scheduled: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class Job:
    uid: str
    body: bytes
    due: float


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
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


def _request(body: bytes, port: int) -> bytes:
    head = (
        f"POST /log-request HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    queue: asyncio.Queue[Job | None], port: int, context: ssl.SSLContext, result: OpenLoopResult
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        while (job := await queue.get()) is not None:
            try:
                writer.write(_request(job.body, port))
                await writer.drain()
                status, headers, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
                continue
            result.latencies.append(time.perf_counter() - job.due)
            connection = headers.get("connection", "").lower()
            result.closes += connection == "close"
            result.keepalives += connection == "keep-alive"
            if status == 200 and job.uid.encode() in body:
                result.acked.append(job.uid)
            elif status // 100 != 2:
                result.non2xx += 1
    finally:
        writer.close()


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
        uid = uid_for(run_id, WORKER_ID, index)
        queue.put_nowait(Job(uid, fill(templates[index % len(templates)], uid), due))
        result.scheduled += 1


async def run_open_loop(
    port: int,
    cafile: Path,
    templates: list[str],
    run_id: str,
    rate: float,
    duration: float,
    connections: int = 32,
) -> OpenLoopResult:
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False  # connecting by IP; the chain is still verified
    queue: asyncio.Queue[Job | None] = asyncio.Queue()
    result = OpenLoopResult()
    started = time.perf_counter()
    workers = [
        asyncio.create_task(_connection(queue, port, context, result)) for _ in range(connections)
    ]
    await _dispatch(queue, templates, run_id, rate, duration, result)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.elapsed = time.perf_counter() - started
    result.sent = len(result.latencies) + result.errors
    return result


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, math.ceil(pct / 100 * len(values)) - 1))
    return values[rank]

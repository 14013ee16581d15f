"""Issue 8, point 6: SIGTERM while floods and large bodies are in flight.

The real CLI with two workers and ``--graceful-timeout=4`` carries idle
kept-alive connections, slowloris clients (with a ``--read-timeout`` longer
than the grace period, so they are still "busy" when it ends), clients
sending 1-4 MiB bodies and clients sending small ones. Then the master gets
SIGTERM. It must exit with status 0 within the grace period (plus a little
for the master to reap its workers), every request answered 200 must be in
the file exactly once, and the file must end on a whole record.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest

from tests.conftest import StartServer
from tests.reliability_support import (
    CLIENT_ERRORS,
    AsyncClient,
    check_log,
    log_files,
    raise_fd_limit,
    read_response,
    request_bytes,
    wait_for_workers,
)
from tests.support import Server, client_context, review

MIB = 1024 * 1024
GRACE = 4
IDLE, SLOW, LARGE, SMALL = 200, 20, 4, 8


async def _sender(
    server: Server, name: str, sizes: list[int], stop: asyncio.Event, acked: list[str]
) -> None:
    rng = random.Random(name)  # noqa: S311 - reproducible test data
    client = AsyncClient(server)
    n = 0
    while not stop.is_set():
        uid = f"{name}-{n}"
        n += 1
        body = review(uid, padding="p" * rng.choice(sizes))
        try:
            status, answer = await client.post(body, timeout=20)
        except CLIENT_ERRORS:
            await asyncio.sleep(0.05)  # refused once the listener is closed
            continue
        if status == 200:
            assert uid.encode() in answer
            acked.append(uid)
    await client.aclose()


async def _idle(server: Server, n: int, acked: list[str], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.port, ssl=client_context(server.ca_path), server_hostname="localhost"
    )
    writer.write(request_bytes(review(f"idle-{n}"), server.port))
    status, _, _ = await read_response(reader)
    if status == 200:
        acked.append(f"idle-{n}")
    await stop.wait()
    writer.close()


async def _slowloris(server: Server, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            server.port,
            ssl=client_context(server.ca_path),
            server_hostname="localhost",
        )
        for byte in request_bytes(b"{}", server.port):
            if stop.is_set() or reader.at_eof():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)
        writer.close()
    except CLIENT_ERRORS:
        pass


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_under_fire_exits_0_in_the_grace_period_and_keeps_every_200(
    start: StartServer,
) -> None:
    raise_fd_limit(4096)
    server = start(
        "--workers=2",
        f"--graceful-timeout={GRACE}",
        "--read-timeout=20",
        "--logger-max-size=8",
        "--logger-max-backups=0",
    )
    wait_for_workers(server, 2)
    acked: list[str] = []
    exit_after: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_idle(server, n, acked, stop)) for n in range(IDLE)]
        tasks += [asyncio.create_task(_slowloris(server, stop)) for _ in range(SLOW)]
        sizes_large = [MIB, 2 * MIB, 4 * MIB]
        tasks += [
            asyncio.create_task(_sender(server, f"large-{n}", sizes_large, stop, acked))
            for n in range(LARGE)
        ]
        tasks += [
            asyncio.create_task(_sender(server, f"small-{n}", [500, 2000], stop, acked))
            for n in range(SMALL)
        ]
        await asyncio.sleep(3)
        assert len(acked) > IDLE, "the load did not get going"
        os.kill(server.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        code = await asyncio.to_thread(server.process.wait, 30)
        exit_after.append(time.monotonic() - signalled)
        assert code == 0, server.stderr()[-3000:]
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    asyncio.run(main())
    assert exit_after[0] <= GRACE + 3, f"exited {exit_after[0]:.1f} s after SIGTERM"
    check = check_log(log_files(server))
    check.assert_exactly_once(acked)  # also: every file ends with a newline
    large = [uid for uid in acked if uid.startswith("large-")]
    assert large, "no large body was acknowledged"
    print(
        f"exit 0 after {exit_after[0]:.2f} s; {len(acked)} acknowledged "
        f"({len(large)} large), {check.lines} records"
    )

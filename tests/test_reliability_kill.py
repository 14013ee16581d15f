"""Issue 8, point 1: a worker SIGKILLed mid-write loses no acknowledged record and tears no line.

The real CLI with two workers writes to a real file while several keep-alive
TLS clients send a mix of small and large (1-4 MiB) AdmissionReviews; a large
record takes long enough to copy into the file that some kills land inside
the write (the server then logs "removed a partial record"). The worker is
killed ten times; the master replaces it each time. Afterwards every line of
every file must be one whole JSON record, every uid answered 200 must be there
exactly once, and no uid twice.

Whether a given kill lands mid-write is luck, so the second test makes the
torn tail deterministic: it appends a fragment to the live server's file
between requests, as a killed writer would have left it.
"""

from __future__ import annotations

import asyncio
import json
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
    wait_for_workers,
    worker_pids,
)
from tests.support import Server, review

MIB = 1024 * 1024
KILLS = 10


def _body(uid: str, size: int) -> bytes:
    padding = "k" * max(0, size - 200)
    return review(uid, object={"kind": "ConfigMap", "data": {"padding": padding}})


async def _client(
    server: Server, name: str, stop: asyncio.Event, acked: list[str], failed: list[str]
) -> None:
    rng = random.Random(name)  # noqa: S311 (test load, not secrets)
    client = AsyncClient(server)
    count = 0
    while not stop.is_set():
        uid = f"{name}-{count}"
        count += 1
        size = rng.choice([1000, 3000, MIB, 2 * MIB, 4 * MIB]) if rng.random() < 0.4 else 1500
        try:
            status, answer = await client.post(_body(uid, size), timeout=20)
        except CLIENT_ERRORS:
            failed.append(uid)  # the connection died with its worker: not acknowledged
            await asyncio.sleep(0.01)
            continue
        if status == 200:
            assert uid.encode() in answer
            acked.append(uid)
        else:
            failed.append(uid)
    await client.aclose()


async def _killer(server: Server, stop: asyncio.Event, killed: list[int]) -> None:
    rng = random.Random(8)  # noqa: S311 (test load, not secrets)
    loop = asyncio.get_running_loop()
    await asyncio.sleep(1.0)
    for _ in range(KILLS):
        pids = await loop.run_in_executor(None, wait_for_workers, server, 2, killed)
        await asyncio.sleep(rng.uniform(0.5, 1.5))  # let the new worker take load
        victim = rng.choice(pids)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
    await loop.run_in_executor(None, wait_for_workers, server, 2, killed)
    await asyncio.sleep(1.0)  # requests after the last replacement
    stop.set()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkilled_workers_lose_no_acknowledged_record_and_tear_no_line(
    start: StartServer,
) -> None:
    server = start("--workers=2", "--logger-max-size=40", "--logger-max-backups=0")
    master = server.process.pid
    acked: list[str] = []
    failed: list[str] = []
    killed: list[int] = []

    async def main() -> None:
        stop = asyncio.Event()
        clients = [_client(server, f"kill-{n}", stop, acked, failed) for n in range(6)]
        await asyncio.wait_for(asyncio.gather(_killer(server, stop, killed), *clients), 90)

    asyncio.run(main())
    assert len(killed) == KILLS
    assert server.process.poll() is None and server.process.pid == master
    survivors = worker_pids(server)
    assert len(survivors) == 2 and not set(survivors) & set(killed)
    assert server.stop() == 0
    check = check_log(log_files(server))
    check.assert_exactly_once(acked)
    assert len(acked) > 200, f"too little load to mean anything: {len(acked)} acknowledged"
    repaired = server.stderr().count("removed a partial record left by an interrupted writer")
    print(
        f"{len(acked)} acknowledged, {len(failed)} failed with their worker, "
        f"{check.lines} lines, {repaired} torn tails repaired"
    )


@pytest.mark.timeout(60)
def test_a_torn_tail_in_the_live_file_is_cut_and_the_next_record_starts_its_own_line(
    start: StartServer,
) -> None:
    server = start("--workers=2")
    for n in range(3):
        assert server.post(review(f"before-{n}")).status == 200
    fragments = [
        b'{"kind":"AdmissionReview","request":{"uid":"torn-1","object":{"a":"xx',
        b"torn-2" * (40 * 1024),  # longer than one 64 KiB read of the tail repair
        b'{"kind":"AdmissionReview","apiVersion":"torn-3',
    ]
    for n, fragment in enumerate(fragments):
        with open(server.log_path, "ab") as handle:  # what a writer killed mid-write leaves
            handle.write(fragment)
        answer = server.post(review(f"after-{n}"))
        assert answer.status == 200
        data = server.log_path.read_bytes()
        assert data.endswith(b"\n") and b"torn-" not in data
        last = json.loads(data.splitlines()[-1])
        assert last["request"]["uid"] == f"after-{n}"
    check = check_log([server.log_path])
    check.assert_exactly_once([f"before-{n}" for n in range(3)] + [f"after-{n}" for n in range(3)])
    assert check.lines == 6
    deadline = time.monotonic() + 5
    while server.stderr().count("removed a partial record") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.stderr().count("removed a partial record") == 3

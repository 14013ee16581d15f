"""Inputs of ``kube-audit-rest query``: rotation order, given files, stdin, and ``--follow``.

``--follow`` runs the real CLI as a subprocess against files this test writes
and rotates the way the server does (rename to a lumberjack backup name, new
active file), and once against the real server rotating its own log.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.query_support import ACTIVE, BACKUPS, EVENTS, FIXTURES, fixture_log, names, query
from tests.support import CLI


def record(uid: str, name: str = "web", second: int = 0, padding: str = "") -> bytes:
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": name,
            "namespace": "follow",
            "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": {"kind": "ConfigMap", "data": {"pad": padding}},
        },
        "requestReceivedTimestamp": f"2026-11-23T15:00:{second:02d}Z",
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def test_backups_are_read_oldest_first_then_the_active_file(tmp_path: Path) -> None:
    active = tmp_path / "audit.log"
    # Written in the opposite order of their names' times, so creation order is no help.
    (tmp_path / "audit-2026-11-23T15-00-02.000.log").write_bytes(record("c", "third"))
    (tmp_path / "audit-2026-11-23T15-00-01.000.log").write_bytes(record("b", "second"))
    (tmp_path / "audit-2026-11-23T09-00-00.000.log").write_bytes(record("a", "first"))
    (tmp_path / "audit-not-a-backup.log").write_bytes(record("x", "stranger"))
    (tmp_path / "other-2026-11-23T09-00-00.000.log").write_bytes(record("y", "stranger"))
    active.write_bytes(record("d", "fourth"))
    result = query("--logger-filename", str(active))
    assert names(result) == ["follow/first", "follow/second", "follow/third", "follow/fourth"]


def test_backups_without_an_active_file(tmp_path: Path) -> None:
    (tmp_path / "audit-2026-11-23T15-00-01.000.log").write_bytes(record("b", "only"))
    assert names(query("--logger-filename", str(tmp_path / "audit.log"))) == ["follow/only"]


def test_fixture_order_is_by_time_across_files() -> None:
    times = [row.split()[0] for row in fixture_log().stdout.splitlines()[1:]]
    assert times == sorted(times) and len(times) == 30


def test_given_files_and_stdin() -> None:
    both = query("--file", str(EVENTS), "--file", str(BACKUPS[0]))
    assert len(both.stdout.splitlines()) == 1 + 8 + 8
    piped = query("--file", "-", "-o", "json", stdin=ACTIVE.read_bytes())
    assert piped.code == 0 and piped.stdout.encode() == ACTIVE.read_bytes()
    broken = query("--file", "-", stdin=record("a") + b"{torn\n")
    assert broken.stderr.startswith("kube-audit-rest: warning: <stdin>:2: not valid JSON")


def test_a_malformed_line_is_reported_once_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(record("a") + b"garbage\n" + b'{"not":"a record"}\n' + b"\n" + record("b"))
    result = query("--file", str(log), "-o", "json")
    assert result.code == 0
    assert result.stdout.encode() == record("a") + record("b")
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2
    assert warnings[0].startswith(f"kube-audit-rest: warning: {log}:2: not valid JSON (")
    assert warnings[1] == (
        f"kube-audit-rest: warning: {log}:3: neither an AdmissionReview nor an audit.k8s.io"
        " Event record"
    )
    # A filter that rules the line out by its bytes still reports a line that is no JSON object.
    filtered = query("--file", str(log), "-n", "elsewhere")
    assert filtered.stderr.splitlines() == [warnings[0]]


class Follower:
    """``query --follow -o json`` as a subprocess, its stdout lines in a queue."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [CLI, "query", "--follow", "-o", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def take(self, count: int, timeout: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        got: list[bytes] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(got)} of {count} lines: {got!r}")
            try:
                got.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue
        return got

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        assert self.process.stderr is not None
        stderr = self.process.stderr.read().decode()
        self.close()
        return code, stderr

    def close(self) -> None:
        self.pump.join(timeout=10)  # the process has exited: its stdout is at EOF
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def follower() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for one in started:
        if one.process.poll() is None:
            one.process.kill()
            one.process.wait(timeout=10)
        one.close()


def test_follow_across_rotations(tmp_path: Path, follower: list[Follower]) -> None:
    active = tmp_path / "audit.log"
    (tmp_path / "audit-2026-11-23T14-00-00.000.log").write_bytes(record("0"))
    active.write_bytes(record("1") + record("2"))
    tail = Follower("--logger-filename", str(active))
    follower.append(tail)
    assert tail.take(3) == [record("0"), record("1"), record("2")]

    with active.open("ab") as handle:  # grows
        handle.write(record("3"))
    assert tail.take(1) == [record("3")]

    # Rotation as the server does it: rename to a backup, then a new active file.
    # A write that reached the old file just before the rename must not be lost.
    first_backup = tmp_path / "audit-2026-11-23T15-00-00.000.log"
    with active.open("ab") as handle:
        handle.write(record("4"))
        os.rename(active, first_backup)
    active.write_bytes(record("5"))
    assert tail.take(2) == [record("4"), record("5")]

    # Two rotations between two polls: the middle file is read too, in order.
    os.rename(active, tmp_path / "audit-2026-11-23T15-00-01.000.log")
    with (tmp_path / "audit-2026-11-23T15-00-01.000.log").open("ab") as handle:
        handle.write(record("6"))
    active.write_bytes(record("7"))
    os.rename(active, tmp_path / "audit-2026-11-23T15-00-02.000.log")
    active.write_bytes(record("8"))
    assert tail.take(3) == [record("6"), record("7"), record("8")]

    # A partial line waits for its newline; a malformed one is reported once.
    with active.open("ab") as handle:
        half = record("9")
        handle.write(half[:40])
        handle.flush()
        time.sleep(0.5)
        handle.write(half[40:] + b"not json\n" + record("10"))
    assert tail.take(2) == [record("9"), record("10")]

    # A torn line that the server cuts off before its next write is not read as a record.
    torn = b'{"kind":"AdmissionReview","request":{"uid":"torn-by-a-killed-writer'
    with active.open("ab") as handle:
        handle.write(torn)
    time.sleep(0.5)
    size = active.stat().st_size
    with active.open("r+b") as handle:
        handle.truncate(size - len(torn))
        handle.seek(0, os.SEEK_END)
        handle.write(record("11") + record("12"))
    assert tail.take(2) == [record("11"), record("12")]
    code, stderr = tail.stop()
    assert code == 0
    assert stderr.count("warning:") == 1 and f"{active}:3: not valid JSON" in stderr
    assert tail.lines.empty()


def test_follow_waits_for_a_missing_log(tmp_path: Path, follower: list[Follower]) -> None:
    active = tmp_path / "later.log"
    tail = Follower("--logger-filename", str(active), "--name", "wanted")
    follower.append(tail)
    time.sleep(0.5)
    active.write_bytes(record("1", "other") + record("2", "wanted"))
    assert tail.take(1) == [record("2", "wanted")]
    assert tail.stop(signal.SIGTERM)[0] == 0


@pytest.mark.slow
def test_follow_the_real_server_across_its_rotations(
    start: StartServer, tmp_path: Path, follower: list[Follower]
) -> None:
    """The server rotates at 1 MiB; records of about 300 KiB make it rotate every few."""
    server = start("--workers=1", "--logger-max-size=1", "--logger-max-backups=0")
    tail = Follower("--logger-filename", str(server.log_path), "-n", "follow")
    follower.append(tail)
    padding = "x" * 300_000
    sent = []
    for index in range(10):
        body = json.loads(record(f"uid-{index}", f"cm-{index}", padding=padding))
        del body["requestReceivedTimestamp"]
        assert server.post(json.dumps(body).encode()).status == 200
        sent.append(f"uid-{index}")
    got = [json.loads(line)["request"]["uid"] for line in tail.take(10, timeout=30)]
    assert got == sent
    backups = sorted(tmp_path.glob("audit-*.log"))
    assert len(backups) >= 2, "the server should have rotated"
    assert tail.stop()[0] == 0


def test_fixture_folder_has_its_backups() -> None:
    assert all(path.parent == FIXTURES and path.exists() for path in BACKUPS)

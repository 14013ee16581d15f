"""Issue 8, point 4: disk faults, against the real CLI writing real files.

Disk full and a read-only folder need root, to mount a small ``tmpfs``
(CI runs as root); without root, or where mounting is not allowed (an
unprivileged container), those tests skip and say why. As root, permission
bits do not stop writes, so read-only is a real read-only mount. Every mount
is undone in a ``finally`` (lazily, so a still-open descriptor cannot block
it). The file being deleted, moved or copy-truncated by an operator or an
external logrotate needs no root.

Throughout: never a 200 for a record that is not in the file, a 500 with a
JSON error, a log line and ``kube_audit_rest_write_failures_total`` for one
that could not be written, and recovery by itself once the fault is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.reliability_support import check_log, log_files
from tests.support import CLI, Pair, Server, free_port, review

MIB = 1024 * 1024


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def _mount(*argv: str) -> None:
    result = _run("mount", *argv)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here (needs CAP_SYS_ADMIN): {result.stderr.strip()}")


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to undo at the end, innermost last."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    if shutil.which("mount") is None:
        pytest.skip("needs the mount command (util-linux)")
    points: list[Path] = []
    try:
        yield points
    finally:
        for point in reversed(points):
            _run("umount", "-l", str(point))


def _tmpfs(mounts: list[Path], point: Path, options: str) -> Path:
    point.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", options, "tmpfs", str(point))
    mounts.append(point)
    return point


def _error_events(server: Server) -> list[dict[str, str]]:
    events = []
    for line in server.stderr().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "audit record not written; answered 500":
            events.append(event)
    return events


@pytest.mark.timeout(120)
def test_disk_full_answers_500_leaves_no_fragment_and_recovers(
    start: StartServer, tmp_path: Path, mounts: list[Path]
) -> None:
    disk = _tmpfs(mounts, tmp_path / "disk", "size=1m,mode=0700")
    filler = disk / "filler"
    filler.write_bytes(b"f" * (400 * 1024))
    log = disk / "audit.log"
    server = start("--workers=2", f"--logger-filename={log}")
    server.log_path = log
    acked, refused = [], []
    conn = server.connection()
    for n in range(60):  # 60 x ~40 KB is well past the ~600 KiB left
        uid = f"full-{n}"
        answer = server.post(review(uid, padding="p" * 40_000), conn=conn)
        if answer.status == 200:
            acked.append(uid)
        else:
            assert answer.status == 500, answer
            assert answer.json() == {"error": "the audit record could not be written"}
            refused.append(uid)
    assert acked and len(refused) >= 10, (len(acked), len(refused))
    data = log.read_bytes()
    assert data.endswith(b"\n"), "a failed write left a fragment"
    check = check_log([log])
    check.assert_exactly_once(acked)
    assert not set(refused) & set(check.uids), "a record answered 500 is in the file"
    metrics = server.metrics()
    assert metrics["kube_audit_rest_write_failures_total"] == len(refused)
    assert metrics['kube_audit_rest_responses_total{code="500"}'] == len(refused)
    events = _error_events(server)
    assert len(events) == len(refused)
    assert all("No space left on device" in event["error"] for event in events), events[:2]
    assert events[0]["level"] == "error" and events[0]["uid"] == refused[0]

    filler.unlink()  # the operator frees space: the next record goes through
    for n in range(5):
        assert server.post(review(f"after-{n}", padding="p" * 40_000), conn=conn).status == 200
    conn.close()
    assert server.stop() == 0
    check = check_log([log])
    check.assert_exactly_once(acked + [f"after-{n}" for n in range(5)])
    assert not set(refused) & set(check.uids)


@pytest.mark.timeout(120)
def test_read_only_folder_answers_500_and_recovers_when_writable_again(
    start: StartServer, tmp_path: Path, mounts: list[Path]
) -> None:
    """Two ways a folder becomes read-only under a running server.

    1. A read-only mount over the log folder (what an operator's mistake, or a
       volume re-mounted read-only, looks like through the path): the file is
       no longer there and cannot be recreated. Unmounted, the old file is
       back and is appended to again.
    2. The folder itself re-mounted read-only through a bind mount while the
       server's descriptor stays open: records still fit in the open file are
       written (and answered 200, correctly), but the rotation cannot rename
       the file, so past ``--logger-max-size`` every record is a 500, until
       the folder is writable again.
    """
    folder = _tmpfs(mounts, tmp_path / "disk", "size=16m,mode=0700")
    log = folder / "audit.log"
    server = start("--workers=2", f"--logger-filename={log}", "--logger-max-size=1")
    server.log_path = log
    conn = server.connection()
    assert server.post(review("before"), conn=conn).status == 200

    over = _tmpfs(mounts, folder, "ro,size=1m")  # the same path, now read-only and empty
    for n in range(3):
        answer = server.post(review(f"ro-{n}"), conn=conn)
        assert answer.status == 500, answer
    assert all("Read-only file system" in e["error"] for e in _error_events(server))
    _run("umount", str(over))
    mounts.remove(over)
    assert server.post(review("back"), conn=conn).status == 200
    assert [r["request"]["uid"] for r in server.records()] == ["before", "back"]

    _mount("--bind", str(folder), str(folder))
    mounts.append(folder)
    _mount("-o", "remount,bind,ro", str(folder))
    statuses = [
        (n, server.post(review(f"bind-{n}", padding="p" * 100_000), conn=conn).status)
        for n in range(20)
    ]
    written = [f"bind-{n}" for n, status in statuses if status == 200]
    failed = [f"bind-{n}" for n, status in statuses if status == 500]
    assert len(written) + len(failed) == 20
    assert written and len(failed) >= 5, statuses  # 1 MiB holds about 10 of these
    _run("umount", str(folder))
    mounts.remove(folder)
    for n in range(3):
        assert server.post(review(f"rw-{n}", padding="p" * 100_000), conn=conn).status == 200
    conn.close()
    failures = len(_error_events(server))
    assert failures == 3 + len(failed)
    assert server.metrics()["kube_audit_rest_write_failures_total"] == failures
    assert server.stop() == 0
    check = check_log(log_files(server))
    check.assert_exactly_once(["before", "back", *written, *(f"rw-{n}" for n in range(3))])
    assert not {*failed, "ro-0", "ro-1", "ro-2"} & set(check.uids)
    assert len(log_files(server)) >= 2, "the rotation did not happen once writable"


@pytest.mark.timeout(60)
def test_a_read_only_log_folder_at_start_is_one_line_and_exit_2(
    pair: Pair, tmp_path: Path, mounts: list[Path]
) -> None:
    folder = _tmpfs(mounts, tmp_path / "ro", "ro,size=1m")
    argv = [
        CLI,
        f"--server-port={free_port()}",
        f"--metrics-port={free_port()}",
        f"--cert-filename={pair.cert_path}",
        f"--cert-key-filename={pair.key_path}",
        f"--logger-filename={folder / 'audit.log'}",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"kube-audit-rest: error: cannot open log file {folder / 'audit.log'}: "
        "Read-only file system"
    ]


# --------------------------------------------------------------------------- no root needed


def _load(server: Server, name: str, stop: threading.Event, acked: list[str]) -> None:
    conn = server.connection()
    n = 0
    while not stop.is_set():
        uid = f"{name}-{n}"
        n += 1
        answer = server.post(review(uid, padding="p" * 500), conn=conn)
        assert answer.status == 200, answer
        acked.append(uid)
    conn.close()


def _with_load(server: Server, action: object, prefix: str, threads: int = 4) -> list[str]:
    stop = threading.Event()
    acked: list[str] = []
    workers = [
        threading.Thread(target=_load, args=(server, f"{prefix}{t}", stop, acked))
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    try:
        assert callable(action)
        action()
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    return acked


@pytest.mark.timeout(120)
def test_the_active_file_moved_or_deleted_under_load_is_recreated(
    start: StartServer, tmp_path: Path
) -> None:
    """Like logrotate's default ``create`` mode (rename, then a new empty file),
    an operator's ``mv`` without a new file, and ``rm``: the server follows the
    path, every acknowledged record is in the moved or the new file exactly
    once, and (except for records in a file the operator deleted) none is lost.
    """
    server = start("--workers=2")
    log = server.log_path
    moved: list[Path] = []

    def rotate_externally() -> None:
        for n in range(6):
            threading.Event().wait(0.5)
            target = log.with_name(f"rotated.{n}")
            os.rename(log, target)
            moved.append(target)
            if n % 2 == 0:  # logrotate "create": a new empty file at once
                log.touch(mode=0o600)

    acked = _with_load(server, rotate_externally, "moved")
    check = check_log([*moved, log])
    check.assert_exactly_once(acked)
    assert all(path.stat().st_size > 0 for path in moved), "a moved file got no records"

    def delete() -> None:
        threading.Event().wait(0.5)
        log.unlink()

    before_delete = set(check.uids)
    acked_after = _with_load(server, delete, "deleted")
    assert log.exists(), "the deleted file was not recreated"
    survivors = check_log([log])
    assert not survivors.bad_lines
    # Records written before the rm went with the deleted file; those after are here.
    assert set(acked_after) - set(survivors.uids), "the load never wrote into the deleted file"
    assert survivors.uids and not before_delete & set(survivors.uids)
    assert server.stop() == 0
    assert "audit log file disappeared; recreating it" in server.stderr()


@pytest.mark.timeout(60)
def test_copytruncate_rotation_keeps_records_whole_and_appends_at_the_new_end(
    start: StartServer,
) -> None:
    """logrotate ``copytruncate``: copy the file, then truncate it to zero.

    The server appends with ``O_APPEND``, so after the truncation the next
    record lands at offset 0, with no hole of NUL bytes in front of it and no
    fragment. (Records written between the copy and the truncation are lost:
    that is copytruncate's own documented race, not the server's.)
    """
    server = start("--workers=2")
    log = server.log_path
    for n in range(5):
        assert server.post(review(f"old-{n}")).status == 200
    copy = log.with_name("audit.log.1")
    shutil.copyfile(log, copy)
    with open(log, "r+b") as handle:
        handle.truncate(0)
    for n in range(5):
        assert server.post(review(f"new-{n}")).status == 200
    data = log.read_bytes()
    assert b"\0" not in data and data.startswith(b'{"kind":"AdmissionReview"')
    check_log([copy]).assert_exactly_once([f"old-{n}" for n in range(5)])
    check_log([log]).assert_exactly_once([f"new-{n}" for n in range(5)])
    assert check_log([log]).lines == 5

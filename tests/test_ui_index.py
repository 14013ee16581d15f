"""The index follows the log as it grows and rotates: every record once, across kills.

The indexer runs as users run it (``kube-audit-rest ui --index-only``, a
subprocess) on real files; the tests read the SQLite index it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from tests.ui_support import line, lines, run_indexer, stop, ui_command, wait_for


def _uids(index: Path) -> list[str]:
    path = index / "index.sqlite3"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        try:
            rows = conn.execute("SELECT raw FROM kar_records ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # not created yet
            return []
    return [json.loads(raw)["request"]["uid"] for (raw,) in rows]


def _expected(count: int) -> list[str]:
    return [f"uid-{i}" for i in range(count)]


def _rotate(log: Path, when: str) -> Path:
    """What the server does: rename the active file to a backup name; a new one follows."""
    backup = log.with_name(f"kube-audit-rest-{when}.000.log")
    os.rename(log, backup)
    return backup


def test_growth_rotation_and_kills_index_every_record_once(tmp_path: Path) -> None:
    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    argv = ui_command(log, index, "--batch-size", "50", "--poll", "0.05")
    log.write_bytes(lines(0, 20000))
    indexer = run_indexer(argv)
    try:
        # Kill it mid-file, without warning: the last batch may be half written.
        wait_for(lambda: len(_uids(index)) >= 500, every=0.005)
        indexer.send_signal(signal.SIGKILL)
        indexer.wait(timeout=10)
        partial = _uids(index)
        assert 0 < len(partial) < 20000, "the kill should land mid-file"
        assert partial == _expected(len(partial))

        # While it is down: the file grows, rotates, and the new file grows too.
        with log.open("ab") as handle:
            handle.write(lines(20000, 1000))
        _rotate(log, "2026-11-23T10-00-00")
        log.write_bytes(lines(21000, 1000))

        indexer = run_indexer(argv)
        wait_for(lambda: len(_uids(index)) >= 22000)
        # Running: grow with a torn last line, which waits for its newline.
        torn = lines(22000, 1)
        with log.open("ab") as handle:
            handle.write(lines(22000, 0) + torn[:40])
        time.sleep(0.5)
        assert len(_uids(index)) == 22000
        with log.open("ab") as handle:
            handle.write(torn[40:])
        wait_for(lambda: len(_uids(index)) == 22001)

        # Two rotations between polls, then a kill mid-way through the new files.
        stop(indexer)
        _rotate(log, "2026-11-23T11-00-00")
        log.write_bytes(lines(22001, 3000))
        _rotate(log, "2026-11-23T12-00-00")
        log.write_bytes(lines(25001, 3000))
        indexer = run_indexer(argv)
        wait_for(lambda: len(_uids(index)) >= 23000, every=0.005)
        indexer.send_signal(signal.SIGKILL)
        indexer.wait(timeout=10)
        indexer = run_indexer(argv)
        wait_for(lambda: len(_uids(index)) >= 28001)
        time.sleep(0.5)  # nothing more may come
        assert _uids(index) == _expected(28001)
    finally:
        stop(indexer)
    # The log was only read.
    assert log.read_bytes() == lines(25001, 3000)


def test_restart_of_a_complete_index_adds_nothing(tmp_path: Path) -> None:
    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    log.write_bytes(lines(0, 300))
    argv = ui_command(log, index, "--poll", "0.05")
    for _ in range(3):
        indexer = run_indexer(argv)
        try:
            wait_for(lambda: len(_uids(index)) >= 300)
            time.sleep(0.3)
        finally:
            stop(indexer)
        assert _uids(index) == _expected(300)


def test_a_file_truncated_in_place_is_read_again_from_its_start(tmp_path: Path) -> None:
    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    log.write_bytes(lines(0, 100))
    indexer = run_indexer(ui_command(log, index, "--poll", "0.05"))
    try:
        wait_for(lambda: len(_uids(index)) == 100)
        # copytruncate: the same inode, emptied, then new records.
        with log.open("r+b") as handle:
            handle.truncate(0)
        with log.open("ab") as handle:
            handle.write(lines(100, 10))
        wait_for(lambda: len(_uids(index)) == 110)
    finally:
        stop(indexer)
    assert _uids(index) == _expected(110)


def test_retention_keeps_only_recent_records_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    now = time.time()
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600))
    old = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3 * 86400))
    log.write_bytes(
        line("uid-old", stamp=old)
        + b"not json at all\n"
        + line("uid-0", stamp=recent)
        + b'{"cut short\n'
        + line("uid-1", stamp=recent)
    )
    errors = tmp_path / "stderr"
    indexer = run_indexer(ui_command(log, index, "--retention", "2d", "--poll", "0.05"), errors)
    try:
        wait_for(lambda: len(_uids(index)) == 2)
        time.sleep(0.3)
    finally:
        stop(indexer)
    assert _uids(index) == ["uid-0", "uid-1"]
    assert "skipped a line that is not a record" in errors.read_text()


def test_retention_also_deletes_records_indexed_before(tmp_path: Path) -> None:
    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    recent = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    log.write_bytes(lines(0, 50) + line("uid-new", stamp=recent))  # lines(): November 2026
    indexer = run_indexer(ui_command(log, index, "--poll", "0.05"))
    try:
        wait_for(lambda: len(_uids(index)) == 51)
    finally:
        stop(indexer)
    indexer = run_indexer(ui_command(log, index, "--retention", "1h", "--poll", "0.05"))
    try:
        wait_for(lambda: _uids(index) == ["uid-new"])
    finally:
        stop(indexer)


def test_the_indexer_child_ends_when_the_ui_is_killed(tmp_path: Path) -> None:
    from tests.ui_support import running_ui

    log, index = tmp_path / "kube-audit-rest.log", tmp_path / "index"
    log.write_bytes(lines(0, 10))
    with running_ui(ui_command(log, index)) as ui:
        wait_for(lambda: len(_uids(index)) == 10)
        children = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(p) == ui.process.pid and b"--index-only" in _cmd(p)
        ]
        assert len(children) == 1
        ui.process.send_signal(signal.SIGKILL)
        ui.process.wait(timeout=10)
        wait_for(lambda: not Path(f"/proc/{children[0]}").exists() or _zombie(children[0]), 15)


def _parent(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _cmd(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True

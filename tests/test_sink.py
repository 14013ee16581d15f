"""Tests for kube_audit_rest.sink: the shared, size-rotated audit file and stdout."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from kube_audit_rest.rotation import LogName, list_backups, parse_backup_time
from kube_audit_rest.sink import FileSink, SinkError, StdoutSink, WriteResult

BACKUP_NAME = re.compile(r"audit-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}\.log", re.ASCII)


def _record(tag: str, size: int) -> bytes:
    """A JSON line of exactly *size* bytes (newline included)."""
    head = '{"t":"' + tag + '","p":"'
    pad = size - len(head) - 3
    assert pad >= 0, f"record {tag!r} cannot be {size} bytes"
    line = (head + "x" * pad + '"}\n').encode()
    assert len(line) == size
    return line


def _lines(path: Path | str) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path} does not end on a whole line"
    return data.splitlines(keepends=True)


def _backups_oldest_first(log: Path) -> list[Path]:
    return [Path(path) for _, path in reversed(list_backups(LogName.of(str(log))))]


def _all_lines_in_order(log: Path) -> list[bytes]:
    lines: list[bytes] = []
    for backup in _backups_oldest_first(log):
        lines += _lines(backup)
    if log.exists():
        lines += _lines(log)
    return lines


def _sink(tmp_path: Path, max_bytes: int = 1 << 20, max_backups: int = 0) -> FileSink:
    return FileSink(str(tmp_path / "audit.log"), max_bytes, max_backups, str(tmp_path / "lock"))


def _run_children(
    count: int, target: Callable[[int], None], while_running: Callable[[], None] | None = None
) -> None:
    """Fork *count* children running target(index) at the same moment; all must succeed.

    *while_running* runs in the parent once the children are released (no thread is
    ever alive across the fork).
    """
    gate_read, gate_write = os.pipe()
    pids = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(gate_write)
                os.read(gate_read, 1)  # returns b"" once the parent closes the gate
                target(index)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    os.close(gate_read)
    os.close(gate_write)
    try:
        if while_running is not None:
            while_running()
    finally:
        failures = []
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failures.append((pid, os.waitstatus_to_exitcode(status)))
    assert failures == [], f"child processes failed: {failures}"


# --------------------------------------------------------------------------- basic writing


def test_writes_whole_lines(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    records = [_record(f"r{i}", 40 + i) for i in range(5)]
    results = [sink.write(record) for record in records]
    sink.close()
    assert results == [WriteResult(rotated=False)] * 5
    assert (tmp_path / "audit.log").read_bytes() == b"".join(records)
    assert sink.path == str(tmp_path / "audit.log")


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b'{"old":1}\n')
    sink = _sink(tmp_path)
    sink.write(b'{"new":2}\n')
    sink.close()
    assert log.read_bytes() == b'{"old":1}\n{"new":2}\n'


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sink = FileSink("audit.log", 1000, 0, "lock")
    assert sink.path == str(tmp_path / "audit.log")
    monkeypatch.chdir("/")
    sink.write(b"{}\n")
    sink.close()
    assert (tmp_path / "audit.log").read_bytes() == b"{}\n"


def test_creates_file_with_mode_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        sink = _sink(tmp_path)
        sink.write(b"{}\n")
        sink.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "lock").stat().st_mode) == 0o600


def test_close_then_write_reopens(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    sink.write(b"1\n")
    sink.close()
    sink.close()  # idempotent
    sink.write(b"2\n")
    sink.close()
    assert (tmp_path / "audit.log").read_bytes() == b"1\n2\n"


def test_two_sinks_in_one_process_share_the_file(tmp_path: Path) -> None:
    first = _sink(tmp_path, max_bytes=40)
    second = _sink(tmp_path, max_bytes=40)
    first.write(_record("a", 20))
    assert second.write(_record("b", 21)).rotated  # 41 > 40
    first.write(_record("c", 19))  # must follow the rotation, not write to the backup
    first.close()
    second.close()
    assert _lines(tmp_path / "audit.log") == [_record("b", 21), _record("c", 19)]
    assert _all_lines_in_order(tmp_path / "audit.log") == [
        _record("a", 20),
        _record("b", 21),
        _record("c", 19),
    ]


def test_threads_share_one_sink(tmp_path: Path) -> None:
    sink = _sink(tmp_path, max_bytes=4096)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for i in range(300):
                sink.write(_record(f"{index}-{i}", 30 + (i * 7) % 200))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sink.close()
    assert errors == []
    tags = [json.loads(line)["t"] for line in _all_lines_in_order(tmp_path / "audit.log")]
    assert sorted(tags) == sorted(f"{index}-{i}" for index in range(4) for i in range(300))


# --------------------------------------------------------------------------- rotation


def test_rotates_when_the_record_would_exceed_max_bytes(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=100)
    records = [_record(f"r{i}", 25) for i in range(6)]
    before = time.time()
    results = [sink.write(record).rotated for record in records]
    after = time.time()
    sink.close()
    # 4 x 25 == 100 still fits (lumberjack rotates only when size + len > max).
    assert results == [False, False, False, False, True, False]
    backups = _backups_oldest_first(log)
    assert len(backups) == 1
    assert BACKUP_NAME.fullmatch(backups[0].name)
    stamp = parse_backup_time(backups[0].name, LogName.of(str(log)))
    assert stamp is not None
    assert before - 1 <= stamp.timestamp() <= after + 1
    assert backups[0].read_bytes() == b"".join(records[:4])
    assert log.read_bytes() == b"".join(records[4:])


def test_rotation_splits_at_record_boundaries_and_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=300)
    rng = random.Random(7)  # noqa: S311 - reproducible test data
    records = [_record(f"r{i}", rng.randint(20, 120)) for i in range(200)]
    rotations = sum(sink.write(record).rotated for record in records)
    sink.close()
    backups = _backups_oldest_first(log)
    assert rotations == len(backups) > 20
    for path in [*backups, log]:
        assert BACKUP_NAME.fullmatch(path.name) or path == log
        assert 0 < path.stat().st_size <= 300
        for line in _lines(path):
            json.loads(line)
    assert _all_lines_in_order(log) == records
    # Each backup was rotated because the next record did not fit.
    for index, backup in enumerate(backups):
        following = backups[index + 1] if index + 1 < len(backups) else log
        assert backup.stat().st_size + len(_lines(following)[0]) > 300


def test_rotation_keeps_the_file_mode(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=30)
    sink.write(_record("a", 20))
    os.chmod(log, 0o640)
    assert sink.write(_record("b", 20)).rotated
    sink.close()
    assert stat.S_IMODE(log.stat().st_mode) == 0o640


def test_max_backups_prunes_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=50, max_backups=2)
    records = [_record(f"r{i}", 50) for i in range(8)]
    for record in records:
        sink.write(record)
    sink.close()
    backups = _backups_oldest_first(log)
    assert [backup.read_bytes() for backup in backups] == records[5:7]
    assert log.read_bytes() == records[7]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["audit.log", "lock", *(b.name for b in backups)]
    )


def test_max_backups_zero_keeps_all(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=50, max_backups=0)
    records = [_record(f"r{i}", 50) for i in range(12)]
    for record in records:
        sink.write(record)
    sink.close()
    assert len(_backups_oldest_first(log)) == 11
    assert _all_lines_in_order(log) == records


def test_pruning_leaves_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"keep")
    (tmp_path / "other-2006-01-02T15-04-05.000.log").write_bytes(b"keep")
    sink = _sink(tmp_path, max_bytes=50, max_backups=1)
    for i in range(4):
        sink.write(_record(f"r{i}", 50))
    sink.close()
    assert (tmp_path / "notes.txt").read_bytes() == b"keep"
    assert (tmp_path / "other-2006-01-02T15-04-05.000.log").read_bytes() == b"keep"
    assert len(_backups_oldest_first(tmp_path / "audit.log")) == 1


def test_oversized_record_is_written_alone_in_a_fresh_file(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=100)
    small, big, after = _record("small", 30), _record("big", 500), _record("after", 30)
    assert not sink.write(small).rotated
    assert sink.write(big).rotated
    assert log.read_bytes() == big
    assert sink.write(after).rotated
    sink.close()
    assert [b.read_bytes() for b in _backups_oldest_first(log)] == [small, big]
    assert log.read_bytes() == after


def test_oversized_record_into_an_empty_file_does_not_rotate(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=100)
    big = _record("big", 1000)
    assert not sink.write(big).rotated
    sink.close()
    assert log.read_bytes() == big
    assert _backups_oldest_first(log) == []


# --------------------------------------------------------------------------- tail repair


def test_partial_tail_is_removed_before_the_next_record(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path)
    first, second = _record("first", 40), _record("second", 40)
    sink.write(first)
    with open(log, "ab") as handle:
        handle.write(b'{"t":"torn","p":"xx')
    sink.write(second)
    sink.close()
    assert log.read_bytes() == first + second
    assert all(json.loads(line) for line in _lines(log))


def test_file_holding_only_a_fragment_is_emptied(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b'{"t":"torn"')
    sink = _sink(tmp_path)
    sink.write(b'{"ok":1}\n')
    sink.close()
    assert log.read_bytes() == b'{"ok":1}\n'


def test_fragment_longer_than_one_read_chunk(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    head = b"".join(_record(f"h{i}", 100) for i in range(3))
    log.write_bytes(head + b'{"t":"' + b"y" * 200_000)
    sink = _sink(tmp_path)
    sink.write(b'{"ok":1}\n')
    sink.close()
    assert log.read_bytes() == head + b'{"ok":1}\n'


def test_huge_fragment_without_any_newline(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"z" * 200_000)
    sink = _sink(tmp_path)
    sink.write(b'{"ok":1}\n')
    sink.close()
    assert log.read_bytes() == b'{"ok":1}\n'


def test_tail_repair_happens_before_the_rotation_decision(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=100)
    first = _record("first", 40)
    sink.write(first)
    with open(log, "ab") as handle:
        handle.write(b"x" * 50)  # 90 bytes now, but only 40 of them are records
    assert not sink.write(_record("second", 40)).rotated
    sink.close()
    assert log.read_bytes() == first + _record("second", 40)


def test_whole_existing_lines_are_kept(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b'{"a":1}\n{"b":2}\n')
    sink = _sink(tmp_path)
    sink.write(b'{"c":3}\n')
    with open(log, "ab") as handle:  # another writer appends a whole line
        handle.write(b'{"d":4}\n')
    sink.write(b'{"e":5}\n')
    sink.close()
    assert log.read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n{"d":4}\n{"e":5}\n'


# --------------------------------------------------------------------------- external changes


def test_deleted_file_is_recreated(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path)
    sink.write(b'{"a":1}\n')
    log.unlink()
    sink.write(b'{"b":2}\n')
    sink.close()
    assert log.read_bytes() == b'{"b":2}\n'
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_renamed_file_is_recreated(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    moved = tmp_path / "audit.log.1"
    sink = _sink(tmp_path)
    sink.write(b'{"a":1}\n')
    log.rename(moved)
    sink.write(b'{"b":2}\n')
    sink.close()
    assert moved.read_bytes() == b'{"a":1}\n'
    assert log.read_bytes() == b'{"b":2}\n'


def test_file_replaced_by_another_is_followed(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path)
    sink.write(b'{"a":1}\n')
    replacement = tmp_path / "new"
    replacement.write_bytes(b'{"r":0}\n')
    replacement.replace(log)
    sink.write(b'{"b":2}\n')
    sink.close()
    assert log.read_bytes() == b'{"r":0}\n{"b":2}\n'


def test_truncated_file_is_appended_at_its_new_end(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path)
    sink.write(b'{"a":1}\n')
    os.truncate(log, 0)  # copytruncate-style logrotate
    sink.write(b'{"b":2}\n')
    sink.close()
    assert log.read_bytes() == b'{"b":2}\n'


def test_write_failure_when_path_becomes_a_directory(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path)
    sink.write(b'{"a":1}\n')
    log.unlink()
    log.mkdir()
    with pytest.raises(SinkError) as caught:
        sink.write(b'{"b":2}\n')
    assert str(log) in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(SinkError):  # stays failed while the fault lasts
        sink.write(b'{"b":2}\n')
    log.rmdir()
    assert sink.write(b'{"c":3}\n') == WriteResult(rotated=False)
    sink.close()
    assert log.read_bytes() == b'{"c":3}\n'


def test_write_failure_when_directory_is_removed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "audit.log"
    sink = FileSink(str(log), 1000, 0, str(tmp_path / "lock"))
    sink.write(b'{"a":1}\n')
    shutil.rmtree(logs)
    with pytest.raises(SinkError, match=r"cannot write .*audit\.log"):
        sink.write(b'{"b":2}\n')
    logs.mkdir()
    sink.write(b'{"c":3}\n')
    sink.close()
    assert log.read_bytes() == b'{"c":3}\n'


def test_rotation_failure_raises_and_recovers(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "audit.log"
    sink = FileSink(str(log), 30, 0, str(tmp_path / "lock"))
    sink.write(_record("a", 20))
    shutil.rmtree(logs)
    logs.mkdir()
    log.write_bytes(_record("x", 20))
    # The directory is back, so this rotates normally.
    assert sink.write(_record("b", 20)).rotated
    sink.close()
    assert _all_lines_in_order(log) == [_record("x", 20), _record("b", 20)]


def test_lock_failure_raises_sink_error(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "audit.log"), 1000, 0, str(tmp_path / "gone" / "lock"))
    with pytest.raises(SinkError):
        sink.write(b"{}\n")
    (tmp_path / "gone").mkdir()
    sink.write(b"{}\n")
    sink.close()
    assert (tmp_path / "audit.log").read_bytes() == b"{}\n"


def test_failed_append_leaves_no_fragment(tmp_path: Path) -> None:
    """A write cut short by the file size limit (as ENOSPC would) is rolled back.

    RLIMIT_FSIZE applies to root as well, so it runs in a child process.
    """
    log = tmp_path / "audit.log"
    whole = [_record(f"r{i}", 90) for i in range(10)]

    def child(_index: int) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        sink = _sink(tmp_path)
        for record in whole:
            sink.write(record)
        try:
            sink.write(_record("too-far", 200))  # 900 + 200 > 1000: a short write
        except SinkError as error:
            assert "File too large" in str(error), error
        else:
            raise AssertionError("the write past the size limit did not fail")
        assert log.read_bytes() == b"".join(whole)
        sink.write(_record("fits", 100))  # exactly up to the limit
        sink.close()

    _run_children(1, child)
    assert log.read_bytes() == b"".join(whole) + _record("fits", 100)


# --------------------------------------------------------------------------- processes


def _writer_records(writer: int, count: int, max_bytes: int) -> list[bytes]:
    rng = random.Random(writer)  # noqa: S311 - reproducible test data
    records = []
    for i in range(count):
        size = max_bytes + 50 if i % 500 == 250 else rng.choice([40, 80, 150, 400, 1200])
        records.append(_record(f"{writer}:{i:05d}", size + rng.randint(0, 30)))
    return records


def _check_shared_log(log: Path, writers: int, count: int, max_bytes: int) -> int:
    """Every record exactly once, whole lines, sizes within limit, order per writer."""
    files = [*_backups_oldest_first(log), log]
    seen: dict[str, int] = {}
    last_index = [-1] * writers
    for path in files:
        lines = _lines(path)
        assert path.stat().st_size <= max_bytes or len(lines) == 1, path
        for line in lines:
            tag = json.loads(line)["t"]
            seen[tag] = seen.get(tag, 0) + 1
            writer, index = (int(part) for part in tag.split(":"))
            assert index > last_index[writer], f"{tag} out of order in {path.name}"
            last_index[writer] = index
    expected = {f"{w}:{i:05d}" for w in range(writers) for i in range(count)}
    assert set(seen) == expected
    assert [tag for tag, times in seen.items() if times != 1] == []
    for path in files:
        assert path == log or BACKUP_NAME.fullmatch(path.name)
    return len(files) - 1


def test_processes_share_one_file_and_rotate_without_losing_records(tmp_path: Path) -> None:
    writers, count, max_bytes = 4, 2000, 16_384
    log = tmp_path / "audit.log"

    def child(writer: int) -> None:
        sink = _sink(tmp_path, max_bytes=max_bytes, max_backups=0)
        for record in _writer_records(writer, count, max_bytes):
            sink.write(record)
        sink.close()

    _run_children(writers, child)
    rotations = _check_shared_log(log, writers, count, max_bytes)
    assert rotations >= 24
    assert not (
        set(os.listdir(tmp_path))
        - {"audit.log", "lock"}
        - {p.name for p in _backups_oldest_first(log)}
    )


def test_sink_opened_before_fork_is_safe_in_children(tmp_path: Path) -> None:
    """gunicorn --preload: the sink (and its descriptors) exist before the fork."""
    writers, count, max_bytes = 4, 500, 8192
    log = tmp_path / "audit.log"
    sink = _sink(tmp_path, max_bytes=max_bytes, max_backups=0)
    sink.write(_record("parent:00000", 50))

    def child(writer: int) -> None:
        for record in _writer_records(writer + 1, count, max_bytes):
            sink.write(record)

    _run_children(writers, child)
    sink.write(_record("parent:00001", 50))
    sink.close()
    tags = [json.loads(line)["t"] for line in _all_lines_in_order(log)]
    assert tags[0] == "parent:00000"
    assert tags[-1] == "parent:00001"
    assert len(tags) == len(set(tags)) == writers * count + 2
    assert {f"{w + 1}:{i:05d}" for w in range(writers) for i in range(count)} <= set(tags)


# --------------------------------------------------------------------------- StdoutSink


def test_stdout_sink_writes_to_a_pipe(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        sink = StdoutSink(str(tmp_path / "lock"), fd=write_end)
        records = [b'{"a":1}\n', b'{"b":"\\u003c"}\n']
        assert [sink.write(record) for record in records] == [WriteResult(rotated=False)] * 2
        sink.close()
        assert os.read(read_end, 4096) == b"".join(records)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_stdout_sink_large_record_is_written_whole(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    big = _record("big", 1 << 20)  # far more than the pipe buffer: short writes
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        sink = StdoutSink(str(tmp_path / "lock"), fd=write_end)
        sink.write(big)
        sink.write(b"{}\n")
        sink.close()
    finally:
        os.close(write_end)
        reader.join()
        os.close(read_end)
    assert bytes(received) == big + b"{}\n"


def test_stdout_sink_broken_pipe_raises_sink_error(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    sink = StdoutSink(str(tmp_path / "lock"), fd=write_end)
    try:
        with pytest.raises(SinkError, match="standard output"):
            sink.write(b"{}\n")
    finally:
        sink.close()
        os.close(write_end)


def test_stdout_sink_lines_from_processes_never_interleave(tmp_path: Path) -> None:
    """Records far above PIPE_BUF from several processes still arrive as whole lines."""
    read_end, write_end = os.pipe()
    writers, count = 4, 150
    received = bytearray()
    sink = StdoutSink(str(tmp_path / "lock"), fd=write_end)

    def child(writer: int) -> None:
        os.close(read_end)
        rng = random.Random(writer)  # noqa: S311 - reproducible test data
        for i in range(count):
            sink.write(_record(f"{writer}:{i:05d}", rng.choice([50, 5000, 70_000])))

    def drain() -> None:
        os.close(write_end)  # EOF once every child has exited
        while chunk := os.read(read_end, 65536):
            received.extend(chunk)

    try:
        _run_children(writers, child, while_running=drain)
    finally:
        os.close(read_end)
    tags = [json.loads(line)["t"] for line in bytes(received).splitlines()]
    assert sorted(tags) == sorted(f"{w}:{i:05d}" for w in range(writers) for i in range(count))

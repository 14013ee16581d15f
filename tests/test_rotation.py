"""Unit tests for kube_audit_rest.rotation: lumberjack-compatible backup naming and pruning."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kube_audit_rest.rotation import (
    LogName,
    backup_path,
    format_backup_time,
    free_backup_path,
    list_backups,
    parse_backup_time,
    prune_backups,
)

# Go's reference time, 2006-01-02T15:04:05Z, in epoch milliseconds.
GO_REFERENCE_MS = 1_136_214_245_000


@pytest.fixture
def foreign_timezone() -> Iterator[None]:
    """Run with a local zone far from UTC, so a local-time bug would show."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _touch(path: Path, content: bytes = b"") -> Path:
    path.write_bytes(content)
    return path


# --------------------------------------------------------------------------- LogName.of


@pytest.mark.parametrize(
    ("path", "directory", "prefix", "ext"),
    [
        ("/var/log/audit.log", "/var/log", "audit", ".log"),
        ("/var/log/a.b.log", "/var/log", "a.b", ".log"),
        ("/var/log/noext", "/var/log", "noext", ""),
        ("/var/log/.hidden", "/var/log", "", ".hidden"),
        ("/var/log/audit.", "/var/log", "audit", "."),
        ("/var/log/audit.log.gz", "/var/log", "audit.log", ".gz"),
        ("/var/log.d/audit", "/var/log.d", "audit", ""),
        ("/var/log/../log/./audit.json", "/var/log", "audit", ".json"),
        ("/audit.log", "/", "audit", ".log"),
    ],
)
def test_log_name_of(path: str, directory: str, prefix: str, ext: str) -> None:
    assert LogName.of(path) == LogName(directory=directory, prefix=prefix, ext=ext)


def test_log_name_of_relative_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert LogName.of("logs/audit.log") == LogName(
        directory=str(tmp_path / "logs"), prefix="audit", ext=".log"
    )
    assert LogName.of("audit.log").directory == str(tmp_path)


# --------------------------------------------------------------------------- format_backup_time


@pytest.mark.parametrize(
    ("epoch_ms", "expected"),
    [
        (0, "1970-01-01T00-00-00.000"),
        (1, "1970-01-01T00-00-00.001"),
        (999, "1970-01-01T00-00-00.999"),
        (1000, "1970-01-01T00-00-01.000"),
        (GO_REFERENCE_MS, "2006-01-02T15-04-05.000"),
        (GO_REFERENCE_MS + 7, "2006-01-02T15-04-05.007"),
        (GO_REFERENCE_MS + 120, "2006-01-02T15-04-05.120"),
        (1_700_000_000_123, "2023-11-14T22-13-20.123"),
        (951_868_799_999, "2000-02-29T23-59-59.999"),
    ],
)
def test_format_backup_time(epoch_ms: int, expected: str) -> None:
    assert format_backup_time(epoch_ms) == expected


@pytest.mark.usefixtures("foreign_timezone")
def test_format_backup_time_is_utc() -> None:
    assert format_backup_time(GO_REFERENCE_MS) == "2006-01-02T15-04-05.000"
    assert format_backup_time(0) == "1970-01-01T00-00-00.000"


# --------------------------------------------------------------------------- backup_path


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/log/audit.log", "/var/log/audit-2006-01-02T15-04-05.000.log"),
        ("/var/log/a.b.log", "/var/log/a.b-2006-01-02T15-04-05.000.log"),
        ("/var/log/noext", "/var/log/noext-2006-01-02T15-04-05.000"),
        ("/var/log/.hidden", "/var/log/-2006-01-02T15-04-05.000.hidden"),
    ],
)
def test_backup_path(path: str, expected: str) -> None:
    assert backup_path(LogName.of(path), GO_REFERENCE_MS) == expected


# --------------------------------------------------------------------------- free_backup_path


def test_free_backup_path_when_nothing_exists(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    assert free_backup_path(name, GO_REFERENCE_MS) == backup_path(name, GO_REFERENCE_MS)
    assert list(tmp_path.iterdir()) == []


def test_free_backup_path_adds_a_millisecond_per_collision(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    _touch(Path(backup_path(name, GO_REFERENCE_MS)))
    assert free_backup_path(name, GO_REFERENCE_MS) == str(
        tmp_path / "audit-2006-01-02T15-04-05.001.log"
    )
    _touch(Path(backup_path(name, GO_REFERENCE_MS + 1)))
    assert free_backup_path(name, GO_REFERENCE_MS) == str(
        tmp_path / "audit-2006-01-02T15-04-05.002.log"
    )


def test_free_backup_path_carries_into_the_next_second(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    _touch(Path(backup_path(name, GO_REFERENCE_MS + 999)))
    assert free_backup_path(name, GO_REFERENCE_MS + 999) == str(
        tmp_path / "audit-2006-01-02T15-04-06.000.log"
    )


def test_free_backup_path_avoids_directories_and_dangling_symlinks(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    os.mkdir(backup_path(name, GO_REFERENCE_MS))
    os.symlink(tmp_path / "missing", backup_path(name, GO_REFERENCE_MS + 1))
    assert free_backup_path(name, GO_REFERENCE_MS) == backup_path(name, GO_REFERENCE_MS + 2)


def test_free_backup_path_sorts_after_the_newest_backup(tmp_path: Path) -> None:
    # A burst of rotations moved names ahead of the clock (T+1, T+2), and pruning
    # freed T. Reusing T would make the newest backup look like the oldest.
    name = LogName.of(str(tmp_path / "audit.log"))
    for offset in (1, 2):
        _touch(Path(backup_path(name, GO_REFERENCE_MS + offset)))
    chosen = free_backup_path(name, GO_REFERENCE_MS)
    assert chosen == backup_path(name, GO_REFERENCE_MS + 3)
    _touch(Path(chosen))
    assert list_backups(name)[0][1] == chosen
    assert prune_backups(name, 2) == [backup_path(name, GO_REFERENCE_MS + 1)]
    assert os.path.exists(chosen)


def test_free_backup_path_uses_the_clock_when_it_is_ahead(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    _touch(Path(backup_path(name, GO_REFERENCE_MS)))
    later = GO_REFERENCE_MS + 86_400_000
    assert free_backup_path(name, later) == backup_path(name, later)


def test_free_backup_path_ignores_other_logs_names(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    other = LogName.of(str(tmp_path / "other.log"))
    _touch(Path(backup_path(other, GO_REFERENCE_MS)))
    assert free_backup_path(name, GO_REFERENCE_MS) == backup_path(name, GO_REFERENCE_MS)


# --------------------------------------------------------------------------- parse_backup_time


@pytest.mark.parametrize(
    "epoch_ms",
    [0, 1, 999, GO_REFERENCE_MS, GO_REFERENCE_MS + 7, 1_700_000_000_123, 4_102_444_799_999],
)
@pytest.mark.parametrize("path", ["/x/audit.log", "/x/a.b.log", "/x/noext", "/x/.hidden"])
def test_parse_backup_time_round_trip(epoch_ms: int, path: str) -> None:
    name = LogName.of(path)
    filename = os.path.basename(backup_path(name, epoch_ms))
    parsed = parse_backup_time(filename, name)
    assert parsed == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=epoch_ms)
    assert parsed is not None
    assert parsed.tzinfo is UTC
    assert round(parsed.timestamp() * 1000) == epoch_ms


@pytest.mark.usefixtures("foreign_timezone")
def test_parse_backup_time_is_utc() -> None:
    name = LogName.of("/x/audit.log")
    parsed = parse_backup_time("audit-2006-01-02T15-04-05.000.log", name)
    assert parsed is not None
    assert parsed.timestamp() == GO_REFERENCE_MS / 1000


@pytest.mark.parametrize(
    "filename",
    [
        "audit.log",
        "audit-.log",
        "audit-2006-01-02T15-04-05.000.txt",
        "audit-2006-01-02T15-04-05.000.log.gz",
        "audit-2006-01-02T15-04-05.000",
        "other-2006-01-02T15-04-05.000.log",
        "xaudit-2006-01-02T15-04-05.000.log",
        "audit_2006-01-02T15-04-05.000.log",
        "audit-2006-01-02T15-04-05.log",
        "audit-2006-01-02T15-04-05.00.log",
        "audit-2006-01-02T15-04-05.0000.log",
        "audit-2006-01-02T15:04:05.000.log",
        "audit-2006-01-02 15-04-05.000.log",
        "audit-06-01-02T15-04-05.000.log",
        "audit-2006-1-2T15-04-05.000.log",
        "audit-2006-13-02T15-04-05.000.log",
        "audit-2006-00-02T15-04-05.000.log",
        "audit-2006-02-30T15-04-05.000.log",
        "audit-2006-01-02T24-04-05.000.log",
        "audit-2006-01-02T15-60-05.000.log",
        "audit-2006-01-02T15-04-60.000.log",
        "audit-2006-01-02T15-04-61.000.log",
        "audit-2006-01-02T15-04-05.000-extra.log",
        "audit-x2006-01-02T15-04-05.000.log",
        # Non-ASCII digits: Go's time.Parse reads only 0-9, so these are not backups
        # (and must never be pruned as if they were).
        "audit-\uff12\uff10\uff10\uff16-01-02T15-04-05.000.log",
        "audit-2006-01-02T15-04-05.\u0660\u0660\u0667.log",
    ],
)
def test_parse_backup_time_rejects_foreign_files(filename: str) -> None:
    assert parse_backup_time(filename, LogName.of("/x/audit.log")) is None


def test_parse_backup_time_of_leap_day() -> None:
    parsed = parse_backup_time("audit-2000-02-29T23-59-59.999.log", LogName.of("/x/audit.log"))
    assert parsed == datetime(2000, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC)


def test_parse_backup_time_without_extension() -> None:
    name = LogName.of("/x/noext")
    assert parse_backup_time("noext-2006-01-02T15-04-05.000", name) is not None
    assert parse_backup_time("noext-2006-01-02T15-04-05.000.log", name) is None
    assert parse_backup_time("noext", name) is None


# --------------------------------------------------------------------------- list_backups


def test_list_backups_newest_first_ignoring_unrelated_files(tmp_path: Path) -> None:
    name = LogName.of(str(tmp_path / "audit.log"))
    times = [GO_REFERENCE_MS + offset for offset in (5, 0, 86_400_000, 1, 999)]
    for epoch_ms in times:
        _touch(Path(backup_path(name, epoch_ms)))
    _touch(tmp_path / "audit.log", b"active\n")
    _touch(tmp_path / "other-2006-01-02T15-04-05.000.log")
    _touch(tmp_path / "audit-2006-01-02T15-04-05.000.txt")
    _touch(tmp_path / "audit-not-a-time.log")
    _touch(tmp_path / "audit.lock")
    os.mkdir(tmp_path / "audit-2030-01-01T00-00-00.000.log")  # a directory is not a backup
    found = list_backups(name)
    assert [path for _, path in found] == [
        backup_path(name, epoch_ms) for epoch_ms in sorted(times, reverse=True)
    ]
    assert [stamp for stamp, _ in found] == sorted((stamp for stamp, _ in found), reverse=True)
    for stamp, path in found:
        assert parse_backup_time(os.path.basename(path), name) == stamp


def test_list_backups_empty_directory(tmp_path: Path) -> None:
    assert list_backups(LogName.of(str(tmp_path / "audit.log"))) == []


# --------------------------------------------------------------------------- prune_backups


def _make_backups(tmp_path: Path, count: int) -> tuple[LogName, list[str]]:
    """*count* backups one second apart; returned newest first."""
    name = LogName.of(str(tmp_path / "audit.log"))
    paths = []
    for index in range(count):
        path = backup_path(name, GO_REFERENCE_MS + index * 1000)
        _touch(Path(path), f"{index}\n".encode())
        paths.append(path)
    _touch(tmp_path / "audit.log", b"active\n")
    _touch(tmp_path / "unrelated.txt", b"keep\n")
    return name, paths[::-1]


@pytest.mark.parametrize("keep", [1, 2, 4])
def test_prune_keeps_the_newest(tmp_path: Path, keep: int) -> None:
    name, newest_first = _make_backups(tmp_path, 5)
    removed = prune_backups(name, keep)
    assert sorted(removed) == sorted(newest_first[keep:])
    assert [path for _, path in list_backups(name)] == newest_first[:keep]
    for path in removed:
        assert not os.path.lexists(path)
    assert (tmp_path / "audit.log").read_bytes() == b"active\n"
    assert (tmp_path / "unrelated.txt").read_bytes() == b"keep\n"


@pytest.mark.parametrize("keep", [0, -1])
def test_prune_zero_keeps_all(tmp_path: Path, keep: int) -> None:
    name, newest_first = _make_backups(tmp_path, 5)
    assert prune_backups(name, keep) == []
    assert [path for _, path in list_backups(name)] == newest_first


@pytest.mark.parametrize("keep", [5, 6, 100])
def test_prune_with_fewer_backups_than_keep(tmp_path: Path, keep: int) -> None:
    name, newest_first = _make_backups(tmp_path, 5)
    assert prune_backups(name, keep) == []
    assert [path for _, path in list_backups(name)] == newest_first


def test_prune_leaves_other_logs_backups_alone(tmp_path: Path) -> None:
    name, _ = _make_backups(tmp_path, 3)
    other = LogName.of(str(tmp_path / "other.log"))
    other_backups = [backup_path(other, GO_REFERENCE_MS + i) for i in range(3)]
    for path in other_backups:
        _touch(Path(path))
    prune_backups(name, 1)
    assert len(list_backups(name)) == 1
    assert all(os.path.exists(path) for path in other_backups)


def test_prune_never_removes_a_file_with_non_ascii_digits(tmp_path: Path) -> None:
    name, _ = _make_backups(tmp_path, 2)
    lookalike = _touch(tmp_path / "audit-\uff12\uff10\uff10\uff16-01-02T15-04-05.000.log", b"x\n")
    prune_backups(name, 1)
    assert lookalike.read_bytes() == b"x\n"

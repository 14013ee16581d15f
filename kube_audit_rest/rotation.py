"""Backup file naming and pruning, as lumberjack (the Go original's rotator) does it.

A file ``/var/log/audit.log`` rotates to ``/var/log/audit-2006-01-02T15-04-05.000.log``
(UTC, millisecond precision). The newest ``max_backups`` backups are kept, judged
by the time in their names; ``0`` keeps them all.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# re.ASCII: Go's time.Parse reads only 0-9; without it \d (and strptime) would
# take other scripts' digits, and pruning could delete a stranger's file.
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}", re.ASCII)
_STAMP_FORMAT = "%Y-%m-%dT%H-%M-%S"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class LogName:
    """A log path split the way Go's ``filepath.Ext`` splits it."""

    directory: str
    prefix: str
    ext: str

    @classmethod
    def of(cls, path: str) -> LogName:
        directory, base = os.path.split(os.path.abspath(path))
        dot = base.rfind(".")
        # Go's filepath.Ext: from the last dot on, so ".log" and "a.b.log" -> ".log".
        ext = base[dot:] if dot >= 0 else ""
        return cls(directory=directory, prefix=base[: len(base) - len(ext)], ext=ext)


def format_backup_time(epoch_ms: int) -> str:
    """lumberjack's ``2006-01-02T15-04-05.000`` layout, in UTC."""
    seconds, millis = divmod(epoch_ms, 1000)
    return time.strftime(_STAMP_FORMAT, time.gmtime(seconds)) + f".{millis:03d}"


def backup_path(name: LogName, epoch_ms: int) -> str:
    """Where the active file goes when it rotates at *epoch_ms*."""
    stamp = format_backup_time(epoch_ms)
    return os.path.join(name.directory, f"{name.prefix}-{stamp}{name.ext}")


def free_backup_path(name: LogName, epoch_ms: int) -> str:
    """A backup path that does not exist yet and sorts after every existing backup.

    Two rotations in one millisecond would give the same name and the rename
    would silently replace the first backup; lumberjack has that flaw. We move
    the stamp on by a millisecond instead, which keeps names sortable by time.
    The stamp also starts after the newest existing backup: after a burst of
    rotations has moved names ahead of the clock, a name freed by pruning would
    otherwise be reused, sort as the oldest, and be pruned at once.
    """
    backups = list_backups(name)
    if backups:
        newest_ms = (backups[0][0] - _EPOCH) // timedelta(milliseconds=1)
        epoch_ms = max(epoch_ms, newest_ms + 1)
    while True:
        candidate = backup_path(name, epoch_ms)
        if not os.path.lexists(candidate):
            return candidate
        epoch_ms += 1


def parse_backup_time(filename: str, name: LogName) -> datetime | None:
    """The rotation time in a backup's file name, or None if it is not a backup."""
    head = name.prefix + "-"
    if not filename.startswith(head) or not filename.endswith(name.ext):
        return None
    stamp = filename[len(head) : len(filename) - len(name.ext)]
    if not _STAMP.fullmatch(stamp):
        return None
    try:
        parsed = datetime.strptime(stamp[:-4], _STAMP_FORMAT)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC, microsecond=int(stamp[-3:]) * 1000)


def list_backups(name: LogName) -> list[tuple[datetime, str]]:
    """Backups of *name* in its folder, newest first, as (time, path)."""
    found: list[tuple[datetime, str]] = []
    with os.scandir(name.directory) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            stamp = parse_backup_time(entry.name, name)
            if stamp is not None:
                found.append((stamp, entry.path))
    found.sort(reverse=True)
    return found


def prune_backups(name: LogName, keep: int) -> list[str]:
    """Remove all but the *keep* newest backups (``keep == 0`` keeps all)."""
    if keep <= 0:
        return []
    removed: list[str] = []
    for _stamp, path in list_backups(name)[keep:]:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed

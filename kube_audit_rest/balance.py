"""How many connections each worker holds, shared, so that they take turns accepting.

All workers accept from one listening socket. Left alone, the worker that
wakes first takes every connection of a burst, and a client with a few
long-lived connections (the API server, wrk) can end up on one worker while
the others idle. Each worker publishes its count in a small memory-mapped
table in the runtime directory; a worker holding more than the least loaded
one lets a pending connection wait one short turn for the others.

The table has one slot (pid, connections) per live worker. A worker claims a
free slot when it starts, under an ``flock`` of the table file; the master
frees the slot of a worker that exited. A stale count only costs balance,
never a connection: a deferred connection is accepted on the next turn
whatever the others hold.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct

SLOTS = 256
_SLOT = struct.Struct("=qq")  # pid, connections
SIZE = SLOTS * _SLOT.size


def create_table(path: str) -> None:
    """Create the zeroed table; done once by the master before any worker starts."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, SIZE)
    finally:
        os.close(fd)


class _Table:
    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._lock_fd = os.dup(fd)
            self.map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)

    def slot(self, index: int) -> tuple[int, int]:
        pid, count = _SLOT.unpack_from(self.map, index * _SLOT.size)
        return pid, count

    def write(self, index: int, pid: int, count: int) -> None:
        _SLOT.pack_into(self.map, index * _SLOT.size, pid, count)

    @contextlib.contextmanager
    def locked(self):  # type: ignore[no-untyped-def]
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.map.close()
        os.close(self._lock_fd)


def release_slot(path: str, pid: int) -> None:
    """Free the slot of an exited worker (called by the master)."""
    with contextlib.suppress(OSError, ValueError):
        table = _Table(path)
        try:
            with table.locked():
                for index in range(SLOTS):
                    if table.slot(index)[0] == pid:
                        table.write(index, 0, 0)
        finally:
            table.close()


class ConnectionShare:
    """This worker's slot, and whether it is its turn to accept."""

    def __init__(self, path: str) -> None:
        self._table = _Table(path)
        self._pid = os.getpid()
        self._index = self._claim()
        self.count = 0

    def _claim(self) -> int:
        table = self._table
        with table.locked():
            for index in range(SLOTS):
                pid = table.slot(index)[0]
                if pid == 0 or not _alive(pid):
                    table.write(index, self._pid, 0)
                    return index
        return -1  # more workers than slots: this one simply does not take turns

    def opened(self) -> None:
        self.count += 1
        self._publish()

    def closed(self) -> None:
        self.count -= 1
        self._publish()

    def _publish(self) -> None:
        if self._index >= 0:
            self._table.write(self._index, self._pid, self.count)

    def holds_more_than_others(self) -> bool:
        """Whether some other live worker holds fewer connections than this one."""
        if self._index < 0:
            return False
        table = self._table
        mine = self.count
        for index in range(SLOTS):
            if index == self._index:
                continue
            pid, count = table.slot(index)
            if pid and count < mine:
                return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._table.write(self._index, 0, 0)
            self._table.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""Where audit records go: a size-rotated file shared by every worker, or stdout.

Every gunicorn worker process has its own ``FileSink`` writing to the same path.
One ``flock`` on a lock file beside the metrics state serialises the workers (a
``threading.Lock`` serialises the threads of one worker, because flock belongs to
the open file description, which threads share). Under that lock a writer:

1. checks that its descriptor still names the active file (another worker may
   have rotated it, an operator or logrotate may have moved or deleted it) and
   reopens the path if not;
2. removes a partial record that a killed writer left at the end of the file,
   so a torn line never survives and the next record starts on its own line;
3. rotates when this record would take the file past the size limit;
4. appends the record with ``write`` (looping on short writes), and on failure
   cuts the file back to where it was, so a failed record leaves no fragment.

``flock`` is released by the kernel when a process dies, so a worker killed while
holding it cannot wedge the others. The write call returning is what "written"
means: the record is in the page cache and survives the process, as with the Go
original (neither calls fsync per record).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import structlog

from kube_audit_rest.rotation import LogName, free_backup_path, prune_backups

_log = structlog.get_logger("kube_audit_rest.sink")
_TAIL_CHUNK = 64 * 1024


class SinkError(Exception):
    """A record could not be written; it must not be acknowledged."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one write did, for the metrics."""

    rotated: bool


class Sink(Protocol):
    """Something that durably accepts whole audit lines."""

    def write(self, record: bytes) -> WriteResult:
        """Write one newline-terminated record or raise SinkError."""
        ...

    def close(self) -> None:
        """Release descriptors; writing afterwards reopens them."""
        ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _ProcessLock:
    """A flock on *path*, opened once per process (fork-safe), plus a thread lock."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd = -1
        self._pid = -1
        self._mutex = threading.Lock()

    def __enter__(self) -> None:
        self._mutex.acquire()
        try:
            if self._pid != os.getpid():
                # A descriptor inherited across fork shares its lock with the
                # parent; each process needs its own open file description.
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._mutex.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._mutex.release()

    def close(self) -> None:
        with self._mutex:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd, self._pid = -1, -1


class FileSink:
    """Appends records to *path*, rotating by size the way lumberjack does."""

    def __init__(self, path: str, max_bytes: int, max_backups: int, lock_path: str) -> None:
        self._path = os.path.abspath(path)
        self._name = LogName.of(self._path)
        self._max_bytes = max_bytes
        self._max_backups = max_backups
        self._lock = _ProcessLock(lock_path)
        self._fd = -1
        self._pid = -1
        self._identity: tuple[int, int] = (-1, -1)
        self._known_size = -1

    @property
    def path(self) -> str:
        return self._path

    def write(self, record: bytes) -> WriteResult:
        try:
            with self._lock:
                return self._write_locked(record)
        except OSError as error:
            raise SinkError(f"cannot write {self._path}: {error.strerror or error}") from error

    def close(self) -> None:
        # Called when a worker exits, after its requests are done: no flock is
        # needed, and taking one could fail if the lock file is already gone.
        self._drop_fd()
        self._lock.close()

    def _write_locked(self, record: bytes) -> WriteResult:
        try:
            size = self._open_current()
            if size and size != self._known_size:
                size = self._repair_tail(size)
            rotated = False
            if size and size + len(record) > self._max_bytes:
                self._rotate()
                size, rotated = 0, True
            self._append(record, size)
        except OSError:
            # Whatever went wrong, start from the path again next time: the
            # descriptor may point at a file that is gone or read-only.
            self._drop_fd()
            raise
        self._known_size = size + len(record)
        return WriteResult(rotated=rotated)

    def _open_current(self) -> int:
        """Make self._fd the active file at self._path; return its size."""
        if self._fd >= 0 and self._pid == os.getpid():
            try:
                st = os.stat(self._path)
            except FileNotFoundError:
                _log.warning("audit log file disappeared; recreating it", path=self._path)
            else:
                if (st.st_dev, st.st_ino) == self._identity:
                    return st.st_size
            self._drop_fd()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self._path, flags, 0o600)
        self._pid = os.getpid()
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)
        self._known_size = -1
        return st.st_size

    def _repair_tail(self, size: int) -> int:
        """Cut a trailing partial record (no final newline) off; return the new size."""
        if os.pread(self._fd, 1, size - 1) == b"\n":
            return size
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            chunk = os.pread(self._fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        os.ftruncate(self._fd, keep)
        _log.warning(
            "removed a partial record left by an interrupted writer",
            path=self._path,
            removed_bytes=size - keep,
        )
        return keep

    def _rotate(self) -> None:
        mode = os.fstat(self._fd).st_mode & 0o777
        backup = free_backup_path(self._name, time.time_ns() // 1_000_000)
        os.rename(self._path, backup)
        self._drop_fd()
        self._open_current()
        os.fchmod(self._fd, mode)
        _log.info("rotated audit log", path=self._path, backup=backup)
        try:
            removed = prune_backups(self._name, self._max_backups)
        except OSError as error:
            _log.error("cannot prune old backups", path=self._path, error=str(error))
        else:
            if removed:
                _log.info("removed old backups", removed=removed)

    def _append(self, record: bytes, size_before: int) -> None:
        try:
            _write_all(self._fd, record)
        except OSError:
            # A short write followed by an error (typically ENOSPC) would leave
            # a fragment; cut it off so the file still ends on a whole record.
            # If the cut fails too, the next writer's tail repair removes it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size_before)
            raise

    def _drop_fd(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._pid = -1, -1
        self._identity = (-1, -1)
        self._known_size = -1


class StdoutSink:
    """Writes records to standard output, one whole line per write, across workers."""

    def __init__(self, lock_path: str, fd: int = 1) -> None:
        self._fd = fd
        self._lock = _ProcessLock(lock_path)

    def write(self, record: bytes) -> WriteResult:
        try:
            with self._lock:
                _write_all(self._fd, record)
        except OSError as error:
            raise SinkError(
                f"cannot write to standard output: {error.strerror or error}"
            ) from error
        return WriteResult(rotated=False)

    def close(self) -> None:
        self._lock.close()

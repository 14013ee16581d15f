"""Where the lines come from: the log and its backups, given files, stdin; and following.

The default input is the file the server writes (``--logger-filename``) with
its rotated backups, ``<name>-2006-01-02T15-04-05.000<ext>``, oldest first by
the time in their names, then the active file. ``follow`` keeps reading the
active file as it grows and across rotation: when the path names a new file,
the old one (now a backup) is read to its end, then any backups newer than it,
then the new file from its start.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

from kube_audit_rest.rotation import LogName, list_backups

CHUNK = 1 << 20
POLL_SECONDS = 0.2


class Line(NamedTuple):
    """One line of input (a tuple: millions are made per query)."""

    label: str  # the file name warnings show, or "<stdin>"
    number: int
    raw: bytes


# ``None`` in a stream of lines means "nothing new for now" (follow mode), so
# a caller can flush what it holds.
Idle = None


def default_inputs(active: str) -> list[str]:
    """Backups of *active*, oldest first, then *active* itself if it exists."""
    name = LogName.of(active)
    try:
        backups = [path for _stamp, path in reversed(list_backups(name))]
    except FileNotFoundError:
        backups = []
    if os.path.isfile(active):
        backups.append(os.path.abspath(active))
    return backups


def read_file(path: str, label: str | None = None) -> Iterator[Line]:
    """Every line of a file (or ``-``: stdin), the last one even without a newline."""
    shown = label or ("<stdin>" if path == "-" else path)
    if path == "-":
        for number, raw in enumerate(sys.stdin.buffer, 1):
            yield Line(shown, number, raw)
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            yield Line(shown, number, raw)


class _Tail:
    """An open file read in chunks, handing out complete lines."""

    def __init__(self, path: str, label: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        stat = os.fstat(self.fd)
        self.identity = (stat.st_dev, stat.st_ino)
        self.label = label
        self.number = 0
        self.position = 0
        self.pending = b""

    def lines(self) -> Iterator[Line]:
        """Complete lines available now (a partial last line waits for its newline)."""
        size = os.fstat(self.fd).st_size
        if size < self.position:  # truncated in place (copytruncate): start again
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.position, self.pending = 0, b""
        elif self.pending:
            # The server cuts off a torn last line before its next write; if the
            # bytes we hold are no longer there, read from where they started.
            start = self.position - len(self.pending)
            if os.pread(self.fd, len(self.pending), start) != self.pending:
                os.lseek(self.fd, start, os.SEEK_SET)
                self.position, self.pending = start, b""
        while True:
            chunk = os.read(self.fd, CHUNK)
            if not chunk:
                return
            self.position += len(chunk)
            parts = (self.pending + chunk).split(b"\n")
            self.pending = parts.pop()
            for part in parts:
                self.number += 1
                yield Line(self.label, self.number, part + b"\n")

    def finish(self) -> Iterator[Line]:
        """The rest of a file nobody writes to any more, partial last line included."""
        yield from self.lines()
        if self.pending:
            self.number += 1
            yield Line(self.label, self.number, self.pending)
            self.pending = b""
        os.close(self.fd)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def follow(active: str, poll: float = POLL_SECONDS) -> Iterator[Line | None]:
    """Lines of *active* as they are written, across rotations, until interrupted."""
    name = LogName.of(active)
    label = active
    tail: _Tail | None = None
    while tail is None:
        try:
            tail = _Tail(active, label)
        except FileNotFoundError:
            yield Idle
            time.sleep(poll)
    while True:
        yield from tail.lines()
        current = _identity(active)
        if current is not None and current != tail.identity:
            old_identity = tail.identity
            yield from tail.finish()
            yield from _newer_backups(name, old_identity)
            tail = None
            while tail is None:
                try:
                    tail = _Tail(active, label)
                except FileNotFoundError:
                    yield Idle
                    time.sleep(poll)
            continue
        yield Idle
        time.sleep(poll)


def _newer_backups(name: LogName, identity: tuple[int, int]) -> Iterator[Line]:
    """Backups rotated after the file *identity* (several rotations between two polls)."""
    backups = [path for _stamp, path in reversed(list_backups(name))]
    identities = [_identity(path) for path in backups]
    if identity not in identities:
        return
    for path in backups[identities.index(identity) + 1 :]:
        try:
            yield from read_file(path)
        except FileNotFoundError:  # pruned meanwhile
            continue

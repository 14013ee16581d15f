"""The indexer: follows the log files into the database, each record exactly once.

Each pass lists the inputs the query command reads (``query.sources.default_inputs``:
the rotated backups oldest first by the time in their names, then the active
file), so a rotated file is finished before the files after it. Per file
(identity: host, device, inode, and a hash of its first line) the database
holds the offset after the last indexed line; the records of a batch and the
new offset are committed in one transaction, so a crash or a kill at any
point leaves either both or neither: a restart goes on from the offset, with
no duplicates and no gaps.

A line is indexed when it is complete (ends with a newline); in a backup,
which nobody writes to any more, a last line without one is indexed if it is
a record. A line that is not a record is skipped (counted, logged once per
file). Files are opened read-only. The positions of files that are gone are
kept (one small row per rotated file): forgetting them could race a rotation
and index a file twice.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert, select, update

from kube_audit_rest.query.records import MalformedRecord, parse_line
from kube_audit_rest.query.sources import default_inputs
from kube_audit_rest.ui import db
from kube_audit_rest.ui.safety import redact_line

CHUNK = 1 << 20
HEAD_BYTES = 64 * 1024  # a first line longer than this is hashed on its first 64 KiB


@dataclass(slots=True)
class Stats:
    indexed: int = 0
    skipped: int = 0
    expired: int = 0
    files: int = 0


@dataclass(slots=True)
class _FileState:
    head: str
    offset: int
    done: bool
    known: bool


def _head(fd: int) -> str:
    """sha256 of the first line, or "" while the file has no complete first line."""
    data = os.pread(fd, HEAD_BYTES, 0)
    end = data.find(b"\n")
    if end < 0:
        return hashlib.sha256(data).hexdigest() if len(data) == HEAD_BYTES else ""
    return hashlib.sha256(data[: end + 1]).hexdigest()


@dataclass
class Indexer:
    engine: Engine
    active: str
    retention_ns: int | None = None
    batch_size: int = 2000
    host: str = field(default_factory=socket.gethostname)
    stats: Stats = field(default_factory=Stats)
    warn: Any = None  # callable(str) for warnings; stderr by default

    def _warn(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)
        else:
            sys.stderr.write(f"kube-audit-rest: warning: {message}\n")

    # --- one pass -------------------------------------------------------------

    def run_once(self) -> int:
        """Index everything the files hold now; the number of records added."""
        before = self.stats.indexed
        active = os.path.abspath(self.active)
        seen: set[tuple[int, int]] = set()
        for path in default_inputs(self.active):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # pruned or rotated meanwhile: next pass
                continue
            try:
                stat = os.fstat(fd)
                identity = (stat.st_dev, stat.st_ino)
                seen.add(identity)
                # A backup is never written again: finish it. The active path
                # may name a newer file by now, which is then read from its start.
                self._index_file(fd, path, identity, path != active)
            finally:
                os.close(fd)
        self.stats.files = len(seen)
        return self.stats.indexed - before

    def _state(self, identity: tuple[int, int], head: str) -> _FileState:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(db.files.c.head, db.files.c.offset, db.files.c.done).where(
                    db.files.c.host == self.host,
                    db.files.c.dev == identity[0],
                    db.files.c.ino == identity[1],
                )
            ).first()
        if row is None:
            return _FileState(head, 0, False, False)
        if row.head and head and row.head != head:
            # The inode was reused by another file: start it from its beginning.
            return _FileState(head, 0, False, True)
        return _FileState(head or row.head, int(row.offset), bool(row.done), True)

    def _index_file(self, fd: int, path: str, identity: tuple[int, int], finished: bool) -> None:
        state = self._state(identity, _head(fd))
        if state.done:
            return
        size = os.fstat(fd).st_size
        if size < state.offset:
            # Truncated in place (copytruncate): what it holds now is new.
            state.offset = 0
        if size == state.offset and not finished:
            return
        position = state.offset
        pending = b""
        batch: list[dict[str, Any]] = []
        warned = False
        cutoff = self._cutoff()
        while True:
            chunk = os.pread(fd, CHUNK, position + len(pending))
            if not chunk:
                break
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                raw = line + b"\n"
                position += len(raw)
                row = self._row(raw, cutoff)
                if row is None:
                    if not warned and raw.strip():
                        self._warn(f"{path}: skipped a line that is not a record")
                        warned = True
                    continue
                batch.append(row)
                if len(batch) >= self.batch_size:
                    self._commit(batch, identity, state, path, position, False)
                    batch = []
            if len(chunk) < CHUNK:
                break
        done = False
        if finished:
            if pending:
                position += len(pending)
                row = self._row(pending, cutoff)
                if row is not None:
                    batch.append(row)
            done = True
        if batch or done or position != state.offset or not state.known:
            self._commit(batch, identity, state, path, position, done)

    def _row(self, raw: bytes, cutoff: int | None) -> dict[str, Any] | None:
        if not raw.strip():
            return None
        safe = redact_line(raw)
        try:
            record = parse_line(safe)
        except MalformedRecord:
            self.stats.skipped += 1
            return None
        if cutoff is not None and (record.time_ns or 0) < cutoff:
            self.stats.expired += 1
            return None
        text = safe.decode("utf-8", "replace").rstrip("\n")
        return db.row_values(record, text)

    def _commit(
        self,
        batch: list[dict[str, Any]],
        identity: tuple[int, int],
        state: _FileState,
        path: str,
        offset: int,
        done: bool,
    ) -> None:
        values = {"head": state.head, "offset": offset, "done": done, "path": path}
        key = (
            db.files.c.host == self.host,
            db.files.c.dev == identity[0],
            db.files.c.ino == identity[1],
        )
        with self.engine.begin() as conn:
            if batch:
                conn.execute(insert(db.records), batch)
            if state.known:
                conn.execute(update(db.files).where(*key).values(**values))
            else:
                conn.execute(
                    insert(db.files).values(
                        host=self.host, dev=identity[0], ino=identity[1], **values
                    )
                )
        state.known = True
        state.offset = offset
        self.stats.indexed += len(batch)

    # --- retention ------------------------------------------------------------------

    def _cutoff(self) -> int | None:
        if self.retention_ns is None:
            return None
        return time.time_ns() - self.retention_ns

    def expire(self) -> int:
        cutoff = self._cutoff()
        if cutoff is None:
            return 0
        with self.engine.begin() as conn:
            dropped = db.drop_older_than(conn, cutoff)
        self.stats.expired += dropped
        return dropped

    # --- following ------------------------------------------------------------------

    def run(self, stop: threading.Event, poll: float = 0.5, expire_every: float = 60.0) -> None:
        """Pass after pass until *stop* is set; retention at most every *expire_every* s."""
        last_expiry = 0.0
        while not stop.is_set():
            if self.retention_ns is not None and time.monotonic() - last_expiry >= expire_every:
                self.expire()
                last_expiry = time.monotonic()
            added = self.run_once()
            if not added:
                stop.wait(poll)

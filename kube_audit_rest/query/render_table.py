"""The default output: an aligned table, one row per record.

Column widths come from the first rows (up to ``BATCH``, or all rows seen
before the input goes idle in ``--follow``); later, wider cells just push
the row out, so output streams instead of waiting for the end of the log.
"""

from __future__ import annotations

from typing import IO

from kube_audit_rest.query.records import Record
from kube_audit_rest.query.summary import summarise
from kube_audit_rest.query.timeparse import format_seconds

HEADER = ("TIME", "CLUSTER", "USER", "VERB", "RESOURCE", "NAMESPACE/NAME", "CHANGE")
BATCH = 500


def row(record: Record) -> tuple[str, ...]:
    return (
        format_seconds(record.time_ns),
        _clean(record.cluster or "-"),
        _clean(record.user) or "-",
        record.verb or "-",
        record.resource_path,
        _clean(record.namespaced_name),
        _clean(summarise(record)),
    )


def _clean(text: str) -> str:
    """No control characters from a record reach the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class TableWriter:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.pending: list[tuple[str, ...]] = [HEADER]
        self.widths: list[int] | None = None

    def add(self, record: Record) -> None:
        cells = row(record)
        if self.widths is None:
            self.pending.append(cells)
            if len(self.pending) > BATCH:
                self.flush()
        else:
            self._write(cells)

    def flush(self) -> None:
        if self.widths is None:
            self.widths = [max(len(r[i]) for r in self.pending) for i in range(len(HEADER))]
            for cells in self.pending:
                self._write(cells)
            self.pending = []
        self.out.flush()

    def _write(self, cells: tuple[str, ...]) -> None:
        assert self.widths is not None
        padded = [cell.ljust(width) for cell, width in zip(cells[:-1], self.widths, strict=False)]
        self.out.write("  ".join([*padded, cells[-1]]).rstrip() + "\n")

"""Loss check: every acknowledged uid is in the audit log exactly once, and no uid twice."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from server_proc import LOG_NAME


@dataclass(frozen=True)
class LossReport:
    acknowledged: int
    logged_records: int
    missing: int
    duplicated: int
    ambiguous_lines: int
    files: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicated or self.ambiguous_lines)

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (
            f"{verdict}: {self.acknowledged} acknowledged, {self.logged_records} records in "
            f"{self.files} file(s), {self.missing} missing, {self.duplicated} duplicated"
            + (
                f", {self.ambiguous_lines} lines with 0 or 2+ bench uids"
                if self.ambiguous_lines
                else ""
            )
        )


def log_files(folder: Path) -> list[Path]:
    """The active file and its rotated backups (audit-2026-...log)."""
    stem, suffix = LOG_NAME.rsplit(".", 1)
    return sorted(
        path
        for path in folder.iterdir()
        if path.name == LOG_NAME
        or (path.name.startswith(stem + "-") and path.suffix == "." + suffix)
    )


def count_logged(files: Iterable[Path], run_id: str) -> tuple[Counter[str], int]:
    """How often each bench uid of this run was logged, and lines without exactly one."""
    pattern = re.compile(rb"bench-" + re.escape(run_id.encode()) + rb"-\d+-\d+(?=\")")
    seen: Counter[str] = Counter()
    ambiguous = 0
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                uids = set(pattern.findall(line))
                if len(uids) != 1:
                    ambiguous += 1
                    continue
                seen[uids.pop().decode()] += 1
    return seen, ambiguous


def check(folder: Path, run_id: str, acknowledged: Iterable[str]) -> LossReport:
    files = log_files(folder)
    seen, ambiguous = count_logged(files, run_id)
    acked = set(acknowledged)
    missing = sum(1 for uid in acked if seen.get(uid, 0) == 0)
    duplicated = sum(1 for count in seen.values() if count > 1)
    return LossReport(
        acknowledged=len(acked),
        logged_records=sum(seen.values()),
        missing=missing,
        duplicated=duplicated,
        ambiguous_lines=ambiguous,
        files=len(files),
    )

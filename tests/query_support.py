"""Helpers for the query tests: run ``kube-audit-rest query`` as a user would."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support import CLI

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "query"
ACTIVE = FIXTURES / "kube-audit-rest.log"
EVENTS = FIXTURES / "events.log"
BACKUPS = (
    FIXTURES / "kube-audit-rest-2026-11-23T12-00-00.000.log",
    FIXTURES / "kube-audit-rest-2026-11-23T14-00-00.000.log",
)


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def query(*args: str, stdin: bytes | None = None, timeout: float = 60.0) -> Result:
    completed = subprocess.run(
        [CLI, "query", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return Result(
        completed.returncode,
        completed.stdout.decode("utf-8"),
        completed.stderr.decode("utf-8"),
    )


def fixture_log(*args: str) -> Result:
    """A query over the fixture log: the two backups, then the active file."""
    return query("--logger-filename", str(ACTIVE), *args)


def names(result: Result) -> list[str]:
    """The NAMESPACE/NAME column of a table output, one per row."""
    rows = result.stdout.splitlines()[1:]
    return [row.split()[5] for row in rows]


EXPECTED = FIXTURES / "expected"
EXPECTED_KUBECTL = EXPECTED / "log.kubectl.txt"

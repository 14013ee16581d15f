"""SQLite and a real PostgreSQL server give the same timeline, which is the query command's.

The fixture logs of the query tests (both record formats, rotated backups,
bad lines) are indexed by ``ui --index-only`` into each database; a UI with
``--no-index`` is started on each, and every filter's pages (followed through
"older" until the end) must list the same records as ``kube-audit-rest query``
prints for the same filters, newest first. PostgreSQL is started by the test
from Debian's postgresql-15 binaries; without them the test skips.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from kube_audit_rest.query.records import parse_line
from kube_audit_rest.query.render_table import row
from kube_audit_rest.ui import db
from tests.query_support import BACKUPS, EVENTS, FIXTURES
from tests.support import CLI
from tests.ui_support import Ui, lines, postgres_server, run_indexer, running_ui, stop, wait_for

ROW = re.compile(
    r'<tr><td class="nowrap"><a class="record-link" href="/record/(\d+)">(.*?)</a></td>'
    + r"<td[^>]*>(.*?)</td>" * 6
    + r"</tr>"
)
OLDER = re.compile(r'<a href="([^"]*)" id="older">')

# (form fields for the UI, the same filters as query flags)
FILTERS: list[tuple[dict[str, str], list[str]]] = [
    ({}, []),
    ({"user": "alice"}, ["--user", "alice"]),
    ({"user": "system:*"}, ["--user", "system:*"]),
    ({"namespace": "shop"}, ["-n", "shop"]),
    ({"resource": "deployments"}, ["--resource", "deployments"]),
    ({"resource": "apps/deployments/scale"}, ["--resource", "apps/deployments/scale"]),
    ({"resource": "secrets"}, ["--resource", "secrets"]),
    ({"name": "web"}, ["--name", "web"]),
    ({"name": "app-1*"}, ["--name", "app-1*"]),
    ({"group": "system:authenticated"}, ["--group", "system:authenticated"]),
    ({"verb": "patch"}, ["--verb", "patch"]),
    ({"operation": "DELETE"}, ["--operation", "DELETE"]),
    ({"cluster": "prod"}, ["--cluster", "prod"]),
    ({"dry_run": "yes"}, ["--dry-run"]),
    ({"dry_run": "no", "namespace": "shop"}, ["--no-dry-run", "-n", "shop"]),
    (
        {"since": "2026-11-23T10:05:00Z", "until": "2026-11-23T14:00:00Z"},
        ["--since", "2026-11-23T10:05:00Z", "--until", "2026-11-23T14:00:00Z"],
    ),
    ({"q": "replicas"}, ["--grep", "replicas"]),
    ({"user": "USER-1"}, ["--user", "USER-1"]),  # SQLite's LIKE ignores case; the answer must not
    (
        {"namespace": "shop", "user": "user-3", "name": "app-*"},
        ["-n", "shop", "--user", "user-3", "--name", "app-*"],
    ),
]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The query fixtures (and 130 more records, for paging) as a rotated log."""
    folder = tmp_path_factory.mktemp("log")
    for backup in BACKUPS:
        shutil.copy(backup, folder / backup.name)
    shutil.copy(EVENTS, folder / "kube-audit-rest-2026-11-23T08-00-00.000.log")
    active = folder / "kube-audit-rest.log"
    active.write_bytes((FIXTURES / "kube-audit-rest.log").read_bytes() + lines(0, 130))
    return active


def _record_count(log: Path) -> int:
    result = subprocess.run(
        [CLI, "query", "--logger-filename", str(log), "-o", "json"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return len(result.stdout.splitlines())


def _indexed(url: str) -> int:
    engine = db.open_engine(url)
    try:
        with engine.connect() as conn:
            if not db.has_schema(engine):
                return 0
            return int(conn.execute(select(func.count()).select_from(db.records)).scalar_one())
    except OperationalError:  # not created yet
        return 0
    finally:
        engine.dispose()


def _index(log: Path, extra: list[str], url: str, expected: int) -> None:
    indexer = run_indexer([CLI, "ui", "--logger-filename", str(log), *extra, "--poll", "0.05"])
    try:
        wait_for(lambda: _indexed(url) >= expected)
    finally:
        stop(indexer)
    assert _indexed(url) == expected


def _pages(ui: Ui, query: dict[str, str]) -> Iterator[tuple[str, ...]]:
    from urllib.parse import urlencode

    path: str | None = "/?" + urlencode(query)
    while path is not None:
        status, _headers, body = ui.get(html.unescape(path))
        assert status == 200, body
        for match in ROW.finditer(body):
            yield tuple(html.unescape(cell) for cell in match.groups()[1:])
        older = OLDER.search(body)
        path = older.group(1) if older else None


def _query_rows(log: Path, flags: list[str]) -> list[tuple[str, ...]]:
    result = subprocess.run(
        [CLI, "query", "--logger-filename", str(log), "-o", "json", *flags],
        capture_output=True,
        timeout=60,
        check=True,
    )
    records = [parse_line(raw) for raw in result.stdout.splitlines(keepends=True)]
    # Newest first; records with the same time in reverse file order.
    ordered = sorted(enumerate(records), key=lambda p: (p[1].time_ns or 0, p[0]), reverse=True)
    return [row(record) for _i, record in ordered]


def test_sqlite_and_postgresql_answer_like_the_query_command(log: Path, tmp_path: Path) -> None:
    expected = _record_count(log)
    sqlite_dir = tmp_path / "index"
    sqlite_url = db.url_for(str(sqlite_dir), None)
    _index(log, ["--index-dir", str(sqlite_dir)], sqlite_url, expected)
    with postgres_server() as pg:
        pg_url = db.url_for(None, pg.url)
        _index(log, ["--db-url", pg.url], pg_url, expected)
        answers: dict[str, list[list[tuple[str, ...]]]] = {}
        for name, flags in (
            ("sqlite", ["--index-dir", str(sqlite_dir)]),
            ("postgresql", ["--db-url", pg.url]),
        ):
            argv = [CLI, "ui", "--logger-filename", str(log), *flags, "--no-index"]
            with running_ui(argv) as ui:
                answers[name] = [list(_pages(ui, form)) for form, _flags in FILTERS]
        # The PostgreSQL index really is in PostgreSQL.
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM kar_records")).scalar_one() == expected
        engine.dispose()
    for (form, flags), from_sqlite, from_pg in zip(
        FILTERS, answers["sqlite"], answers["postgresql"], strict=True
    ):
        wanted = _query_rows(log, flags)
        assert from_sqlite == wanted, form
        assert from_pg == wanted, form
    assert len(answers["sqlite"][0]) == expected > 100  # more than two pages
    empty = [form for (form, _), got in zip(FILTERS, answers["sqlite"], strict=True) if not got]
    assert empty == [{"user": "USER-1"}]

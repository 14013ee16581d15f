"""The index: schema, the writes the indexer makes, and the timeline query.

One code path for SQLite (the default, a file in ``--index-dir``) and
PostgreSQL (``--db-url postgresql://...``, driver psycopg 3), through
SQLAlchemy Core.

The timeline runs the query command's filters (``query.filters.Criteria``) in
two steps, as the query command does on bytes: SQL narrows the rows with what
it can decide on indexed columns (exact values, simple globs as ``LIKE``, the
time window, free text as ``LIKE``), then ``Criteria.matches`` decides on the
parsed record. SQL only ever keeps a superset, so both databases give exactly
the query command's answers, in the same order: newest first by (time, id),
paged by keyset on that pair.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.engine import Connection

from kube_audit_rest.query.filters import Criteria, Pattern
from kube_audit_rest.query.records import Record, parse_line

SQLITE_FILE = "index.sqlite3"
# SQLite's rowid is the fast primary key; PostgreSQL gets a 64-bit identity.
_ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

records = Table(
    "kar_records",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    # Record time in ns since the epoch; 0 for a record without one.
    Column("ts", BigInteger, nullable=False),
    Column("user_name", Text, nullable=False),
    # "\n" + each group + "\n": a group matches as LIKE '%\ngroup\n%'.
    Column("groups", Text, nullable=False),
    Column("namespace", Text, nullable=False),
    Column("api_group", Text, nullable=False),
    Column("resource", Text, nullable=False),
    Column("subresource", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("verb", String(32), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("cluster", Text, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("raw", Text, nullable=False),
    # The common filters: equality on the column, then the newest rows first.
    Index("kar_records_time", "ts", "id"),
    Index("kar_records_user", "user_name", "ts", "id"),
    Index("kar_records_namespace", "namespace", "ts", "id"),
    Index("kar_records_resource", "resource", "ts", "id"),
    Index("kar_records_name", "name", "ts", "id"),
)

# Where the indexer stopped, per file: identity (host, device, inode) plus a
# hash of the first line (so a reused inode is a new file), and the offset
# after the last indexed line. Written in the same transaction as the records.
files = Table(
    "kar_files",
    metadata,
    Column("host", String(255), primary_key=True),
    Column("dev", BigInteger, primary_key=True, autoincrement=False),
    Column("ino", BigInteger, primary_key=True, autoincrement=False),
    Column("head", String(64), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("done", Boolean, nullable=False),
    Column("path", Text, nullable=False),
)


class IndexError_(RuntimeError):
    """The index cannot be opened; the message says why."""


def url_for(index_dir: str | None, db_url: str | None) -> str:
    if db_url:
        if db_url.startswith("postgresql://"):
            # psycopg 3, not SQLAlchemy's default psycopg2.
            return "postgresql+psycopg://" + db_url[len("postgresql://") :]
        return db_url
    assert index_dir is not None
    return "sqlite:///" + os.path.join(os.path.abspath(index_dir), SQLITE_FILE)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: the UI reads while the indexer writes; NORMAL is durable at each
    # checkpoint and never corrupts (a crash loses at most the last commits,
    # whose offsets are lost with them, so they are indexed again).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def create_schema(engine: Engine) -> None:
    metadata.create_all(engine)


def has_schema(engine: Engine) -> bool:
    from sqlalchemy import inspect

    return inspect(engine).has_table(records.name)


def row_values(record: Record, raw: str) -> dict[str, Any]:
    """The columns of one record."""
    return {
        "ts": record.time_ns or 0,
        "user_name": record.user,
        "groups": "".join(f"\n{g}" for g in record.groups) + "\n",
        "namespace": record.namespace,
        "api_group": record.group,
        "resource": record.resource,
        "subresource": record.subresource,
        "name": record.name,
        "verb": record.verb,
        "operation": record.operation,
        "cluster": record.cluster or "",
        "dry_run": record.dry_run,
        "raw": raw,
    }


# --- the timeline --------------------------------------------------------------------


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _glob_to_like(text: str) -> str | None:
    """An fnmatch glob as a LIKE pattern, or None when it has ``[...]`` (SQL cannot say)."""
    if "[" in text:
        return None
    return _like_escape(text).replace("*", "%").replace("?", "_")


def _pattern(column: Any, pattern: Pattern, around: str = "") -> ColumnElement[bool] | None:
    """*column* matches *pattern* (exactly, or as a LIKE superset); *around* delimits values."""
    if pattern.exact and not around:
        return column == pattern.text  # type: ignore[no-any-return]
    like = _like_escape(pattern.text) if pattern.exact else _glob_to_like(pattern.text)
    if like is None:
        return None
    if around:
        like = f"%{around}{like}{around}%"
    return column.like(like, escape="\\")  # type: ignore[no-any-return]


def _any_of(
    column: Any, patterns: Sequence[Pattern], around: str = ""
) -> ColumnElement[bool] | None:
    """A condition true for every row whose value matches one pattern (a superset), or None."""
    parts = [_pattern(column, p, around) for p in patterns]
    if not parts or any(p is None for p in parts):
        return None
    exact = [p.text for p in patterns if p.exact and not around]
    others = [part for p, part in zip(patterns, parts, strict=True) if not (p.exact and not around)]
    conditions: list[ColumnElement[bool]] = [c for c in others if c is not None]
    if exact:
        conditions.insert(0, column.in_(exact) if len(exact) > 1 else column == exact[0])
    return or_(*conditions) if len(conditions) > 1 else conditions[0]


def _part(column: Any, wanted: str | None) -> ColumnElement[bool] | None:
    if wanted is None:
        return None
    return _pattern(column, Pattern(wanted))


def prefilter(criteria: Criteria) -> list[ColumnElement[bool]]:
    """SQL conditions that every matching record meets (more rows may meet them)."""
    c = records.c
    conditions: list[ColumnElement[bool] | None] = [
        _any_of(c.user_name, criteria.users),
        _any_of(c.namespace, criteria.namespaces),
        _any_of(c.name, criteria.names),
        _any_of(c.cluster, criteria.clusters),
        _any_of(c.groups, criteria.groups, around="\n"),
    ]
    if criteria.resources:
        alternatives = []
        for spec in criteria.resources:
            for group, resource, subresource in spec.alternatives:
                parts = [
                    _part(c.resource, resource),
                    _part(c.api_group, group),
                    _part(c.subresource, subresource),
                ]
                kept = [p for p in parts if p is not None]
                alternatives.append(and_(*kept) if kept else true())
        conditions.append(or_(*alternatives))
    if criteria.operations:
        conditions.append(c.operation.in_(sorted(criteria.operations)))
    if criteria.verbs:
        verb = c.verb.in_(sorted(criteria.verbs))
        conditions.append(
            or_(verb, c.operation == "CONNECT") if "connect" in criteria.verbs else verb
        )
    if criteria.dry_run is not None:
        conditions.append(c.dry_run == criteria.dry_run)
    if criteria.since_ns is not None:
        conditions.append(c.ts >= criteria.since_ns)
    if criteria.until_ns is not None:
        conditions.append(c.ts < criteria.until_ns)
    for text in criteria.texts:
        conditions.append(c.raw.like("%" + _like_escape(text.decode()) + "%", escape="\\"))
    return [condition for condition in conditions if condition is not None]


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    record: Record


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    # Keyset cursor of the next (older) page, or None at the end.
    next_before: tuple[int, int] | None
    # Rows SQL returned that the exact filters ruled out (globs, case).
    scanned: int
    # True when the scan budget ran out before the page filled.
    partial: bool


def _matches(criteria: Criteria, record: Record) -> bool:
    return all(text in record.raw for text in criteria.texts) and criteria.matches(record)


def timeline(
    conn: Connection,
    criteria: Criteria,
    before: tuple[int, int] | None,
    limit: int,
    scan_budget: int = 5000,
) -> Page:
    """Newest first, up to *limit* matching records older than *before* (ts, id)."""
    conditions = prefilter(criteria)
    entries: list[Entry] = []
    scanned = 0
    cursor = before
    batch = max(limit * 2, 100)
    while len(entries) < limit:
        where = list(conditions)
        if cursor is not None:
            where.append(tuple_(records.c.ts, records.c.id) < tuple_(*cursor))
        query = (
            select(records.c.id, records.c.ts, records.c.raw)
            .where(*where)
            .order_by(records.c.ts.desc(), records.c.id.desc())
            .limit(batch)
        )
        rows = conn.execute(query).all()
        for row_id, ts, raw in rows:
            scanned += 1
            cursor = (ts, row_id)
            record = parse_line(raw.encode())
            if _matches(criteria, record):
                entries.append(Entry(row_id, record))
                if len(entries) == limit:
                    break
        if len(rows) < batch and len(entries) < limit:
            return Page(entries, None, scanned, False)
        if scanned >= scan_budget and len(entries) < limit:
            return Page(entries, cursor, scanned, True)
    return Page(entries, cursor, scanned, False)


def get(conn: Connection, record_id: int) -> Entry | None:
    row = conn.execute(select(records.c.raw).where(records.c.id == record_id)).first()
    if row is None:
        return None
    return Entry(record_id, parse_line(row[0].encode()))


def count(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(records)).scalar_one())


def all_ids(conn: Connection) -> Iterator[int]:
    for (row_id,) in conn.execute(select(records.c.id).order_by(records.c.id)):
        yield int(row_id)


def drop_older_than(conn: Connection, cutoff_ns: int) -> int:
    """Retention: delete records before *cutoff_ns* (and those without a time)."""
    result = conn.execute(delete(records).where(records.c.ts < cutoff_ns))
    return int(result.rowcount or 0)

"""``kube-audit-rest ui``: serve the web UI, and keep its index up to date.

By default one command does both: it starts the indexer as a child process
(``kube-audit-rest ui --index-only`` with the same flags) and serves the pages
with gunicorn (one gthread worker). A separate process keeps indexing off the
request path's CPU and memory, and a crash of either does not take the index
with it (the index is restart-safe). For a team on PostgreSQL, run one
``--index-only`` per log (each pod's sidecar) and any number of ``--no-index``
UIs against the same ``--db-url``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kube_audit_rest.config import OPTIONS, fail
from kube_audit_rest.query.timeparse import parse_duration
from kube_audit_rest.subparser import SubcommandParser

_LOGGER_FILENAME = next(o for o in OPTIONS if o.name == "logger_filename")
DEFAULT_INDEX_DIR = "kube-audit-rest-index"
DEFAULT_PORT = 8080
DB_URL_ENV = "KUBE_AUDIT_REST_UI_DB_URL"
_PARENT_ENV = "KUBE_AUDIT_REST_UI_PARENT"  # set for the indexer child of `ui`


def build_parser() -> argparse.ArgumentParser:
    parser = SubcommandParser(
        prog="kube-audit-rest ui",
        description="A read-only web UI for the audit log: timeline with the query command's "
        "filters, record pages with diff and kubectl command. Reads through an index that "
        "follows the log (SQLite in --index-dir by default, or PostgreSQL with --db-url).",
    )
    add = parser.add_argument
    add(
        "--logger-filename",
        default=os.environ.get(_LOGGER_FILENAME.env, _LOGGER_FILENAME.default),
        metavar="FILENAME",
        help="the server's log file; it and its rotated backups are indexed (default %(default)s)",
    )
    add(
        "--index-dir",
        default=DEFAULT_INDEX_DIR,
        metavar="DIR",
        help="folder of the SQLite index, created if missing (default ./%(default)s)",
    )
    add(
        "--db-url",
        default=os.environ.get(DB_URL_ENV) or None,
        metavar="URL",
        help="postgresql://user:password@host/db: index in PostgreSQL instead of SQLite "
        f"(or ${DB_URL_ENV}, which keeps the password out of the process list)",
    )
    add(
        "--retention",
        default=None,
        metavar="DURATION",
        help="keep only records newer than this in the index, e.g. 7d, 12h (default: all)",
    )
    add("--address", default="127.0.0.1", help="address to listen on (default %(default)s)")
    add(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on (default %(default)s)",
    )
    add(
        "--auth-token-file",
        default=None,
        metavar="FILE",
        help="require 'Authorization: Bearer TOKEN' with the token in FILE",
    )
    add(
        "--basic-auth-file",
        default=None,
        metavar="FILE",
        help="require basic auth; FILE has user:password or htpasswd -s user:{SHA}... lines",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--index-only",
        action="store_true",
        help="only keep the index up to date (no web server)",
    )
    mode.add_argument(
        "--no-index",
        action="store_true",
        help="only serve; another process (ui --index-only) keeps the index up to date",
    )
    add("--batch-size", type=int, default=2000, help=argparse.SUPPRESS)
    add("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    return parser


@dataclass(frozen=True, slots=True)
class UiSettings:
    active: str
    url: str
    describe: str
    retention_ns: int | None
    address: str
    port: int
    batch_size: int
    poll: float


def _settings(args: argparse.Namespace) -> UiSettings:
    from kube_audit_rest.ui import db

    if not (0 < args.port < 65536):
        fail(f"invalid --port {args.port}: use 1 to 65535")
    if args.batch_size < 1:
        fail("invalid --batch-size: use 1 or more")
    retention = None
    if args.retention is not None:
        retention = parse_duration(args.retention)
        if not retention:
            fail(f"invalid --retention {args.retention!r}: use a duration such as 7d or 12h")
    if args.db_url:
        if not args.db_url.startswith(("postgresql://", "postgresql+psycopg://")):
            fail("--db-url must be a postgresql:// URL (SQLite is the default, see --index-dir)")
        describe = "PostgreSQL index"
    else:
        try:
            os.makedirs(args.index_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            fail(f"cannot create --index-dir {args.index_dir}: {error.strerror}")
        describe = "SQLite index"
    return UiSettings(
        active=args.logger_filename,
        url=db.url_for(args.index_dir, args.db_url),
        describe=describe,
        retention_ns=retention,
        address=args.address,
        port=args.port,
        batch_size=args.batch_size,
        poll=args.poll,
    )


def _auth(args: argparse.Namespace) -> Any:
    from kube_audit_rest.ui.app import Auth, read_basic_auth_file, read_token_file

    try:
        token = read_token_file(args.auth_token_file) if args.auth_token_file else None
        users = read_basic_auth_file(args.basic_auth_file) if args.basic_auth_file else None
    except OSError as error:
        fail(f"cannot read {error.filename}: {error.strerror}")
    except (ValueError, UnicodeDecodeError) as error:
        fail(str(error))
    return Auth(token=token, users=users)


def _open_schema(settings: UiSettings) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from kube_audit_rest.ui import db

    try:
        engine = db.open_engine(settings.url)
        db.create_schema(engine)
        engine.dispose()
    except SQLAlchemyError as error:
        fail(f"cannot open the index ({settings.describe}): {_first_line(error)}")


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def index_only(settings: UiSettings) -> int:
    from kube_audit_rest.ui import db
    from kube_audit_rest.ui.index import Indexer

    stop = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.environ.get(_PARENT_ENV)
    if parent and parent.isdigit():
        threading.Thread(target=_stop_when_orphaned, args=(int(parent), stop), daemon=True).start()
    engine = db.open_engine(settings.url)
    indexer = Indexer(
        engine, settings.active, retention_ns=settings.retention_ns, batch_size=settings.batch_size
    )
    sys.stderr.write(
        f"kube-audit-rest ui: indexing {os.path.abspath(settings.active)} and its backups "
        f"into the {settings.describe}\n"
    )
    sys.stderr.flush()
    indexer.run(stop, poll=settings.poll)
    engine.dispose()
    return 0


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    """The indexer child of a ``ui`` that was killed (SIGKILL, OOM) ends too."""
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


def _start_indexer(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kube_audit_rest", "ui", *argv, "--index-only"],
        stdin=subprocess.DEVNULL,
        env={**os.environ, _PARENT_ENV: str(os.getpid())},
    )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = _settings(args)
    auth = None if args.index_only else _auth(args)
    _open_schema(settings)
    if args.index_only:
        return index_only(settings)

    import socket

    try:
        listener = socket.create_server(
            (settings.address, settings.port),
            family=socket.AF_INET6 if ":" in settings.address else socket.AF_INET,
        )
    except OSError as error:
        fail(f"cannot listen on {settings.address}:{settings.port}: {error.strerror}")
    listener.close()  # gunicorn binds it again; this only checks first, with a clear error

    from kube_audit_rest.ui.server import UiServer

    indexer = None if args.no_index else _start_indexer(argv)
    try:
        UiServer(settings, auth).run()
    finally:
        if indexer is not None:
            indexer.terminate()
            try:
                indexer.wait(timeout=10)
            except (subprocess.TimeoutExpired, ChildProcessError):
                indexer.kill()
    return 0

"""``kube-audit-rest query``: flags, then read, filter and print."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import IO, NoReturn

from kube_audit_rest.config import OPTIONS, fail
from kube_audit_rest.query import diff, kubectl, sources
from kube_audit_rest.query.filters import OPERATIONS, VERBS, Criteria, Pattern, ResourceSpec
from kube_audit_rest.query.records import MalformedRecord, Record, parse_line
from kube_audit_rest.query.render_table import TableWriter
from kube_audit_rest.query.timeparse import now_ns, parse_bound
from kube_audit_rest.query.yamltext import dump_document

OUTPUTS = ("table", "json", "yaml", "kubectl")
_LOGGER_FILENAME = next(o for o in OPTIONS if o.name == "logger_filename")

EPILOG = """\
Filters combine with AND; a filter given several times (or with commas, for
--operation and --verb) matches any of its values. --user, --group, --name,
--namespace and --cluster take exact values or globs (*, ?, [...]).
--since is inclusive and --until exclusive; each takes an RFC 3339 time
(2026-11-23T14:00:00Z) or a duration before now (90s, 15m, 2h, 1h30m, 7d).
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"query: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kube-audit-rest query",
        description="Search the audit log: who changed what, when, and how.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("text", nargs="*", metavar="TEXT", help="Free text: records whose line contains it.")
    add("--grep", action="append", default=[], metavar="TEXT", help="Free text, as TEXT.")
    add(
        "--logger-filename",
        default=os.environ.get(_LOGGER_FILENAME.env, _LOGGER_FILENAME.default),
        metavar="FILENAME",
        help="The server's log file; it and its rotated backups are read, oldest first "
        "(default %(default)s).",
    )
    add(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="Read this file instead ('-': stdin); repeatable.",
    )
    add("--user", action="append", default=[], help="User name, exact or glob.")
    add("--group", action="append", default=[], help="One of the user's groups, exact or glob.")
    add("-n", "--namespace", action="append", default=[], help="Namespace, exact or glob.")
    add(
        "--resource",
        action="append",
        default=[],
        help="deployments, apps/deployments, deployments.apps, pods/exec, apps/deployments/scale.",
    )
    add("--name", action="append", default=[], help="Object name, exact or glob.")
    add("--operation", action="append", default=[], help="CREATE, UPDATE, DELETE or CONNECT.")
    add(
        "--verb",
        action="append",
        default=[],
        help=", ".join(VERBS) + " (patch: an UPDATE with PatchOptions).",
    )
    add("--cluster", action="append", default=[], help="The record's cluster name, exact or glob.")
    add(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Only dry-run requests (or, with --no-dry-run, only real ones).",
    )
    add("--since", help="Records at or after this time (RFC 3339, or a duration such as 2h).")
    add("--until", help="Records before this time (RFC 3339, or a duration).")
    add(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=None,
        help="table (default), json (the lines unchanged), yaml, kubectl.",
    )
    add("--diff", action="store_true", help="Show each change as a unified YAML diff.")
    add("--include-status", action="store_true", help="With --diff: compare status too.")
    add(
        "--keep-noise",
        action="store_true",
        help="With --diff: also compare managedFields, resourceVersion, generation "
        "and the last-applied annotation.",
    )
    add(
        "-f",
        "--follow",
        action="store_true",
        help="Keep printing new records as the log grows, across rotations, until interrupted.",
    )
    return parser


def _values(items: list[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def criteria_from(args: argparse.Namespace) -> Criteria:
    try:
        return build_criteria(args)
    except ValueError as error:
        fail(f"query: {error}")


def build_criteria(args: argparse.Namespace) -> Criteria:
    """The Criteria for parsed filter flags; ValueError (one line) for a bad value.

    The web UI builds its filters through this too, from a form's fields.
    """
    criteria = Criteria(
        users=[Pattern(v) for v in args.user],
        groups=[Pattern(v) for v in args.group],
        namespaces=[Pattern(v) for v in args.namespace],
        names=[Pattern(v) for v in args.name],
        clusters=[Pattern(v) for v in args.cluster],
        dry_run=args.dry_run,
        texts=[t.encode() for t in [*args.text, *args.grep]],
    )
    criteria.resources = [ResourceSpec.parse(v) for v in args.resource]
    for operation in _values(args.operation):
        if operation.upper() not in OPERATIONS:
            raise ValueError(
                f"invalid --operation {operation!r} (choose from {', '.join(OPERATIONS)})"
            )
        criteria.operations.add(operation.upper())
    for verb in _values(args.verb):
        if verb.lower() not in VERBS:
            raise ValueError(f"invalid --verb {verb!r} (choose from {', '.join(VERBS)})")
        criteria.verbs.add(verb.lower())
    now = now_ns()
    for flag in ("since", "until"):
        text = getattr(args, flag)
        if text is None:
            continue
        bound = parse_bound(text, now)
        if bound is None:
            raise ValueError(
                f"invalid --{flag} {text!r}: use an RFC 3339 time or a duration like 2h"
            )
        setattr(criteria, f"{flag}_ns", bound)
    criteria.prepare()
    return criteria


def _lines(args: argparse.Namespace) -> Iterator[sources.Line | None]:
    if args.file:
        for path in args.file:
            if path == "-":
                continue
            if not os.path.exists(path):
                fail(f"query: cannot read {path}: no such file")
            if os.path.isdir(path):
                fail(f"query: cannot read {path}: it is a directory")
            if not os.access(path, os.R_OK):
                fail(f"query: cannot read {path}: permission denied")
        for index, path in enumerate(args.file):
            last = index == len(args.file) - 1
            if args.follow and last and path != "-":
                yield from sources.follow(path)
            else:
                yield from sources.read_file(path)
        return
    active = args.logger_filename
    inputs = sources.default_inputs(active)
    if not inputs and not args.follow:
        fail(
            f"query: no log at {active} (and no rotated backups); "
            "give files with --file, or --file - for stdin"
        )
    if args.follow:
        backups = [path for path in inputs if path != os.path.abspath(active)]
        for path in backups:
            yield from _read(path)
        yield from sources.follow(active)
    else:
        for path in inputs:
            yield from _read(path)


def _read(path: str) -> Iterator[sources.Line]:
    """A file found by listing the folder; the server may prune it before we get to it."""
    try:
        yield from sources.read_file(path)
    except FileNotFoundError:
        sys.stderr.write(f"kube-audit-rest: warning: {path}: removed before it could be read\n")
    except OSError as error:
        fail(f"query: cannot read {path}: {error.strerror}")


class _Printer:
    def __init__(self, args: argparse.Namespace, out: IO[str]) -> None:
        self.out = out
        self.mode = "diff" if args.diff else (args.output or "table")
        self.table = TableWriter(out) if self.mode == "table" else None
        self.include_status = args.include_status
        self.keep_noise = args.keep_noise
        self.first = True

    def add(self, record: Record) -> None:
        if self.table is not None:
            self.table.add(record)
            return
        if self.mode == "json":
            self.out.flush()
            raw = record.raw if record.raw.endswith(b"\n") else record.raw + b"\n"
            self.out.buffer.write(raw)  # type: ignore[attr-defined]
            return
        if self.mode == "yaml":
            self.out.write(dump_document(record.document))
            return
        separator = "" if self.first else "\n"
        self.first = False
        if self.mode == "kubectl":
            self.out.write(separator + kubectl.render(record))
        else:
            self.out.write(separator + diff.render(record, self.include_status, self.keep_noise))

    def flush(self) -> None:
        if self.table is not None:
            self.table.flush()
        self.out.flush()


def run(args: argparse.Namespace, criteria: Criteria, out: IO[str], err: IO[str]) -> int:
    printer = _Printer(args, out)
    may_match, matches = criteria.may_match, criteria.matches
    for line in _lines(args):
        if line is None:
            printer.flush()
            continue
        raw = line.raw
        if not may_match(raw):
            # Ruled out unparsed; a line that does not even look like a JSON
            # object (torn, or not JSON) is still parsed, to report it.
            stripped = raw.rstrip()
            if stripped and not (stripped.startswith(b"{") and stripped.endswith(b"}")):
                try:
                    parse_line(raw)
                except MalformedRecord as error:
                    _warn(err, line, str(error))
            continue
        if not raw.strip():
            continue
        try:
            record = parse_line(raw)
        except MalformedRecord as error:
            _warn(err, line, str(error))
            continue
        if matches(record):
            printer.add(record)
    printer.flush()
    return 0


def _warn(err: IO[str], line: sources.Line, reason: str) -> None:
    err.write(f"kube-audit-rest: warning: {line.label}:{line.number}: {reason}\n")
    err.flush()


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.diff and args.output not in (None, "table"):
        fail(f"query: --diff shows diffs; it cannot be combined with -o {args.output}")
    if (args.include_status or args.keep_noise) and not args.diff:
        fail("query: --include-status and --keep-noise only apply to --diff")
    criteria = criteria_from(args)
    # SIGINT ends a --follow even when the shell started us with it ignored
    # (a background job of a script); SIGTERM ends it the same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run(args, criteria, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        sys.stdout.flush()
        return 0
    except BrokenPipeError:
        # The reader (head, less) has gone: stop quietly, as grep does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0

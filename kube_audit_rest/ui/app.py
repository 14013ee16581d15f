"""The Flask application: timeline, record page, authentication, security headers.

Everything shown goes through Jinja's autoescaping (object names, labels and
annotations are written by whoever can create objects); no page has inline
script or style, so the Content-Security-Policy allows neither. The app only
reads the index.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Flask, Response, abort, render_template, request
from sqlalchemy import Engine

from kube_audit_rest.query import diff, kubectl
from kube_audit_rest.query.cli import build_criteria
from kube_audit_rest.query.filters import OPERATIONS, VERBS
from kube_audit_rest.query.records import Record
from kube_audit_rest.query.render_table import row
from kube_audit_rest.query.summary import summarise
from kube_audit_rest.ui import db

PAGE_SIZE = 50
# Form field -> the query command's flag (as the argparse dest).
TEXT_FILTERS = ("user", "group", "namespace", "resource", "name", "cluster")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class Auth:
    """Accepted credentials: a bearer token and/or basic-auth users; none: open."""

    token: bytes | None = None
    # user -> ("plain", password bytes) or ("sha", the 20-byte SHA-1 digest)
    users: dict[str, tuple[str, bytes]] | None = None

    @property
    def required(self) -> bool:
        return self.token is not None or bool(self.users)

    def accepts(self, header: str | None) -> bool:
        if not self.required:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token is not None:
            return hmac.compare_digest(value.strip().encode(), self.token)
        if scheme == "basic" and self.users:
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except ValueError:
                return False
            user, sep, password = decoded.partition(b":")
            return bool(sep) and self._check(user.decode("utf-8", "replace"), password)
        return False

    def _check(self, user: str, password: bytes) -> bool:
        assert self.users is not None
        kind, secret = self.users.get(user, ("plain", b"\0" * 32))
        # htpasswd -s stores SHA-1 ({SHA}); the only hash it has without a library.
        candidate = hashlib.sha1(password).digest() if kind == "sha" else password  # noqa: S324
        ok = hmac.compare_digest(candidate, secret)
        return ok and user in self.users

    def challenge(self) -> str:
        if self.users:
            return 'Basic realm="kube-audit-rest", charset="UTF-8"'
        return 'Bearer realm="kube-audit-rest"'


def read_token_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        token = handle.read().strip()
    if not token:
        raise ValueError(f"--auth-token-file {path} is empty")
    return token


def read_basic_auth_file(path: str) -> dict[str, tuple[str, bytes]]:
    """``user:password`` or htpasswd's ``user:{SHA}base64`` lines; ``#`` comments."""
    users: dict[str, tuple[str, bytes]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, secret = line.partition(":")
            if not sep or not user:
                raise ValueError(f"--basic-auth-file {path}:{number}: expected user:password")
            if secret.startswith("{SHA}"):
                try:
                    digest = base64.b64decode(secret[5:], validate=True)
                except ValueError:
                    digest = b""
                if len(digest) != 20:
                    raise ValueError(f"--basic-auth-file {path}:{number}: bad {{SHA}} hash")
                users[user] = ("sha", digest)
            elif secret.startswith(("$apr1$", "$2y$", "$2a$", "$2b$", "$5$", "$6$")):
                raise ValueError(
                    f"--basic-auth-file {path}:{number}: only plain passwords and {{SHA}} "
                    "hashes are supported (htpasswd -s)"
                )
            else:
                users[user] = ("plain", secret.encode())
    if not users:
        raise ValueError(f"--basic-auth-file {path} has no users")
    return users


# --- filters from the form ----------------------------------------------------------


def form_values() -> dict[str, str]:
    """The filter fields of the request, trimmed, empty ones left out."""
    keys = (*TEXT_FILTERS, "verb", "operation", "dry_run", "since", "until", "q")
    values = {key: request.args.get(key, "").strip() for key in keys}
    return {key: value for key, value in values.items() if value}


def criteria_for(values: dict[str, str]) -> Any:
    """The query command's Criteria for the form's fields (ValueError: a bad value)."""
    dry = values.get("dry_run")
    if dry not in (None, "yes", "no"):
        raise ValueError("invalid dry run choice: use yes or no")
    args = argparse.Namespace(
        **{key: [values[key]] if key in values else [] for key in TEXT_FILTERS},
        verb=[values["verb"]] if "verb" in values else [],
        operation=[values["operation"]] if "operation" in values else [],
        dry_run=None if dry is None else dry == "yes",
        since=values.get("since"),
        until=values.get("until"),
        text=[values["q"]] if "q" in values else [],
        grep=[],
    )
    return build_criteria(args)


def _cursor(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    ts, _, row_id = text.partition(".")
    if not (ts.isdigit() and row_id.isdigit()):
        raise ValueError("invalid page cursor")
    return int(ts), int(row_id)


def object_filter(record: Record) -> dict[str, str]:
    """The timeline filter for "all changes to this object" (any subresource of it)."""
    values = {"resource": f"{record.resource}.{record.group or 'core'}"}
    if record.namespace:
        values["namespace"] = record.namespace
    if record.name:
        values["name"] = record.name
    return values


def link(values: dict[str, str]) -> str:
    return "/?" + urlencode(values) if values else "/"


def diff_lines(text: str) -> list[tuple[str, str]]:
    """Each line of a diff with the CSS class that colours it."""
    out = []
    for line in text.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        elif line.startswith("#"):
            kind = "note"
        else:
            kind = "ctx"
        out.append((kind, line))
    return out


# --- the app -------------------------------------------------------------------------


def create_app(engine: Engine, auth: Auth, describe_index: str = "") -> Flask:
    app = Flask("kube_audit_rest.ui")
    app.config["MAX_CONTENT_LENGTH"] = 1024

    @app.before_request
    def _authenticate() -> Response | None:
        if request.method not in ("GET", "HEAD"):
            return Response("read-only\n", 405, {"Allow": "GET, HEAD"}, mimetype="text/plain")
        if auth.accepts(request.headers.get("Authorization")):
            return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": auth.challenge()},
            mimetype="text/plain",
        )

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/healthz")
    def _healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/")
    def timeline() -> tuple[str, int] | str:
        values = form_values()
        base = {"values": values, "verbs": VERBS, "operations": OPERATIONS, "index": describe_index}
        try:
            criteria = criteria_for(values)
            before = _cursor(request.args.get("before"))
        except ValueError as error:
            return render_template("timeline.html", error=str(error), rows=[], **base), 400
        with engine.connect() as conn:
            page = db.timeline(conn, criteria, before, PAGE_SIZE)
        rows = [(entry.id, row(entry.record)) for entry in page.entries]
        older = None
        if page.next_before is not None:
            older = link({**values, "before": f"{page.next_before[0]}.{page.next_before[1]}"})
        return render_template(
            "timeline.html",
            rows=rows,
            older=older,
            partial=page.partial,
            scanned=page.scanned,
            first_page=before is None,
            newest=link(values),
            error=None,
            **base,
        )

    @app.get("/record/<int:record_id>")
    def record_page(record_id: int) -> str:
        with engine.connect() as conn:
            entry = db.get(conn, record_id)
        if entry is None:
            abort(404)
        record = entry.record
        cells = row(record)
        raw = orjson.dumps(record.document, option=orjson.OPT_INDENT_2).decode()
        links = {
            "object": link(object_filter(record)),
            "user": link({"user": record.user}) if record.user else None,
            "namespace": link({"namespace": record.namespace}) if record.namespace else None,
        }
        return render_template(
            "record.html",
            id=record_id,
            record=record,
            cells=cells,
            summary=summarise(record),
            diff=diff_lines(diff.render(record, include_status=False, keep_noise=False)),
            kubectl=kubectl.render(record),
            raw=raw,
            links=links,
            index=describe_index,
        )

    @app.errorhandler(404)
    def _not_found(_error: Exception) -> tuple[str, int]:
        return render_template("error.html", message="no such page or record"), 404

    return app


WsgiApp = Callable[..., Any]

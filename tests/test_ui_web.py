"""`kube-audit-rest ui` as users run it: escaping, Secrets, auth, headers, read-only, errors.

Each test starts the real command (indexer child process + gunicorn) on a
free port of 127.0.0.1 over a log written by the test.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from tests.support import CLI
from tests.ui_support import line, running_ui, ui_command, wait_for

XSS_NAME = "<script>alert(1)</script>"
XSS_ANNOTATION = '"><img src=x onerror=alert(2)>'
CLEAR = "c3VwZXItc2VjcmV0LXZhbHVl"  # what a log written with --no-redact-secrets holds
HMAC = "<redacted hmac-sha256:" + "ab" * 32 + ">"


def _secret_line() -> bytes:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "db-creds",
            "namespace": "shop",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
                    {"kind": "Secret", "data": {"password": CLEAR}}
                )
            },
        },
        "data": {"password": CLEAR, "username": HMAC},
        "stringData": {"token": "clear-text-token"},
    }
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "secret-1",
            "kind": {"group": "", "version": "v1", "kind": "Secret"},
            "resource": {"group": "", "version": "v1", "resource": "secrets"},
            "name": "db-creds",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "erin"},
            "object": secret,
        },
        "requestReceivedTimestamp": "2026-11-23T12:00:00Z",
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "kube-audit-rest.log"
    path.write_bytes(
        line("uid-0", stamp="2026-11-23T10:00:00Z")
        + line(
            "uid-xss",
            user=XSS_NAME,
            namespace="evil",
            name=XSS_NAME,
            stamp="2026-11-23T11:00:00Z",
            extra_object={"metadata": {"name": XSS_NAME, "annotations": {"a": XSS_ANNOTATION}}},
        )
        + _secret_line()
    )
    return path


def _wait_indexed(ui: object, count: int, headers: dict[str, str] | None = None) -> None:
    from tests.ui_support import Ui

    assert isinstance(ui, Ui)
    wait_for(lambda: ui.get("/", headers)[2].count('class="record-link"') >= count)


def test_attacker_controlled_names_are_shown_escaped(log: Path, tmp_path: Path) -> None:
    with running_ui(ui_command(log, tmp_path / "index")) as ui:
        _wait_indexed(ui, 3)
        status, headers, timeline = ui.get("/?namespace=evil")
        assert status == 200
        assert timeline.count('class="record-link"') == 1
        record_id = timeline.split('href="/record/')[1].split('"')[0]
        status, headers, page = ui.get(f"/record/{record_id}")
        assert status == 200
        for body in (timeline, page):
            assert "<script>alert" not in body
            assert "<img src=x" not in body
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        assert "&lt;img src=x onerror=alert(2)&gt;" in page  # the annotation, in the raw record
        # The links that carry the name are URL-encoded, never raw markup.
        assert "name=%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in page
        # No inline script or style anywhere, and a CSP that would block them.
        assert "<script" not in page and "style=" not in page
        csp = headers["Content-Security-Policy"]
        assert "script-src" not in csp and "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"


def test_secrets_appear_only_redacted_in_pages_and_index(log: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    with running_ui(ui_command(log, index)) as ui:
        _wait_indexed(ui, 3)
        status, _, timeline = ui.get("/?resource=secrets")
        assert status == 200 and timeline.count('class="record-link"') == 1
        record_id = timeline.split('href="/record/')[1].split('"')[0]
        _, _, page = ui.get(f"/record/{record_id}")
        assert "data.password" in page or "password" in page
        assert "&lt;redacted&gt;" in page
        assert "&lt;redacted hmac-sha256:" + "ab" * 32 + "&gt;" in page  # markers kept
        # The clear value is nowhere: not on the page, not findable by text.
        _, _, search = ui.get(f"/?q={CLEAR}")
        for body in (timeline, page):
            assert CLEAR not in body and "clear-text-token" not in body
        assert search.count('class="record-link"') == 0  # (the form echoes the search)
    stored = b"".join(p.read_bytes() for p in index.iterdir())
    assert CLEAR.encode() not in stored and b"clear-text-token" not in stored
    assert CLEAR.encode() in log.read_bytes()  # the log itself is left as it was


def test_bearer_token_accepts_the_token_and_rejects_anything_else(
    log: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-value\n")
    argv = ui_command(log, tmp_path / "index", "--auth-token-file", str(token_file))
    good = {"Authorization": "Bearer s3cret-token-value"}
    with running_ui(argv) as ui:
        _wait_indexed(ui, 3, good)
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer s3cret-token-valu"},
            {"Authorization": "Basic " + base64.b64encode(b"x:s3cret-token-value").decode()},
        ):
            status, response_headers, body = ui.get("/", headers)
            assert status == 401, headers
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
            assert "record-link" not in body
            assert response_headers["X-Frame-Options"] == "DENY"
        assert ui.get("/record/1", good)[0] == 200
        assert ui.get("/static/ui.css", {})[0] == 401


def test_basic_auth_from_a_file_plain_and_sha(log: Path, tmp_path: Path) -> None:
    users = tmp_path / "users"
    sha = base64.b64encode(hashlib.sha1(b"hunter2").digest()).decode()  # noqa: S324
    users.write_text(f"# team\nalice:correct horse\nbob:{{SHA}}{sha}\n")
    argv = ui_command(log, tmp_path / "index", "--basic-auth-file", str(users))

    def basic(user: str, password: str) -> dict[str, str]:
        credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {credentials}"}

    with running_ui(argv) as ui:
        _wait_indexed(ui, 3, basic("alice", "correct horse"))
        assert ui.get("/", basic("bob", "hunter2"))[0] == 200
        for headers in (
            {},
            basic("alice", "wrong"),
            basic("bob", "hunter3"),
            basic("carol", "correct horse"),
            basic("bob", "{SHA}" + sha),
            {"Authorization": "Basic !!!"},
        ):
            status, response_headers, _ = ui.get("/", headers)
            assert status == 401, headers
            assert response_headers["WWW-Authenticate"].startswith("Basic")


def test_read_only_and_bad_requests(log: Path, tmp_path: Path) -> None:
    before = log.read_bytes()
    with running_ui(ui_command(log, tmp_path / "index")) as ui:
        _wait_indexed(ui, 3)
        import urllib.error
        import urllib.request

        request = urllib.request.Request(ui.base + "/", data=b"x=1", method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=10)
        assert error.value.code == 405
        error.value.close()
        status, _, body = ui.get("/?verb=explode")
        assert status == 400 and "invalid --verb" in body
        assert ui.get("/?since=yesterday")[0] == 400
        assert ui.get("/?before=1.x")[0] == 400
        assert ui.get("/record/999999")[0] == 404
        stderr = ui.stderr.read_text()
    assert f"serving http://127.0.0.1:{ui.port}/" in stderr
    assert log.read_bytes() == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--retention", "soon"], "invalid --retention"),
        (["--db-url", "mysql://x/y"], "--db-url must be a postgresql://"),
        (["--port", "0"], "invalid --port"),
        (["--auth-token-file", "/nonexistent/token"], "cannot read /nonexistent/token"),
        (["--index-only", "--no-index"], "not allowed with"),
        (["--db-url", "postgresql://nobody@127.0.0.1:1/x"], "cannot open the index"),
    ],
)
def test_bad_flags_are_one_error_line_and_exit_2(
    args: list[str], needle: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [CLI, "ui", "--index-dir", str(tmp_path / "i"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("kube-audit-rest: error: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert needle in result.stderr


def test_bad_basic_auth_file_is_refused(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$apr1$xyz$abc\n")
    result = subprocess.run(
        [CLI, "ui", "--index-dir", str(tmp_path / "i"), "--basic-auth-file", str(users)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "only plain passwords and {SHA} hashes" in result.stderr

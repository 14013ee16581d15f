"""Golden outputs of ``kube-audit-rest query`` over the fixture logs.

The expected files are in tests/fixtures/query/expected/. After a deliberate
change of output, regenerate them and review the diff before committing:

    KUBE_AUDIT_REST_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_query_golden.py

Without that variable a missing or different expected file fails the test.
Independent checks below make sure the golden files say what the issue asks.
"""

from __future__ import annotations

import os
import shlex

import pytest

from tests.query_support import ACTIVE, BACKUPS, EVENTS, FIXTURES, fixture_log, query

EXPECTED = FIXTURES / "expected"
REGENERATE = os.environ.get("KUBE_AUDIT_REST_REGENERATE_GOLDEN") == "1"

CASES = {
    "log.table.txt": ("log", ()),
    "log.json.txt": ("log", ("-o", "json")),
    "log.yaml.txt": ("log", ("-o", "yaml")),
    "log.diff.txt": ("log", ("--diff",)),
    "log.kubectl.txt": ("log", ("-o", "kubectl")),
    "events.table.txt": ("events", ()),
    "events.json.txt": ("events", ("-o", "json")),
    "events.yaml.txt": ("events", ("-o", "yaml")),
    "events.diff.txt": ("events", ("--diff",)),
    "events.kubectl.txt": ("events", ("-o", "kubectl")),
}

WARNINGS = [
    f"kube-audit-rest: warning: {BACKUPS[1]}:5: not valid JSON, the line looks cut short (",
    f"kube-audit-rest: warning: {BACKUPS[1]}:9: neither an AdmissionReview nor an"
    " audit.k8s.io Event record",
]


def _run(source: str, args: tuple[str, ...]) -> str:
    result = fixture_log(*args) if source == "log" else query("--file", str(EVENTS), *args)
    assert result.code == 0, result.stderr
    if source == "log":
        warnings = result.stderr.splitlines()
        assert len(warnings) == len(WARNINGS)
        for warning, expected in zip(warnings, WARNINGS, strict=True):
            assert warning.startswith(expected), warning
    else:
        assert result.stderr == ""
    return result.stdout


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    source, args = CASES[name]
    output = _run(source, args)
    path = EXPECTED / name
    if REGENERATE:
        EXPECTED.mkdir(exist_ok=True)
        path.write_text(output, encoding="utf-8")
        pytest.skip(f"regenerated {path.name}")
    assert path.exists(), f"{path} is missing; see this module's docstring"
    assert output == path.read_text(encoding="utf-8")


def _golden(name: str) -> str:
    return (EXPECTED / name).read_text(encoding="utf-8")


def test_json_golden_is_the_record_lines_unchanged() -> None:
    """-o json without filters: every record line of backups then active file, byte for byte."""
    lines = []
    for path in (*BACKUPS, ACTIVE):
        lines += [
            line
            for line in path.read_bytes().splitlines(keepends=True)
            if b'"request"' in line or b'"auditID"' in line
        ]
    records = [line for line in lines if not line.endswith(b'"gro\n')]
    assert (EXPECTED / "log.json.txt").read_bytes() == b"".join(records)
    assert (EXPECTED / "events.json.txt").read_bytes() == EVENTS.read_bytes()


def test_table_golden_rows() -> None:
    table = _golden("log.table.txt").splitlines()
    assert table[0].split() == [
        "TIME",
        "CLUSTER",
        "USER",
        "VERB",
        "RESOURCE",
        "NAMESPACE/NAME",
        "CHANGE",
    ]
    assert len(table) == 1 + 30
    joined = "\n".join(table)
    for expected in ("replicas 2→3", "labels +tier=frontend", "deleted", "data.password changed"):
        assert expected in joined
    assert "<redacted" not in joined and "a1a1a1" not in joined


def test_kubectl_golden_commands() -> None:
    text = _golden("log.kubectl.txt") + _golden("events.kubectl.txt")
    lines = text.splitlines()
    for command in (
        "kubectl -n shop delete deployment web --cascade=foreground",
        "kubectl -n shop scale deployment web --replicas=3",
        "kubectl -n shop exec -it web-1 -c app -- sh",
        "kubectl -n shop label deployment web tier=frontend",
        "kubectl -n shop label deployment web app=shop-web tier- --overwrite",
        "kubectl -n shop annotate deployment web owner=team-a",
        "kubectl -n shop delete configmap web-config --dry-run=server",
        "kubectl -n shop apply --dry-run=server -f - <<'EOF'",
        "kubectl delete namespace old-shop",
        "kubectl apply -f - <<'EOF'",
        "kubectl -n shop2 exec -it api-1 -c main -- bash",
        "kubectl -n shop2 scale deployment api --replicas=5",
    ):
        assert command in lines
    declined = [line for line in lines if line.startswith("# no kubectl command: ")]
    assert any("status subresource" in line for line in declined)
    assert any("pods/binding" in line for line in declined)
    assert any("pods/eviction" in line for line in declined)
    assert any("redacted" in line for line in declined)
    exec_line = next(line for line in lines if "echo $HOME" in line)
    assert shlex.split(exec_line)[-3:] == ["sh", "-c", "echo $HOME; cat '/etc/app/config'"]


def test_diff_golden_never_shows_a_redacted_value() -> None:
    text = _golden("log.diff.txt")
    assert "hmac-sha256" not in text
    assert "-  password: <redacted, old value>\n+  password: <redacted, changed>\n" in text
    assert "  username: <redacted, unchanged>\n" in text
    assert "# data.token: redacted (cannot tell)\n" in text
    assert "managedFields" not in text and "resourceVersion" not in text

"""Filters of ``kube-audit-rest query``: globs, resources, verbs, time-window edges, free text.

Each test runs the real CLI over the fixture logs (tests/fixtures/query/) and
checks which records come out.
"""

from __future__ import annotations

import pytest

from kube_audit_rest.query.filters import Criteria, Pattern, ResourceSpec
from kube_audit_rest.query.records import parse_line
from kube_audit_rest.query.timeparse import parse_bound, parse_duration, parse_rfc3339
from tests.query_support import ACTIVE, EVENTS, fixture_log, names, query


def _rows(*args: str) -> list[str]:
    result = fixture_log(*args)
    assert result.code == 0, result.stderr
    return result.stdout.splitlines()[1:]


def test_user_exact_and_glob() -> None:
    assert {row.split()[2] for row in _rows("--user", "bob")} == {"bob"}
    assert len(_rows("--user", "bob")) == 2
    users = {row.split()[2] for row in _rows("--user", "system:serviceaccount:*")}
    assert users == {
        "system:serviceaccount:ci:deployer",
        "system:serviceaccount:kube-system:deployment-controller",
    }
    assert {row.split()[2] for row in _rows("--user", "system:node:node-[0-9]")} == {
        "system:node:node-1"
    }
    # Exact means exact: a prefix is not a match.
    assert _rows("--user", "ali") == []


def test_group_matches_any_of_the_users_groups() -> None:
    assert {row.split()[2] for row in _rows("--group", "ops")} == {"bob", "dave", "erin"}
    assert {row.split()[2] for row in _rows("--group", "system:serviceaccounts:c?")} == {
        "system:serviceaccount:ci:deployer"
    }


def test_namespace_name_and_globs() -> None:
    assert set(names(fixture_log("-n", "old-shop"))) == {"old-shop"}
    assert set(names(fixture_log("--name", "web-?"))) == {"shop/web-1", "shop/web-2"}
    assert set(names(fixture_log("--name", "*-config", "--operation", "DELETE"))) == {
        "shop/web-config"
    }
    shop = names(fixture_log("-n", "shop"))
    assert len(shop) == 28 and all(name.startswith("shop/") for name in shop)


def test_prefilter_does_not_hide_an_escaped_value() -> None:
    """The fixture's ``escaped`` ConfigMap spells its namespace ``sh\\u006fp``."""
    assert "shop/escaped" in names(fixture_log("-n", "shop"))
    assert "shop/escaped" in names(fixture_log("-n", "sh?p", "--name", "esc*"))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("deployments", 9),
        ("apps/deployments", 9),
        ("deployments.apps", 9),
        ("apps/deployments/scale", 1),
        ("deployments/scale", 1),
        ("pods/exec", 2),
        ("pods", 8),
        ("certificates", 2),
        ("cert-manager.io/certificates", 2),
        ("core/certificates", 0),
        ("pods.core", 8),
        ("serviceaccounts/token", 1),
        ("*/scale", 1),
        ("*/*/scale", 1),
        ("pods/e*", 3),
        ("*.cert-manager.io", 2),
    ],
)
def test_resource_forms(spec: str, expected: int) -> None:
    assert len(_rows("--resource", spec)) == expected


def test_operation_and_verb() -> None:
    assert len(_rows("--operation", "DELETE")) == 5
    assert len(_rows("--operation", "connect")) == 4
    assert len(_rows("--operation", "CREATE,DELETE")) == 15
    assert {row.split()[3] for row in _rows("--verb", "patch")} == {"patch"}
    assert len(_rows("--verb", "patch")) == 7
    assert len(_rows("--verb", "update")) == 4
    assert len(_rows("--verb", "connect")) == 4
    events = query("--file", str(EVENTS), "--verb", "connect")
    assert names(events) == ["shop2/api-1"]  # the exec, recorded with verb create


def test_cluster_and_dry_run() -> None:
    assert len(_rows("--cluster", "prod")) == 5
    assert len(_rows("--cluster", "p*")) == 5
    assert _rows("--cluster", "staging") == []
    dry = _rows("--dry-run")
    assert len(dry) == 2 and all("(dry run)" in row for row in dry)
    assert len(_rows("--no-dry-run")) == 28
    assert len(query("--file", str(EVENTS), "--dry-run").stdout.splitlines()) == 2


def test_free_text_positional_and_grep() -> None:
    assert names(fixture_log("node-2")) == ["shop/web-2"]
    assert names(fixture_log("--grep", "letsencrypt")) == ["shop/web-tls", "shop/web-tls"]
    # Several texts must all be in the line.
    assert names(fixture_log("letsencrypt", "DELETE")) == ["shop/web-tls"]


def test_time_window_edges_are_inclusive_then_exclusive() -> None:
    since = _rows("--since", "2026-11-23T14:10:00Z")
    assert since[0].startswith("2026-11-23T14:10:00Z")
    assert len(since) == 9
    until = _rows("--until", "2026-11-23T10:05:00.5Z")
    assert [row.split()[0] for row in until] == ["2026-11-23T10:00:00Z"]
    assert len(_rows("--until", "2026-11-23T10:05:00.500000001Z")) == 2
    # Offsets are honoured: 11:00+01:00 is 10:00Z.
    assert (
        len(_rows("--since", "2026-11-23T11:00:00+01:00", "--until", "2026-11-23T10:00:01Z")) == 1
    )
    # Nanoseconds: the last record is at 14:20:30.000000001Z.
    last = "2026-11-23T14:20:30"
    assert _rows("--since", last + ".000000002Z") == []
    assert len(_rows("--since", last + ".000000001Z")) == 1
    assert len(_rows("--until", last + ".000000001Z", "--since", last + "Z")) == 0
    assert len(_rows("--until", last + ".000000002Z", "--since", last + "Z")) == 1


def test_since_a_duration_is_relative_to_now() -> None:
    # Fixture records are from 2026-11-23; nothing is from the last two hours of any later day.
    assert _rows("--since", "2h", "--until", "2026-11-23T00:00:00Z") == []
    assert len(_rows("--until", "1h")) == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--since", "yesterday"), "invalid --since 'yesterday'"),
        (("--until", "2026-13-01T00:00:00Z"), "invalid --until"),
        (("--operation", "PATCH"), "invalid --operation 'PATCH'"),
        (("--verb", "scale"), "invalid --verb 'scale'"),
        (("--resource", "a/b/c/d"), "invalid --resource"),
        (("-o", "csv"), "invalid choice: 'csv'"),
        (("--diff", "-o", "json"), "--diff"),
        (("--include-status",), "only apply to --diff"),
        (("--no-such-flag",), "unrecognized arguments"),
        (("--file", "/nonexistent/audit.log"), "cannot read /nonexistent/audit.log"),
    ],
)
def test_bad_flags_give_one_error_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    result = query("--file", str(ACTIVE), *args)
    assert result.code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kube-audit-rest: error: query: ")
    assert message in lines[0]


def test_missing_default_log_is_an_error(tmp_path: object) -> None:
    result = query("--logger-filename", f"{tmp_path}/none.log")
    assert result.code == 2
    assert "no log at" in result.stderr


def test_pattern_and_needles() -> None:
    assert Pattern("alice")("alice") and not Pattern("alice")("alice2")
    assert Pattern("a*e")("alice") and not Pattern("A*")("alice")
    assert Pattern("alice").needles() == (b'"alice"',)
    assert Pattern("system:serviceaccount:*:deployer").needles() == (
        b"system:serviceaccount:",
        b":deployer",
    )
    assert Pattern("web-[0-9]?x").needles() == (b"web-", b"x")
    assert Pattern("we b").needles() is None  # not plain: no byte test, always parsed
    assert Pattern("*").needles() is None


def test_time_prefilter_reads_the_key_only_when_it_is_unique() -> None:
    criteria = Criteria(since_ns=parse_rfc3339("2026-11-23T14:00:00Z"))
    criteria.prepare()
    line = ACTIVE.read_bytes().splitlines()[0]  # 14:00:00Z
    assert criteria.may_match(line)
    earlier = line.replace(b"14:00:00Z", b"13:59:59Z")
    assert not criteria.may_match(earlier)
    # A nested key of the same name: the bytes cannot tell which is the record's.
    nested = earlier.replace(
        b'"data":{', b'"data":{"requestReceivedTimestamp":"2030-01-01T00:00:00Z",'
    )
    assert nested != earlier and criteria.may_match(nested)
    assert not criteria.matches(parse_line(nested))


def test_criteria_prefilter_is_only_a_necessary_condition() -> None:
    criteria = Criteria(namespaces=[Pattern("shop")])
    criteria.prepare()
    line = ACTIVE.read_bytes().splitlines()[0]
    assert criteria.may_match(line) and criteria.matches(parse_line(line))
    other = line.replace(b'"shop"', b'"shap"')
    assert not criteria.may_match(other)
    escaped = line.replace(b'"shop"', b'"sh\\u006fp"')
    assert criteria.may_match(escaped) and criteria.matches(parse_line(escaped))


def test_resource_spec_alternatives() -> None:
    spec = ResourceSpec.parse("pods/exec")
    assert (None, "pods", "exec") in spec.alternatives
    assert ("pods", "exec", None) in spec.alternatives
    with pytest.raises(ValueError, match="invalid --resource"):
        ResourceSpec.parse("/pods")


def test_time_parsing() -> None:
    assert parse_rfc3339("1970-01-01T00:00:01Z") == 10**9
    assert parse_rfc3339("1970-01-01T01:00:00+01:00") == 0
    assert parse_rfc3339("1970-01-01T00:00:00.123456789Z") == 123456789
    assert parse_rfc3339("2026-02-30T00:00:00Z") is None
    assert parse_rfc3339("2026-01-01T00:00:00") is None  # a zone is required
    assert parse_duration("1h30m") == 5400 * 10**9
    assert parse_duration("90s") == 90 * 10**9
    assert parse_duration("2h junk") is None and parse_duration("") is None
    assert parse_bound("2h", 10 * 3600 * 10**9) == 8 * 3600 * 10**9

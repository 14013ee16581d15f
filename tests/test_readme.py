"""The README documents every option, environment variable and metric the code defines.

Options come from ``config.OPTIONS``, the table that also builds the command
line. Metric names are read from the source of ``metrics.py`` and
``process_metrics.py`` rather than by creating the metrics, which would need
prometheus_client's multiprocess set-up.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kube_audit_rest.config import OPTIONS, Option

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
METRIC_SOURCES = (
    ROOT / "kube_audit_rest" / "metrics.py",
    ROOT / "kube_audit_rest" / "process_metrics.py",
)

QUICK_START_COMMANDS = [
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/kube-audit-rest --self-signed",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
]

# A metric constructor call and the name it is given, e.g. Counter("kube_audit_rest_x", ...).
_METRIC_CALL = re.compile(
    r"\b(Counter|Gauge|Histogram|Summary|CounterMetricFamily|GaugeMetricFamily"
    r"|HistogramMetricFamily|SummaryMetricFamily)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)
_KIND = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "HistogramMetricFamily": "histogram",
    "Summary": "summary",
    "SummaryMetricFamily": "summary",
}
_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`]+)`")


def section(title: str) -> str:
    """The text of the ``## title`` section, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of the body rows of the Markdown tables in *text*."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def code_spans(cell: str) -> list[str]:
    return _CODE_SPAN.findall(cell)


def exposed_metrics() -> dict[str, str]:
    """Metric name as /metrics shows it -> kind, parsed from the source."""
    found: dict[str, str] = {}
    for path in METRIC_SOURCES:
        for constructor, name in _METRIC_CALL.findall(path.read_text(encoding="utf-8")):
            kind = _KIND[constructor]
            if kind == "counter":
                # prometheus_client adds the _total suffix to counters.
                name = name.removesuffix("_total") + "_total"
            found[name] = kind
    return found


def rendered_default(option: Option) -> str | None:
    """How the README spells an option's default; None when it is computed."""
    value = option.default
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def option_row(option: Option) -> list[str]:
    for row in table_rows(section("Configuration")):
        if set(code_spans(row[0])) == set(option.flags):
            return row
    raise AssertionError(f"no Configuration table row for {', '.join(option.flags)}")


@pytest.mark.parametrize("option", OPTIONS, ids=[option.name for option in OPTIONS])
def test_option_is_documented(option: Option) -> None:
    row = option_row(option)
    assert len(row) == 4, row
    assert code_spans(row[1]) == [option.env]
    default = rendered_default(option)
    if default is not None:
        assert f"`{default}`" in row[2], f"default of {option.flags[-1]} should be {default}"
    assert row[3], f"{option.flags[-1]} has no description"
    if option.go_compatible:
        assert row[3].startswith("Go."), f"{option.flags[-1]} is one of the Go original's flags"
    else:
        assert not row[3].startswith("Go.")


def test_every_flag_and_env_var_appears() -> None:
    for option in OPTIONS:
        for flag in option.flags:
            assert f"`{flag}`" in README, flag
        assert f"`{option.env}`" in README, option.env


def test_configuration_table_lists_only_real_options() -> None:
    known = {flag for option in OPTIONS for flag in option.flags}
    documented = [
        span for row in table_rows(section("Configuration")) for span in code_spans(row[0])
    ]
    assert documented, "the Configuration table is missing"
    assert set(documented) <= known
    assert len(documented) == len(known), "an option is listed twice"


def test_metric_names_are_parsed() -> None:
    # Guards the regex: if it stopped matching, the tests below would pass vacuously.
    metrics = exposed_metrics()
    assert metrics["kube_audit_rest_http_requests_total"] == "counter"
    assert metrics["kube_audit_rest_valid_requests_processed_total"] == "counter"
    assert metrics["kube_audit_rest_request_duration_seconds"] == "histogram"
    assert metrics["process_cpu_seconds_total"] == "counter"
    assert metrics["process_resident_memory_bytes"] == "gauge"


def test_every_metric_is_documented_with_its_type() -> None:
    rows = {
        code_spans(row[0])[0]: row for row in table_rows(section("Metrics")) if code_spans(row[0])
    }
    for name, kind in exposed_metrics().items():
        assert name in rows, f"metric {name} is missing from the Metrics table"
        assert rows[name][1] == kind, f"{name} is a {kind}"
        assert rows[name][2], f"{name} has no description"
    assert set(rows) == set(exposed_metrics()), "the Metrics table lists unknown metrics"


def test_quick_start_has_exactly_the_two_commands() -> None:
    text = section("Quick start")
    blocks = _FENCE.findall(text)
    commands = [body.rstrip("\n") for language, body in blocks if language in ("sh", "shell")]
    assert commands == QUICK_START_COMMANDS
    for command in commands:
        assert "\n" not in command
    # Any other block only shows what those commands lead to, and runs no setup.
    others = [body for language, body in blocks if language not in ("sh", "shell")]
    for body in others:
        assert "pip install" not in body and "venv" not in body

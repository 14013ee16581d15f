"""Policy, redaction and their reload against the real server: CLI, gunicorn, TLS, files."""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import StartServer
from tests.support import Pair, Server, review
from tests.test_lifecycle import _base_args, run_cli
from tests.test_tls import events_named, log_events, metric, wait_for

LOADED = "privacy configuration loaded"
RELOAD_FAILED = "privacy configuration reload failed; keeping the previous one"
RELOAD_FAILURES = "kube_audit_rest_config_reload_failures_total"

KEEP_ALL = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: RequestResponse\n"
DROP_CONFIGMAPS = (
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n"
    "- level: None\n  resources:\n  - group: ''\n    resources: [configmaps]\n"
    "- level: RequestResponse\n"
)


def configmap_review(uid: str) -> bytes:
    return review(
        uid,
        resource={"group": "", "version": "v1", "resource": "configmaps"},
        namespace="default",
        name="c",
        userInfo={"username": "alice", "groups": ["system:authenticated"]},
        object={"metadata": {"name": "c"}, "data": {"k": "v"}},
    )


def uids(server: Server) -> list[str]:
    if not server.log_path.exists():
        return []
    return [record["request"]["uid"] for record in server.records()]


def worker_pids(server: Server) -> set[int]:
    return {
        int(str(event["event"]).rsplit(" ", 1)[1])
        for event in log_events(server)
        if str(event.get("event")).startswith("Booting worker with pid")
    }


def loaded_pids(server: Server) -> list[int]:
    return [int(event["pid"]) for event in events_named(server, LOADED)]


class ConfigMap:
    """A folder laid out like a mounted ConfigMap: files link through a swapped ``..data``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.name = name
        folder.mkdir()
        self.path = folder / name

    def publish(self, version: str, text: str) -> None:
        target = self.folder / f"..{version}"
        target.mkdir()
        (target / self.name).write_text(text)
        temporary = self.folder / "..data_tmp"
        temporary.symlink_to(target.name)
        os.replace(temporary, self.folder / "..data")
        if not self.path.is_symlink():
            self.path.symlink_to(Path("..data") / self.name)


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize(
    ("name", "text", "flag", "message"),
    [
        (
            "policy.yaml",
            KEEP_ALL + "- level: Metadata\n- level: Everything\n",
            "--policy-file",
            "policy.yaml: rules[2].level: must be one of None, Metadata, Request, RequestResponse",
        ),
        (
            "policy.json",
            '{"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": 3}]}',
            "--policy-file",
            "policy.json: rules[0].level: must be a string, got a number",
        ),
        (
            "redact.yaml",
            "- {group: db.example.com, resource: databases, paths: ['spec..password']}\n",
            "--redaction-file",
            "redact.yaml: [0].paths[0]: 'spec..password' has an empty segment",
        ),
        ("key", "", "--redact-hmac-key-file", "key: the HMAC key file is empty"),
        (None, "", "--policy-file", "missing.yaml: cannot read: No such file or directory"),
    ],
)
def test_invalid_file_stops_start_up_with_one_line(
    pair: Pair, tmp_path: Path, name: str | None, text: str, flag: str, message: str
) -> None:
    path = tmp_path / (name or "missing.yaml")
    if name:
        path.write_text(text)
    result = run_cli(*_base_args(pair, tmp_path), f"{flag}={path}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kube-audit-rest: error: ")
    assert lines[0].endswith(message)
    assert str(tmp_path) in lines[0]


def test_warnings_at_start_for_disabled_redaction_and_ignored_fields(
    start: StartServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(KEEP_ALL.replace("rules:", "omitStages: [RequestReceived]\nrules:"))
    server = start("--workers=1", "--no-redact-secrets", f"--policy-file={policy}")
    warnings = [e["event"] for e in log_events(server) if e.get("level") == "warning"]
    assert any("Secret redaction is OFF" in w for w in warnings), warnings
    assert any("omitStages: ignored" in w for w in warnings), warnings
    body = review(
        "s", resource={"group": "", "resource": "secrets"}, object={"data": {"k": "djE="}}
    )
    assert server.post(body).status == 200
    assert server.records()[0]["request"]["object"]["data"] == {"k": "djE="}


# --------------------------------------------------------------------------- end to end


PASSWORDS = ["s3cr3t-database-pw", "hunter2-old-value", "string-data-token", "applied-api-key"]


def secret_body(uid: str, pad: int) -> bytes:
    new_pw, old_pw, token, applied_key = PASSWORDS
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db"},
        "data": {"apiKey": base64.b64encode(applied_key.encode()).decode()},
    }
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "resource": {"group": "", "version": "v1", "resource": "secrets"},
            "namespace": "prod",
            "name": "db",
            "operation": "UPDATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": {
                "metadata": {
                    "name": "db",
                    "annotations": {
                        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(applied),
                        "padding": "x" * pad,
                    },
                },
                "data": {"password": base64.b64encode(new_pw.encode()).decode()},
                "stringData": {"token": token},
            },
            "oldObject": {
                "metadata": {"name": "db"},
                "data": {"password": base64.b64encode(old_pw.encode()).decode()},
            },
        },
    }
    return json.dumps(document).encode()


def database_body(uid: str) -> bytes:
    return review(
        uid,
        resource={"group": "db.example.com", "version": "v1", "resource": "databases"},
        object={"spec": {"password": "crd-password-value", "users": [{"password": "crd-user-pw"}]}},
    )


def forbidden_values() -> list[bytes]:
    found = [value.encode() for value in PASSWORDS]
    found += [base64.b64encode(value.encode()) for value in PASSWORDS]
    return [*found, b"crd-password-value", b"crd-user-pw"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_no_secret_value_reaches_any_written_file(start: StartServer, tmp_path: Path) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(b"an hmac key that must not be logged")
    rules = tmp_path / "redact.yaml"
    rules.write_text(
        "- group: db.example.com\n  resource: databases\n"
        "  paths: [spec.password, 'spec.users.*.password']\n"
    )
    server = start(
        "--workers=2",
        "-v",
        "--logger-max-size=1",
        "--logger-max-backups=0",
        f"--redaction-file={rules}",
        f"--redact-hmac-key-file={key}",
    )
    sent = 0
    for index in range(14):  # about 1.4 MiB: at least one rotation
        body = secret_body(f"secret-{index}", pad=100_000)
        sent += len(body)
        assert server.post(body).status == 200
    assert server.post(database_body("db-1")).status == 200
    assert server.post(b'{"request": {"uid": "plain"}}').status == 200
    assert server.stop() == 0

    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".txt")]
    backups = [p for p in written if p.name.startswith("audit-")]
    assert backups, "the test should have rotated the log"
    assert server.stderr_path in written and server.log_path in written
    for path in written:
        data = path.read_bytes()
        for value in [*forbidden_values(), key.read_bytes()]:
            assert value not in data, f"{value!r} found in {path.name}"
    records = [
        json.loads(line)
        for p in sorted(written)
        if p.suffix == ".log"
        for line in p.read_bytes().splitlines()
    ]
    assert len(records) == 16
    markers = {
        r["request"]["object"]["data"]["password"]
        for r in records
        if "secret" in r["request"]["uid"]
    }
    assert len(markers) == 1 and next(iter(markers)).startswith("<redacted hmac-sha256:")


@pytest.mark.timeout(60)
def test_metrics_count_redacted_dropped_and_received(start: StartServer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DROP_CONFIGMAPS)
    server = start("--workers=2", f"--policy-file={policy}", "--drop-dry-run")
    bodies = [secret_body("s-1", pad=0), configmap_review("cm-1"), review("dry", dryRun=True)]
    for body in bodies:
        assert server.post(body).status == 200
    assert server.post(review("kept", object={"x": 1})).status == 200
    assert uids(server) == ["s-1", "kept"]
    samples = server.metrics()
    assert samples['kube_audit_rest_dropped_records_total{reason="policy",rule="0"}'] == 1
    assert samples['kube_audit_rest_dropped_records_total{reason="dry_run",rule=""}'] == 1
    assert samples["kube_audit_rest_redacted_records_total"] == 1
    received = sum(map(len, bodies)) + len(review("kept", object={"x": 1}))
    assert samples["kube_audit_rest_received_bytes_total"] == received
    assert samples["kube_audit_rest_written_bytes_total"] == server.log_path.stat().st_size
    assert samples["kube_audit_rest_valid_requests_processed_total"] == 2


# --------------------------------------------------------------------------- reload


def wait_all_loaded(server: Server, before: int, resend: bool = True) -> None:
    """Every worker logged a load after *before* loads; SIGHUP again if one missed it.

    A SIGHUP that reaches a worker in the instant between its fork and its
    signal set-up is lost, so the signal is re-sent while waiting.
    """
    deadline = time.monotonic() + 15
    while set(loaded_pids(server)[before:]) < worker_pids(server):
        assert time.monotonic() < deadline, f"not every worker reloaded:\n{server.stderr()}"
        if resend:
            server.process.send_signal(signal.SIGHUP)
        time.sleep(0.5)


@pytest.mark.timeout(90)
def test_sighup_reloads_every_worker_without_restarting_it(
    start: StartServer, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DROP_CONFIGMAPS)
    # A long polling interval: only the signal can explain a reload.
    server = start("--workers=2", f"--policy-file={policy}", "--config-reload-interval=3600")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "both workers to start")
    pids = worker_pids(server)
    for n in range(4):
        assert server.post(configmap_review(f"dropped-{n}")).status == 200
    assert uids(server) == []

    policy.write_text(KEEP_ALL)
    server.process.send_signal(signal.SIGHUP)
    wait_all_loaded(server, before=0)
    for n in range(6):  # fresh connections, spread over both workers
        assert server.post(configmap_review(f"kept-{n}")).status == 200
    assert uids(server) == [f"kept-{n}" for n in range(6)]
    assert worker_pids(server) == pids, "SIGHUP must not restart the workers"
    assert server.process.poll() is None
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_configmap_symlink_swap_and_a_bad_version_keeps_the_old_policy(
    start: StartServer, tmp_path: Path
) -> None:
    mount = ConfigMap(tmp_path / "policy", "policy.yaml")
    mount.publish("2026_a", DROP_CONFIGMAPS)
    server = start("--workers=2", f"--policy-file={mount.path}", "--config-reload-interval=0.2")
    wait_for(lambda: len(worker_pids(server)) == 2, 10, "both workers to start")
    time.sleep(0.5)
    assert server.post(configmap_review("a-dropped")).status == 200
    assert uids(server) == []

    # A broken version: refused by each worker, logged and counted; A stays in force.
    mount.publish("2026_b", KEEP_ALL + "- level: Loud\n")
    wait_for(lambda: len(events_named(server, RELOAD_FAILED)) == 2, 10, "both workers to refuse")
    failures = events_named(server, RELOAD_FAILED)
    assert all("rules[1].level: must be one of" in event["error"] for event in failures)
    assert {event["level"] for event in failures} == {"error"}
    assert metric(server, RELOAD_FAILURES) == 2
    for n in range(4):
        assert server.post(configmap_review(f"b-dropped-{n}")).status == 200
    assert uids(server) == []
    # SIGHUP with the same broken files: refused again, still A.
    server.process.send_signal(signal.SIGHUP)
    wait_for(lambda: len(events_named(server, RELOAD_FAILED)) == 4, 10, "a refusal per worker")
    assert server.post(configmap_review("b-still-dropped")).status == 200
    assert uids(server) == []
    time.sleep(1)  # several polls: an unchanged bad version is not logged again
    assert len(events_named(server, RELOAD_FAILED)) == 4

    # A good version after the broken one is picked up by every worker.
    before = len(loaded_pids(server))
    mount.publish("2026_c", KEEP_ALL)
    wait_all_loaded(server, before, resend=False)
    for n in range(6):
        assert server.post(configmap_review(f"c-kept-{n}")).status == 200
    assert uids(server) == [f"c-kept-{n}" for n in range(6)]
    assert metric(server, RELOAD_FAILURES) == 4


def test_workers_started_on_broken_files_keep_serving(start: StartServer, tmp_path: Path) -> None:
    """A worker replaced while the file is broken serves the start-up policy instead of dying."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(DROP_CONFIGMAPS)
    server = start("--workers=1", f"--policy-file={policy}", "--config-reload-interval=3600")
    wait_for(lambda: len(worker_pids(server)) == 1, 10, "the worker to start")
    [first] = worker_pids(server)
    policy.write_text("rules: [")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len(worker_pids(server)) == 2, 20, "a new worker")
    server.wait_ready()
    wait_for(lambda: server.post(configmap_review("x")).status == 200, 10, "the new worker")
    assert uids(server) == []
    assert server.post(review("other")).status == 200
    assert uids(server) == ["other"]
    assert any(
        "using the configuration checked at start-up" in str(e.get("event"))
        for e in log_events(server)
    )
    assert server.process.poll() is None


def test_policy_file_from_environment(start: StartServer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(DROP_CONFIGMAPS)
    server = start("--workers=1", env={"KUBE_AUDIT_REST_POLICY_FILE": str(policy)})
    assert server.post(configmap_review("cm")).status == 200
    assert server.post(review("pod")).status == 200
    assert uids(server) == ["pod"]

"""Helpers for the UI tests: records, the `ui` command, and a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import CLI, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def line(
    uid: str,
    *,
    user: str = "alice",
    namespace: str = "shop",
    name: str = "web",
    resource: str = "deployments",
    group: str = "apps",
    operation: str = "UPDATE",
    stamp: str = "2026-11-23T10:00:00Z",
    replicas: tuple[int, int] = (2, 3),
    kind: str = "Deployment",
    extra_object: dict[str, Any] | None = None,
) -> bytes:
    """One AdmissionReview line as the server writes it (compact, time last)."""
    old = {
        "apiVersion": f"{group}/v1" if group else "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas[0]},
    }
    new = json.loads(json.dumps(old))
    new["spec"]["replicas"] = replicas[1]
    if extra_object:
        new.update(extra_object)
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": group, "version": "v1", "kind": kind},
        "resource": {"group": group, "version": "v1", "resource": resource},
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": user, "groups": ["system:authenticated"]},
        "object": new if operation != "DELETE" else None,
        "oldObject": old if operation != "CREATE" else None,
        "dryRun": False,
    }
    document = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
        "requestReceivedTimestamp": stamp,
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def stamp(i: int) -> str:
    """A distinct, increasing time for record *i* (one per second from 2026-11-23)."""
    seconds = 1795392000 + i  # 2026-11-23T00:00:00Z
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{i % 1000:03d}000000Z"


def lines(start: int, count: int) -> bytes:
    return b"".join(
        line(f"uid-{i}", user=f"user-{i % 7}", name=f"app-{i % 11}", stamp=stamp(i))
        for i in range(start, start + count)
    )


def ui_command(log: Path, index: Path | None, *extra: str, db_url: str | None = None) -> list[str]:
    argv = [CLI, "ui", "--logger-filename", str(log)]
    if db_url:
        argv += ["--db-url", db_url]
    else:
        assert index is not None
        argv += ["--index-dir", str(index)]
    return argv + list(extra)


def run_indexer(argv: list[str], stderr: Path | None = None) -> subprocess.Popen[bytes]:
    """``ui --index-only``; its stderr goes to *stderr* (a file) or the test's own."""
    if stderr is None:
        return subprocess.Popen([*argv, "--index-only"])
    with stderr.open("ab") as handle:
        return subprocess.Popen([*argv, "--index-only"], stderr=handle)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def wait_for(check: Any, timeout: float = 60.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {check}")
        time.sleep(every)


@dataclass
class Ui:
    process: subprocess.Popen[bytes]
    port: int
    stderr: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read().decode()


@contextlib.contextmanager
def running_ui(argv: list[str], ready_path: str = "/healthz", **get_headers: str) -> Iterator[Ui]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="kar-ui-", suffix=".stderr")[1])
    with log.open("wb") as handle:
        process = subprocess.Popen([*argv, "--port", str(port)], stderr=handle)
    ui = Ui(process, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(log.read_text())
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            if time.monotonic() > deadline:
                raise AssertionError("the UI did not start listening")
            time.sleep(0.1)
        yield ui
    finally:
        stop(process)
        log.unlink()


# --- PostgreSQL ----------------------------------------------------------------------


@dataclass
class Postgres:
    url: str


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster on a free port (as user postgres when run as root)."""
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not (initdb.exists() and pg_ctl.exists()):
        pytest.skip(f"PostgreSQL 15 binaries not found in {PG_BIN} (apt-get install -y postgresql)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        if runuser is None:
            pytest.skip("running as root and runuser is missing")
        as_user = [runuser, "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="kar-pg-"))
    data = folder / "data"
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], capture_output=True, timeout=120, check=True)

    run(str(initdb), "-D", str(data), "-U", "kar", "--auth=trust", "-E", "UTF8")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_log = str(folder / "log")
    run(str(pg_ctl), "-D", str(data), "-o", options, "-w", "-l", pg_log, "start")
    try:
        yield Postgres(f"postgresql://kar@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run(
            [*as_user, str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(folder, ignore_errors=True)

"""Test helpers: certificates, a running server process, an HTTPS client, metrics."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

CLI = str(Path(sys.executable).with_name("kube-audit-rest"))
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


@dataclass(frozen=True)
class Pair:
    """A CA and a serving certificate it signed, written to a folder."""

    ca_path: Path
    cert_path: Path
    key_path: Path
    not_after: float


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pair(folder: Path, days: int = 30) -> Pair:
    """A fresh CA and a localhost serving certificate signed by it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {folder.name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = (now + datetime.timedelta(days=days)).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pair = Pair(folder / "ca.crt", folder / "tls.crt", folder / "tls.key", not_after.timestamp())
    pair.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pair.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key_path.write_bytes(_key_pem(key))
    pair.key_path.chmod(0o600)
    return pair


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def client_context(ca_path: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_path))
    return context


def review(uid: str, api_version: str = "admission.k8s.io/v1", **extra: Any) -> bytes:
    document: dict[str, Any] = {
        "kind": "AdmissionReview",
        "apiVersion": api_version,
        "request": {"uid": uid, "operation": "CREATE", **extra},
    }
    return json.dumps(document).encode()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    """The CLI running as a subprocess, as a user starts it."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    ca_path: Path
    log_path: Path
    stderr_path: Path
    stdout_path: Path
    _connections: list[http.client.HTTPSConnection] = field(default_factory=list)

    def connection(self, timeout: float = 10.0) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection(
            "localhost", self.port, context=client_context(self.ca_path), timeout=timeout
        )
        self._connections.append(conn)
        return conn

    def post(
        self,
        body: bytes,
        path: str = "/log-request",
        content_type: str | None = "application/json",
        conn: http.client.HTTPSConnection | None = None,
        method: str = "POST",
    ) -> Response:
        conn = conn or self.connection()
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)

    def metrics_text(self, path: str = "/metrics") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample as name{labels} -> value."""
        _, text = self.metrics_text()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                key = f"{sample.name}{{{labels}}}" if labels else sample.name
                samples[key] = sample.value
        return samples

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_bytes().splitlines()]

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.stderr()}")
            try:
                status, _ = self.metrics_text("/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        for conn in self._connections:
            conn.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def start_server(
    tmp_path: Path,
    pair: Pair,
    args: Sequence[str] = (),
    command: Sequence[str] = (CLI,),
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> Server:
    port, metrics_port = free_port(), free_port()
    log_path = tmp_path / "audit.log"
    argv = [
        *command,
        f"--server-port={port}",
        f"--metrics-port={metrics_port}",
        "--server-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--cert-filename={pair.cert_path}",
        f"--cert-key-filename={pair.key_path}",
        f"--logger-filename={log_path}",
        *args,
    ]
    stdout_path, stderr_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            argv, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=tmp_path
        )
    server = Server(process, port, metrics_port, pair.ca_path, log_path, stderr_path, stdout_path)
    if wait:
        server.wait_ready()
    return server

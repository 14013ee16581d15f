"""TLS end to end: untrusted clients, certificate reloads from a mounted Secret, slow clients.

Every test starts the real CLI (gunicorn, its workers, the metrics process)
with certificates made here, and talks to it over real sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.support import Pair, Server, client_context, make_pair, review

HANDSHAKE_FAILURES = "kube_audit_rest_tls_handshake_failures_total"
EXPIRY = "kube_audit_rest_certificate_expiry_timestamp_seconds"
RELOAD_FAILURES = "kube_audit_rest_certificate_reload_failures_total"
READ_TIMEOUTS = 'kube_audit_rest_connection_timeouts_total{phase="read"}'
HANDSHAKE_TIMEOUTS = 'kube_audit_rest_connection_timeouts_total{phase="handshake"}'
RELOADED = "serving a new certificate"
RELOAD_FAILED = "certificate reload failed; still serving the previous pair"
RELOAD_INTERVAL = 0.2


# --- helpers -------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll *condition* until it holds; return the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def metric(server: Server, name: str) -> float:
    """A sample's value; a labelled counter never incremented has no sample yet: 0."""
    return server.metrics().get(name, 0.0)


def log_events(server: Server) -> list[dict[str, Any]]:
    """stderr as JSON objects; every line of the default (non -v) mode must be one."""
    events = []
    for line in server.stderr().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            pytest.fail(f"stderr line is not JSON: {line!r}")
        assert isinstance(event, dict), f"stderr line is not a JSON object: {line!r}"
        events.append(event)
    return events


def events_named(server: Server, name: str) -> list[dict[str, Any]]:
    return [event for event in log_events(server) if event.get("event") == name]


def tls_connect(port: int, ca_path: Path, timeout: float = 5.0) -> ssl.SSLSocket:
    """A new connection to the webhook port, verified against *ca_path* only."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return client_context(ca_path).wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def verifies_with(port: int, ca_path: Path) -> bool:
    """Whether a new connection's certificate chains to *ca_path*."""
    try:
        with tls_connect(port, ca_path):
            return True
    except ssl.SSLCertVerificationError:
        return False


def post_with(server: Server, ca_path: Path, uid: str) -> int:
    """POST one review over a new connection that trusts only *ca_path*; the status."""
    with tls_connect(server.port, ca_path) as tls:
        body = review(uid)
        tls.sendall(
            b"POST /log-request HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def closed_by_peer(sock: socket.socket) -> bool:
    """Read once (within the socket's timeout): True on EOF or reset, False on timeout."""
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    assert data == b"", f"expected the server to close the connection, got {data!r}"
    return True


class Secret:
    """A folder laid out like a mounted Kubernetes Secret.

    ``..<version>/`` folders hold the files, ``..data`` links to the current
    one, and ``tls.crt``/``tls.key`` link through ``..data``. An update writes
    a new version folder and swaps ``..data`` atomically, as the kubelet does.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.cert_path = folder / "tls.crt"
        self.key_path = folder / "tls.key"

    def publish(self, version: str, cert: Path, key: Path) -> None:
        target = self.folder / f"..{version}"
        target.mkdir()
        shutil.copyfile(cert, target / "tls.crt")
        shutil.copyfile(key, target / "tls.key")
        (target / "tls.key").chmod(0o600)
        temporary = self.folder / "..data_tmp"
        temporary.symlink_to(target.name)
        os.replace(temporary, self.folder / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.folder / name).is_symlink():
                (self.folder / name).symlink_to(Path("..data") / name)


def reloads_to(server: Server, pair: Pair) -> int:
    """Workers that logged serving *pair*'s certificate (told apart by notAfter)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pair.not_after))
    return sum(event.get("not_after") == stamp for event in events_named(server, RELOADED))


def booted_workers(server: Server) -> int:
    """Workers that have loaded their certificate and sink ("worker ready")."""
    return len(events_named(server, "worker ready"))


def wait_until_served(server: Server, pair: Pair, published: float, workers: int = 2) -> None:
    """Every worker serves the pair published at *published* (time.monotonic()).

    Each worker reloads on its own clock and logs it. A worker that was still
    starting when the pair was published loaded it directly and logs nothing,
    so one reload log short is accepted once every worker had several chances.
    """
    wait_for(
        lambda: (
            reloads_to(server, pair) == workers
            or (
                reloads_to(server, pair) == workers - 1
                and time.monotonic() - published > 5 * RELOAD_INTERVAL
            )
        ),
        10,
        f"{workers} workers to reload {pair.cert_path.parent.name}",
    )
    # New connections, spread over the workers by the kernel, verify with the new CA.
    wait_for(
        lambda: all(verifies_with(server.port, pair.ca_path) for _ in range(10)),
        10,
        f"ten connections in a row to verify with the CA of {pair.cert_path.parent.name}",
    )
    wait_for(lambda: metric(server, EXPIRY) == pair.not_after, 5, "the expiry gauge to follow")


# --- tests ---------------------------------------------------------------------


def test_client_that_does_not_trust_the_ca_fails_and_is_counted(
    start: StartServer, tmp_path: Path
) -> None:
    server = start("--workers=1")
    other = make_pair(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(server.port, other.ca_path)
    wait_for(lambda: metric(server, HANDSHAKE_FAILURES) == 1, 5, "the failure to be counted")
    [failure] = events_named(server, "TLS handshake failed")
    assert failure["level"] == "warning"
    assert failure["reason"] == "TLSV1_ALERT_UNKNOWN_CA"
    # The server still serves clients that trust it, and every stderr line is JSON.
    assert server.post(review("trusted")).status == 200
    assert metric(server, HANDSHAKE_FAILURES) == 1
    assert log_events(server)


def test_secret_update_is_served_without_restart_and_a_broken_pair_is_not(
    start: StartServer, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs"
    pair_a = make_pair(pairs / "a", days=30)
    pair_b = make_pair(pairs / "b", days=40)
    pair_c = make_pair(pairs / "c", days=50)  # its key goes with D's certificate
    pair_d = make_pair(pairs / "d", days=60)
    secret = Secret(tmp_path / "secret")
    secret.publish("2026_a", pair_a.cert_path, pair_a.key_path)
    mounted = Pair(pair_a.ca_path, secret.cert_path, secret.key_path, pair_a.not_after)
    server = start("--workers=2", f"--cert-reload-interval={RELOAD_INTERVAL}", pair=mounted)
    # /readyz answers once one worker serves; the other may still be starting.
    wait_for(lambda: booted_workers(server) == 2, 10, "both workers to start")

    assert server.post(review("with-a")).status == 200
    assert metric(server, EXPIRY) == pair_a.not_after
    assert not verifies_with(server.port, pair_b.ca_path)

    # A new pair from a new CA: picked up by every worker, no restart.
    secret.publish("2026_b", pair_b.cert_path, pair_b.key_path)
    wait_until_served(server, pair_b, published=time.monotonic())
    assert not verifies_with(server.port, pair_a.ca_path)
    assert post_with(server, pair_b.ca_path, "with-b") == 200
    assert [record["request"]["uid"] for record in server.records()] == ["with-a", "with-b"]
    assert metric(server, RELOAD_FAILURES) == 0

    # A pair whose key belongs to another certificate: logged once per worker,
    # counted, and pair B keeps being served.
    secret.publish("2026_c", pair_d.cert_path, pair_c.key_path)
    wait_for(lambda: len(events_named(server, RELOAD_FAILED)) == 2, 10, "both workers to refuse")
    refused = time.monotonic()
    failures = events_named(server, RELOAD_FAILED)
    assert {event["level"] for event in failures} == {"error"}
    assert all("does not match" in event["error"] for event in failures)
    for _ in range(10):
        assert verifies_with(server.port, pair_b.ca_path)
        time.sleep(RELOAD_INTERVAL / 2)
    assert time.monotonic() - refused > 3 * RELOAD_INTERVAL
    assert not verifies_with(server.port, pair_d.ca_path)
    assert len(events_named(server, RELOAD_FAILED)) == 2, "the same bad pair was logged again"
    assert metric(server, RELOAD_FAILURES) == 2
    assert metric(server, EXPIRY) == pair_b.not_after
    assert post_with(server, pair_b.ca_path, "still-b") == 200

    # A good pair after the broken one is picked up again.
    secret.publish("2026_d", pair_d.cert_path, pair_d.key_path)
    wait_until_served(server, pair_d, published=time.monotonic())
    assert reloads_to(server, pair_d) == 2, "both workers were serving B, so both reload D"
    assert not verifies_with(server.port, pair_b.ca_path)
    assert post_with(server, pair_d.ca_path, "with-d") == 200
    assert [record["request"]["uid"] for record in server.records()] == [
        "with-a",
        "with-b",
        "still-b",
        "with-d",
    ]
    assert metric(server, RELOAD_FAILURES) == 2


def test_slow_client_is_disconnected_without_blocking_others(start: StartServer) -> None:
    server = start("--workers=1", "--read-timeout=1")
    with tls_connect(server.port, server.ca_path) as slow:
        connected = time.monotonic()
        slow.sendall(b"POST /log-request HTTP/1.1\r\nHost: x\r\n")
        slow.settimeout(0.3)
        header = b"X-Slow: " + b"a" * 100
        closed_after = None
        for index, byte in enumerate(header):
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - connected
                break
            if index == 0:
                # Meanwhile (the slow connection outlives this, see below),
                # another client is served at once.
                started = time.monotonic()
                assert server.post(review("meanwhile")).status == 200
                assert time.monotonic() - started < 0.8
            if closed_by_peer(slow):
                closed_after = time.monotonic() - connected
                break
            assert time.monotonic() - connected < 5, "the slow client was never disconnected"
    assert closed_after is not None
    assert 0.9 < closed_after < 3, f"disconnected after {closed_after:.2f}s, read timeout 1s"
    wait_for(lambda: metric(server, READ_TIMEOUTS) == 1, 5, "the read timeout to be counted")
    assert [event["event"] for event in log_events(server)].count(
        "closed a connection that was too slow to send its request"
    ) == 1
    started = time.monotonic()
    assert server.post(review("afterwards")).status == 200
    assert time.monotonic() - started < 1
    assert [record["request"]["uid"] for record in server.records()] == ["meanwhile", "afterwards"]
    assert metric(server, READ_TIMEOUTS) == 1
    assert metric(server, HANDSHAKE_FAILURES) == 0


def test_idle_kept_alive_connection_is_closed(start: StartServer) -> None:
    server = start("--workers=1", "--idle-timeout=1")
    conn = server.connection()
    assert server.post(review("idle"), conn=conn).status == 200
    answered = time.monotonic()
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    sock.settimeout(5)
    assert closed_by_peer(sock), "the idle connection was still open after 5s"
    idle = time.monotonic() - answered
    # keepalive is checked once a second by gunicorn's event loop.
    assert 0.8 < idle < 3, f"closed after {idle:.2f}s idle, idle timeout 1s"
    assert metric(server, READ_TIMEOUTS) == 0
    assert server.post(review("next")).status == 200


def test_handshake_timeout_disconnects_a_silent_client(start: StartServer) -> None:
    server = start("--workers=1", "--handshake-timeout=1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=6) as raw:
        # The header of a TLS handshake record announcing 512 bytes that never come.
        raw.sendall(b"\x16\x03\x01\x02\x00")
        sent = time.monotonic()
        assert closed_by_peer(raw), "the silent client was still connected after 6s"
        waited = time.monotonic() - sent
    assert 0.9 < waited < 3, f"disconnected after {waited:.2f}s, handshake timeout 1s"
    wait_for(lambda: metric(server, HANDSHAKE_TIMEOUTS) == 1, 5, "the timeout to be counted")
    assert metric(server, HANDSHAKE_FAILURES) == 1
    [failure] = events_named(server, "TLS handshake failed")
    assert failure["reason"] == "handshake timed out"
    assert server.post(review("after")).status == 200
    assert metric(server, READ_TIMEOUTS) == 0


def test_a_worker_restarted_during_a_broken_update_serves_the_last_good_pair(
    start: StartServer, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs"
    good, other, stranger = (make_pair(pairs / n) for n in ("good", "other", "stranger"))
    secret = Secret(tmp_path / "secret")
    secret.publish("2026_good", good.cert_path, good.key_path)
    mounted = Pair(good.ca_path, secret.cert_path, secret.key_path, good.not_after)
    server = start("--workers=2", f"--cert-reload-interval={RELOAD_INTERVAL}", pair=mounted)
    wait_for(lambda: booted_workers(server) == 2, 10, "both workers to start")
    secret.publish("2026_broken", other.cert_path, stranger.key_path)
    wait_for(lambda: len(events_named(server, RELOAD_FAILED)) == 2, 10, "both workers to refuse")
    # A worker dies (OOM kill, crash) while the mounted pair is broken; its
    # replacement must not fail to boot, which would stop the whole server.
    first = int(re.findall(r"Booting worker with pid: (\d+)", server.stderr())[0])
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: booted_workers(server) == 3, 10, "a replacement worker")
    fallback = "certificate reload failed; serving the last good pair"
    wait_for(lambda: len(events_named(server, fallback)) == 1, 10, "the fallback to be logged")
    assert server.process.poll() is None, "the master stopped"
    for i in range(10):
        assert post_with(server, good.ca_path, f"after-kill-{i}") == 200
    assert metric(server, RELOAD_FAILURES) == 3


def test_a_client_that_lingers_after_connection_close_stalls_nobody(
    start: StartServer,
) -> None:
    server = start("--workers=1", "--read-timeout=1")
    body = review("closing")
    with tls_connect(server.port, server.ca_path) as lingering:
        lingering.sendall(
            b"POST /log-request HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = b""
        while chunk := lingering.recv(4096):  # the answer, then the server's close
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        # The lingering client never closes its side; the worker must not wait for it.
        started = time.monotonic()
        assert server.post(review("other")).status == 200
        assert time.monotonic() - started < 0.5
        time.sleep(1.5)
    assert metric(server, READ_TIMEOUTS) == 0


def test_failed_handshakes_do_not_raise_the_connection_limit(
    start: StartServer, tmp_path: Path
) -> None:
    server = start("--workers=1", "--threads=1", "--max-connections=3")
    other = make_pair(tmp_path / "other")
    for _ in range(4):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            contextlib.suppress(ssl.SSLError, OSError),
        ):
            client_context(other.ca_path).wrap_socket(raw, server_hostname="localhost")
    wait_for(lambda: metric(server, HANDSHAKE_FAILURES) == 4, 5, "the failures to be counted")
    worker = int(re.findall(r"Booting worker with pid: (\d+)", server.stderr())[0])

    def sockets() -> int:
        count = 0
        for fd in os.listdir(f"/proc/{worker}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{worker}/fd/{fd}").startswith("socket:")
        return count

    time.sleep(0.5)
    base = sockets()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    try:
        time.sleep(1.0)
        assert sockets() - base == 3
    finally:
        for sock in held:
            sock.close()


def test_a_bare_tcp_probe_is_not_a_handshake_failure(server: Server) -> None:
    for _ in range(3):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert server.post(review("after-probes")).status == 200
    time.sleep(0.5)
    assert metric(server, HANDSHAKE_FAILURES) == 0

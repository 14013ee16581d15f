"""The worker's event loop: accepting, TLS handshakes, deadlines, graceful stop.

See ``aio_worker`` for why the worker is an event loop, and ``balance`` for
how workers share the connections of one listening socket.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import ssl
import time
from typing import Any

import structlog
import uvloop

from kube_audit_rest.balance import ConnectionShare
from kube_audit_rest.http_server import Connection, ConnectionLimits
from kube_audit_rest.memory import HeapTrimmer
from kube_audit_rest.tls import CertificateStore, Timeouts, TlsEvents
from kube_audit_rest.webhook import Webhook

_log = structlog.get_logger("kube_audit_rest.tls")
_worker_log = structlog.get_logger("kube_audit_rest.worker")

# A turn, for a worker that holds more connections than another.
_DEFER_SECONDS = 0.002
_HEARTBEAT_SECONDS = 1.0
# A response that closes the connection does not wait this long for the
# client's TLS close_notify; a lingering client costs a descriptor, no more.
_TLS_SHUTDOWN_SECONDS = 1.0


class WorkerContext:
    """What the worker needs from the server's per-process state (built in post_fork)."""

    def __init__(
        self,
        webhook: Webhook,
        certificates: CertificateStore,
        events: TlsEvents,
        timeouts: Timeouts,
        idle_timeout: float,
        max_connections: int,
        share_path: str,
    ) -> None:
        self.webhook = webhook
        self.certificates = certificates
        self.events = events
        self.timeouts = timeouts
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.share_path = share_path


def serve(worker: Any, context: WorkerContext) -> None:
    """Run the worker's loop until a graceful stop has drained its connections."""
    # Everything built so far (modules, the certificate store, the policy) lives
    # as long as the worker: move it out of the collector's sight, so that
    # collections triggered by request garbage do not walk it again each time.
    gc.collect()
    gc.freeze()
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    server = _Server(worker, context, loop)
    counters = context.webhook.counters
    counters.schedule = loop.call_soon
    try:
        loop.run_until_complete(server.serve())
    finally:
        counters.schedule = None
        counters.flush()
        server.close()
        loop.close()


class _Server:
    def __init__(self, worker: Any, context: WorkerContext, loop: asyncio.AbstractEventLoop):
        self.worker = worker
        self.context = context
        self.loop = loop
        self.listeners: list[socket.socket] = [listener.sock for listener in worker.sockets]
        self.connections: set[Connection] = set()
        self.handshaking = 0
        self.accepting = False
        self.stopping = asyncio.Event()
        self.share = ConnectionShare(context.share_path)
        timeouts = context.timeouts
        self.limits = ConnectionLimits(timeouts.read, context.idle_timeout, timeouts.write)
        shortest = min(timeouts.read, timeouts.write, context.idle_timeout)
        self.sweep_interval = min(0.5, max(0.05, shortest / 10))
        self._deferred = False
        self.trimmer = HeapTrimmer()

    # --- lifecycle -------------------------------------------------------------------

    async def serve(self) -> None:
        loop = self.loop
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGQUIT, self.quit)
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)  # log reopening: nothing to reopen
        loop.add_signal_handler(signal.SIGHUP, self.context.webhook.records.reload_soon)
        loop.set_exception_handler(_exception_handler)
        if not self.worker.alive:
            # gunicorn's own handler caught a stop signal before ours were set.
            self.stop()
        for listener in self.listeners:
            listener.setblocking(False)
        self._resume_accepting()
        sweeper = loop.create_task(self._sweep())
        try:
            await self.stopping.wait()
        finally:
            sweeper.cancel()
        await self._drain()

    def stop(self) -> None:
        """Graceful: no new connections, idle ones closed, busy ones finish."""
        if self.stopping.is_set():
            return
        self.worker.alive = False
        self._pause_accepting()
        for connection in list(self.connections):
            connection.shut_down()
        self.stopping.set()

    def quit(self) -> None:
        """SIGQUIT: stop at once."""
        os._exit(0)

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.worker.cfg.graceful_timeout
        while (self.connections or self.handshaking) and time.monotonic() < deadline:
            now = time.monotonic()
            for connection in list(self.connections):
                if not connection.busy:
                    connection.shut_down()
                connection.check(now)
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()

    def close(self) -> None:
        self._pause_accepting()
        self.share.close()

    # --- accepting ---------------------------------------------------------------------

    def _resume_accepting(self) -> None:
        if self.accepting or self.stopping.is_set():
            return
        self.accepting = True
        for listener in self.listeners:
            self.loop.add_reader(listener.fileno(), self._accept, listener)

    def _pause_accepting(self) -> None:
        if not self.accepting:
            return
        self.accepting = False
        for listener in self.listeners:
            self.loop.remove_reader(listener.fileno())

    def _accept(self, listener: socket.socket) -> None:
        if not self._deferred and self.share.holds_more_than_others():
            # Let a less loaded worker take this one; accept it next turn if not.
            self._deferred = True
            self._pause_accepting()
            self.loop.call_later(_DEFER_SECONDS, self._resume_accepting)
            return
        self._deferred = False
        try:
            sock, address = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as error:  # EMFILE and friends: back off instead of spinning
            _worker_log.error("cannot accept connections", error=error.strerror or str(error))
            self._pause_accepting()
            self.loop.call_later(0.1, self._resume_accepting)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.share.opened()
        self.handshaking += 1
        if len(self.connections) + self.handshaking >= self.context.max_connections:
            self._pause_accepting()
        self.loop.create_task(self._start_tls(sock, _format_peer(address)))

    async def _start_tls(self, sock: socket.socket, peer: str) -> None:
        context = self.context
        webhook = context.webhook
        connection = Connection(webhook, self.limits, peer, self._closed, context.events.timed_out)
        try:
            await self.loop.connect_accepted_socket(
                lambda: connection,
                sock,
                ssl=context.certificates.context,
                ssl_handshake_timeout=context.timeouts.handshake,
                ssl_shutdown_timeout=_TLS_SHUTDOWN_SECONDS,
            )
        except BaseException as error:
            self.handshaking -= 1
            self._connection_gone()
            sock.close()
            _handshake_failed(context.events, peer, error)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            return
        self.handshaking -= 1
        if connection.lost:
            # Served and closed before this task resumed (Connection: close).
            self._connection_gone()
            return
        self.connections.add(connection)
        if self.stopping.is_set():
            connection.shut_down()

    def _closed(self, connection: Connection) -> None:
        # A connection lost before _start_tls resumed is not in the set yet;
        # _start_tls accounts for it then.
        if connection in self.connections:
            self.connections.discard(connection)
            self._connection_gone()

    def _connection_gone(self) -> None:
        self.share.closed()
        self.trimmer.closed()
        if len(self.connections) + self.handshaking < self.context.max_connections:
            self._resume_accepting()

    # --- periodic work ---------------------------------------------------------------

    async def _sweep(self) -> None:
        worker = self.worker
        next_beat = 0.0
        while True:
            now = time.monotonic()
            for connection in list(self.connections):
                connection.check(now)
            self.trimmer.maybe_trim(now)
            if now >= next_beat:
                next_beat = now + _HEARTBEAT_SECONDS
                worker.notify()
                if worker.ppid != os.getppid():
                    _worker_log.info("the master is gone; stopping", pid=os.getpid())
                    self.stop()
                    return
            await asyncio.sleep(self.sweep_interval)


def _handshake_failed(events: TlsEvents, peer: str, error: BaseException) -> None:
    if isinstance(error, ConnectionAbortedError) and "longer than" in str(error):
        events.handshake_failed()
        events.timed_out("handshake")
        _log.warning("TLS handshake failed", peer=peer, reason="handshake timed out")
    elif isinstance(error, (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError)):
        # Connected and closed without a complete hello: a TCP probe or a port
        # scan, not a TLS client that failed.
        _log.debug("connection closed before the TLS handshake", peer=peer)
    elif isinstance(error, ssl.SSLError):
        events.handshake_failed()
        _log.warning("TLS handshake failed", peer=peer, reason=error.reason or str(error))
    elif isinstance(error, OSError):
        events.handshake_failed()
        _log.warning("TLS handshake failed", peer=peer, reason=error.strerror or str(error))
    elif isinstance(error, asyncio.CancelledError):
        pass
    else:
        events.handshake_failed()
        _log.error("TLS handshake failed", peer=peer, reason=repr(error))


def _format_peer(address: Any) -> str:
    try:
        host, port = address[:2]
    except (TypeError, ValueError):
        return "unknown"
    return f"{host}:{port}"


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Unexpected errors inside the loop go to our log, not to asyncio's default printer."""
    error = context.get("exception")
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ssl.SSLError)):
        _worker_log.debug("connection error", error=str(error))
        return
    _worker_log.error(
        "event loop error",
        message=context.get("message"),
        error=repr(error) if error is not None else None,
    )

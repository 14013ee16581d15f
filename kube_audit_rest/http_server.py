"""HTTP/1.1 on one TLS connection: parse with httptools, answer through ``Webhook``.

One ``Connection`` per accepted client, driven by the worker's event loop.
Requests are handled in order as they complete (pipelining included); the
record is written inline, so a response is only ever sent after its write
call returned. Each connection carries one deadline at a time, checked by the
worker's periodic sweep rather than a timer per request:

* ``read``: from the first byte of a request (or the end of the handshake)
  until the whole request, headers and body, has arrived;
* ``idle``: between a response and the first byte of the next request;
* ``write``: a response still in the send buffer after this long.

A client over its deadline is logged, counted (except idle, which is normal)
and disconnected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import cast

import httptools
import structlog

from kube_audit_rest.memory import LARGE_BODY_BYTES
from kube_audit_rest.webhook import Answer, Webhook, error

_log = structlog.get_logger("kube_audit_rest.http")

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    500: b"Internal Server Error",
}
_BAD_REQUEST = error(400, "malformed HTTP request")
_IDLE, _READING, _CLOSING = 0, 1, 2
# Pause reading while this much response data waits to be sent: a client that
# pipelines requests but never reads answers cannot make us buffer without end.
_WRITE_HIGH_WATER = 256 * 1024


class _DateCache:
    """The ``Date`` header, formatted once a second instead of per response."""

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


_dates = _DateCache()


def render_response(answer: Answer, keep_alive: bool) -> bytes:
    head = [
        b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, b"Unknown")),
        b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(answer.body),
        _dates.header(),
    ]
    for name, value in answer.headers:
        head.append(name + b": " + value + b"\r\n")
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    head.append(answer.body)
    return b"".join(head)


class ConnectionLimits:
    """Per-connection budgets, in seconds."""

    __slots__ = ("idle", "read", "write")

    def __init__(self, read: float, idle: float, write: float) -> None:
        self.read = read
        self.idle = idle
        self.write = write


class Connection(asyncio.Protocol):
    """One client connection: parser state, the current deadline, its answers."""

    # Requests with a body of LARGE_BODY_BYTES or more, in this process: the
    # worker's sweep trims the heap after them (memory.HeapTrimmer).
    large_bodies = 0

    def __init__(
        self,
        webhook: Webhook,
        limits: ConnectionLimits,
        peer: str,
        on_close: Callable[[Connection], None],
        timed_out: Callable[[str], None],
    ) -> None:
        self.webhook = webhook
        self.limits = limits
        self.peer = peer
        self._on_close = on_close
        self._timed_out = timed_out
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self.state = _IDLE
        self.deadline = time.monotonic() + limits.read
        self._write_deadline = 0.0
        self._shutting_down = False
        self.lost = False
        self._reset_request()

    # --- the request being read ---------------------------------------------------

    def _reset_request(self) -> None:
        self._url = b""
        self._path = b""
        self._authorization: bytes | None = None
        self._content_type: bytes | None = None
        self._content_length: int | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._early_answer: Answer | None = None

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport implements asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSING:
            return
        if self.state == _IDLE:
            self.state = _READING
            self.deadline = time.monotonic() + self.limits.read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer_and_close(_BAD_REQUEST)
        except httptools.HttpParserError:
            if self.state != _CLOSING:
                self._answer_and_close(_BAD_REQUEST)

    def eof_received(self) -> bool | None:
        # The client closed its side: answer nothing more, close ours.
        self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSING
        self.lost = True
        self.transport = None
        # The parser holds bound methods of this connection: a reference cycle
        # that only the cyclic GC would free, which in a worker with few
        # allocations runs rarely, so each closed connection's memory (~30 KiB
        # with its TLS state) stayed resident. Dropping the parser frees it now.
        # Nothing reads it after this (data_received returns early on _CLOSING).
        del self._parser
        self._on_close(self)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.state != _CLOSING:
            self.transport.resume_reading()

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state == _IDLE:
            self.state = _READING
            self.deadline = time.monotonic() + self.limits.read

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value
        elif lowered == b"content-length" and value.strip().isdigit():
            # llhttp itself refuses a malformed or conflicting length.
            self._content_length = int(value)
        elif lowered == b"authorization":
            self._authorization = value

    def on_headers_complete(self) -> None:
        parser = self._parser
        webhook = self.webhook
        self._path = path = self._url.split(b"?", 1)[0]
        answer = webhook.route(parser.get_method(), path)
        if answer is None and webhook.auth is not None:
            # Before the body: an unauthenticated client's body is read and dropped.
            answer = webhook.authenticate(path, self._authorization, self.transport)
        if answer is not None:
            self._early_answer = answer
            return
        # A declared length over the limit is refused before the body is read.
        length = self._content_length
        if length is not None and length > webhook.max_request_bytes:
            self._answer_and_close(webhook.too_large(path))
            raise httptools.HttpParserError("body too large")

    def on_body(self, body: bytes) -> None:
        if self._early_answer is not None:
            return  # read and dropped, to find the next request
        self._body_size += len(body)
        if self._body_size > self.webhook.max_request_bytes:
            self._answer_and_close(self.webhook.too_large(self._path))
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer = self._early_answer
        if answer is None:
            if self._body_size >= LARGE_BODY_BYTES:
                Connection.large_bodies += 1
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            answer = self.webhook.handle(self._path, self._content_type, body)
        keep_alive = self._parser.should_keep_alive() and not self._shutting_down
        self._reset_request()
        self._send(answer, keep_alive)
        if keep_alive:
            self.state = _IDLE
            self.deadline = time.monotonic() + self.limits.idle
        else:
            self.close()

    # --- answers and closing ----------------------------------------------------------

    def _send(self, answer: Answer, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(render_response(answer, keep_alive))
        if transport.get_write_buffer_size():
            self._write_deadline = time.monotonic() + self.limits.write

    def _answer_and_close(self, answer: Answer) -> None:
        self._send(answer, keep_alive=False)
        self.close()

    def close(self) -> None:
        if self.state == _CLOSING:
            return
        self.state = _CLOSING
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.state = _CLOSING
        if self.transport is not None:
            self.transport.abort()

    # --- the worker's sweep -------------------------------------------------------------

    def check(self, now: float) -> None:
        """Disconnect a client that is over its current budget."""
        transport = self.transport
        if transport is None:
            return
        if self._write_deadline:
            if not transport.get_write_buffer_size():
                self._write_deadline = 0.0
            elif now >= self._write_deadline:
                self._timed_out("write")
                _log.info(
                    "closed a connection that was too slow to take its response", peer=self.peer
                )
                self.abort()
                return
        if now < self.deadline or self.state == _CLOSING:
            return
        if self.state == _READING:
            self._timed_out("read")
            _log.info("closed a connection that was too slow to send its request", peer=self.peer)
            self.abort()
        else:
            self.close()

    def shut_down(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after its answer."""
        self._shutting_down = True
        if self.state == _IDLE:
            self.close()

    @property
    def busy(self) -> bool:
        return self.state == _READING

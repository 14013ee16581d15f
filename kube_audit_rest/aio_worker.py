"""The gunicorn worker: one event loop (uvloop) serving TLS connections.

Why not gunicorn's ``gthread``: profiled under load, most of a request's CPU
went to the thread pool's hand-offs (a pipe write to wake the selector per
request), Flask/werkzeug's request objects and lock contention between the
request threads, not to the record itself. Here one loop per process parses
HTTP with httptools (llhttp), does the TLS in uvloop, and writes the record
inline: an append under the shared lock takes microseconds, and the 200 goes
out only after it returned.

The master (gunicorn's arbiter) is unchanged: it forks and replaces workers,
watches their heartbeat and relays signals. This worker:

* accepts one connection per wake-up, and lets a pending connection wait a
  turn when it holds more connections than another worker (``balance``);
* stops accepting at ``--max-connections`` (further clients wait in the
  kernel's listen backlog) and resumes when one closes;
* runs the handshake with its deadline, picking the certificate store's
  current context for each new connection;
* sweeps its connections' deadlines a few times a second;
* on SIGHUP re-reads the policy and redaction files (``record_pipeline``);
* on SIGTERM/SIGINT stops accepting, closes idle connections, lets busy ones
  finish within the graceful timeout, then exits.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from gunicorn.workers.base import Worker

if TYPE_CHECKING:
    from kube_audit_rest.worker_loop import WorkerContext


class AsyncWorker(Worker):  # type: ignore[misc]
    """A gunicorn worker whose requests are served by one uvloop event loop."""

    def init_signals(self) -> None:
        # gunicorn's handlers would run between bytecodes; the loop's own
        # handlers (installed in run) are the ones that matter. Keep SIGABRT
        # (the master's timeout kill) and SIGCHLD from the base class.
        super().init_signals()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        # The master forwards SIGHUP (re-read the privacy files); until the
        # loop handles it, it must not end the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def run(self) -> None:
        # Imported here, in the worker: the master only forks and watches, and
        # every module it imports is resident (and counted) in every process.
        from kube_audit_rest.worker_loop import serve

        context: WorkerContext = self.wsgi
        serve(self, context)

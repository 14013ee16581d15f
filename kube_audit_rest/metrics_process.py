"""The metrics port's process: bound early by the CLI, forked before gunicorn starts.

A separate process, not a thread of the master: gunicorn forks workers from
the master, and a fork taken while a thread holds a lock (the import lock, a
logging lock) leaves that lock held for ever in the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Any

import structlog


def bind_metrics_socket(address: str, port: int) -> socket.socket:
    """Bind the metrics port early, so a port in use is a clear start-up error."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def start_metrics_process(
    sock: socket.socket, multiproc_dir: str, probe_address: tuple[str, int]
) -> int:
    """Fork the metrics server into its own process; return its pid.

    A separate process, not a thread of the master: gunicorn forks workers
    from the master, and a fork taken while a thread holds a lock (the import
    lock, a logging lock) leaves that lock held for ever in the child.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid:
        sock.close()
        return pid
    status = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides when to stop
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # for the workers, forwarded by the master
        signal.signal(signal.SIGTERM, _exit_on_term)
        # Imported in the child only: prometheus_client's exposition code is not
        # needed by the master or the workers it forks.
        from kube_audit_rest.metrics_server import MetricsServer

        MetricsServer(sock, multiproc_dir, parent, probe_address).serve_forever(parent)
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 0
    except BaseException:
        structlog.get_logger("kube_audit_rest.metrics_server").exception("metrics server failed")
        status = 1
    finally:
        os._exit(status)


def _exit_on_term(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def stop_metrics_process(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)

"""The server under test: the ``kube-audit-rest`` CLI as users start it, plus /proc readings."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CLI = str(Path(sys.executable).with_name("kube-audit-rest"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOG_NAME = "audit.log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that exist right now."""
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(_children(pid))
    return tree


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # Fields after the ")" that closes the command name; utime is field 14 overall.
    fields = text[text.rindex(")") + 2 :].split()
    return sum(int(value) for value in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    return sum(_cpu_ticks(pid) for pid in process_tree(root)) / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(root: int) -> int:
    return sum(_rss_bytes(pid) for pid in process_tree(root))


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def pids_listening_on(port: int, candidates: list[int]) -> set[int]:
    """The processes among *candidates* that hold a listening socket on *port*."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    found = set()
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    found.add(pid)
                    break
            except OSError:
                continue
    return found


class RssSampler:
    """Peak summed VmRSS of a process tree, sampled every 100 ms in a thread.

    ``peak`` is the whole tree; ``peak_without`` leaves out the processes in
    ``exclude`` (the metrics process), for the issue's "master plus workers".
    """

    def __init__(self, root: int, interval: float = 0.1, exclude: set[int] | None = None) -> None:
        self.root, self.interval, self.peak, self.peak_without = root, interval, 0, 0
        self.exclude = exclude or set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sizes = {pid: _rss_bytes(pid) for pid in process_tree(self.root)}
            self.peak = max(self.peak, sum(sizes.values()))
            without = sum(size for pid, size in sizes.items() if pid not in self.exclude)
            self.peak_without = max(self.peak_without, without)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_dir: Path
    cert_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.stderr_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready within {timeout} s:\n{self.stderr_tail()}")

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, wait for the graceful shutdown; SIGKILL only if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_server(work_dir: Path, log_dir: Path, extra: list[str] | None = None) -> Server:
    """The CLI with --self-signed (cert in work_dir), default workers, file output.

    ``extra`` flags are appended (the soak sets ``--logger-max-size``).
    """
    port, metrics_port = free_port(), free_port()
    argv = [
        CLI,
        "--self-signed",
        f"--server-port={port}",
        f"--metrics-port={metrics_port}",
        "--server-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        f"--logger-filename={log_dir / LOG_NAME}",
        # Keep every rotated file so the loss check sees all records (the large
        # step writes more than the default 500 MB before rotating).
        "--logger-max-backups=0",
        *(extra or []),
    ]
    stderr_path = log_dir.parent / f"{log_dir.name}-stderr.txt"
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, cwd=work_dir, start_new_session=True
        )
    cert = work_dir / "kube-audit-rest-tls" / "tls.crt"
    server = Server(process, port, metrics_port, log_dir, cert, stderr_path)
    try:
        server.wait_ready()
    except BaseException:
        server.stop(timeout=10)
        raise
    return server

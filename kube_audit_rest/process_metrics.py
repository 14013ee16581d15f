"""The usual ``process_*`` metrics, for the whole server: master and children.

prometheus_client's own process collector only sees the process it runs in,
and in multiprocess mode it is not used at all. Here ``/proc`` is read for the
gunicorn master and each of its live children (the workers and the metrics
process) and the sums are reported. CPU time also counts children that have
exited, through the master's ``cutime``/``cstime`` (time of reaped children),
so the counter never goes backwards when a worker is replaced.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGESIZE")
_BOOT_TIME: float | None = None


def _boot_time() -> float:
    global _BOOT_TIME
    if _BOOT_TIME is None:
        with open("/proc/stat", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("btime "):
                    _BOOT_TIME = float(line.split()[1])
                    break
            else:
                _BOOT_TIME = 0.0
    return _BOOT_TIME


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        text = handle.read()
    # The command name is in parentheses and may contain spaces.
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """Direct children of *pid*, from the ppid field of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


class ProcessTreeCollector(Collector):
    """Sums /proc figures over *master_pid* and its live children."""

    def __init__(self, master_pid: int) -> None:
        self._master = master_pid

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        master = self._master
        # Fields after the command: index 0 is field 3 (state) of proc(5).
        fields = _stat_fields(master)
        cpu_ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        rss_pages = int(fields[21])
        vsize = int(fields[20])
        start = _boot_time() + int(fields[19]) / _TICKS
        open_fds = len(os.listdir(f"/proc/{master}/fd"))
        workers = 0
        children = _children(master)
        for pid in children:
            try:
                worker = _stat_fields(pid)
                worker_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, ValueError):
                continue  # exited between listing and reading
            if pid != os.getpid():
                workers += 1
            cpu_ticks += int(worker[11]) + int(worker[12])
            rss_pages += int(worker[21])
            vsize += int(worker[20])
            open_fds += worker_fds
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "User and system CPU time of the master and all its children, past and present",
            value=cpu_ticks / _TICKS,
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes",
            "Resident memory of the master and its live children",
            value=rss_pages * _PAGE,
        )
        yield GaugeMetricFamily(
            "process_virtual_memory_bytes",
            "Virtual memory of the master and its live children",
            value=vsize,
        )
        yield GaugeMetricFamily(
            "process_open_fds",
            "Open file descriptors of the master and its live children",
            value=open_fds,
        )
        yield GaugeMetricFamily(
            "process_max_fds",
            "File descriptor limit of each process",
            value=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of the master process since the Unix epoch",
            value=start,
        )
        yield GaugeMetricFamily(
            "kube_audit_rest_workers",
            "Live worker processes",
            value=workers,
        )

"""The machine line: CPU, cores, kernel, Python, and what the log folder is stored on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, file system type, source device) of the mount holding path."""
    target = str(path.resolve())
    best = ("/", "unknown", "unknown")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mount_point = left.split()[4]
        fstype, source = right.split()[:2]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fstype, source)
    return best


def _rotational(device: str) -> str:
    name = Path(device).name
    for candidate in (name, name.rstrip("0123456789")):
        flag = Path(f"/sys/block/{candidate}/queue/rotational")
        if flag.exists():
            return "rotational" if flag.read_text().strip() == "1" else "non-rotational"
    return "rotational flag unknown"


def is_memory_backed(path: Path) -> bool:
    return mount_of(path)[1] in ("tmpfs", "ramfs")


def disk_description(path: Path) -> str:
    mount_point, fstype, source = mount_of(path)
    return f"{fstype} on {source} ({_rotational(source)}, mounted at {mount_point})"


def describe(log_root: Path, python: str) -> str:
    return (
        f"machine: {cpu_model()}, {usable_cores()} usable cores, "
        f"kernel {platform.release()}, Python {python}, "
        f"log folder {log_root}: {disk_description(log_root)}"
    )

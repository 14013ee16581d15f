"""Give freed heap memory back to the system after many connections closed.

Each TLS connection allocates some tens of KiB through OpenSSL and Python
(record buffers, parser, protocol objects). When a flood of connections closes,
glibc's malloc keeps most of that freed memory in the middle of its heap, where
its automatic trimming (only the top of the heap) cannot return it, so a
worker's resident memory ratchets up by a few MiB with every flood.
``malloc_trim(0)`` also releases free pages inside the heap. It costs about a
millisecond, so the worker calls it only after many connections closed, at
most every few seconds. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

# Closed connections since the last trim that make the next one worth it.
TRIM_AFTER_CLOSES = 64
TRIM_INTERVAL_SECONDS = 5.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    function: Callable[[int], int] = trim
    return function


_malloc_trim = _load_malloc_trim()


class HeapTrimmer:
    """Counts closed connections; ``maybe_trim`` returns freed memory when enough closed."""

    def __init__(self) -> None:
        self.closes = 0
        self._last = 0.0

    def closed(self) -> None:
        self.closes += 1

    def maybe_trim(self, now: float) -> bool:
        if self.closes < TRIM_AFTER_CLOSES or now - self._last < TRIM_INTERVAL_SECONDS:
            return False
        self.closes, self._last = 0, now
        if _malloc_trim is not None:
            _malloc_trim(0)
        return True

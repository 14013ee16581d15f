"""RFC 3339 times and ``2h``-style durations, as integer nanoseconds since the epoch.

Records carry up to nine fractional digits (Go's RFC3339Nano); a ``datetime``
keeps only six, so comparisons at the edges of a time window use integers.
"""

from __future__ import annotations

import calendar
import functools
import re
import time

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", re.ASCII)
_UNIT_NS = {
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
}


def parse_rfc3339(text: str) -> int | None:
    """Nanoseconds since the epoch, or None if *text* is not an RFC 3339 date-time."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    seconds = _epoch_seconds(text[:10], text[11:19])
    if seconds is None:
        return None
    fraction = match.group(7) or ""
    offset = match.group(8)
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        seconds -= sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    return seconds * 10**9 + int(fraction.ljust(9, "0") or "0")


@functools.lru_cache(maxsize=4096)
def _epoch_seconds(date: str, clock: str) -> int | None:
    """Seconds of a validated date and time of day; cached, as log times come in runs."""
    year, month, day = int(date[0:4]), int(date[5:7]), int(date[8:10])
    hour, minute, second = int(clock[0:2]), int(clock[3:5]), int(clock[6:8])
    if not (1 <= month <= 12 and 1 <= day <= _days_in(year, month)):
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    return calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0))


def _days_in(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def parse_duration(text: str) -> int | None:
    """``90s``, ``15m``, ``2h``, ``1h30m``, ``7d`` as nanoseconds, or None."""
    position, total = 0, 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += int(float(match.group(1)) * _UNIT_NS[match.group(2)])
        position = match.end()
    if position == 0 or position != len(text):
        return None
    return total


def parse_bound(text: str, now_ns: int) -> int | None:
    """A window edge: an RFC 3339 time, or a duration meaning that long before now."""
    absolute = parse_rfc3339(text)
    if absolute is not None:
        return absolute
    ago = parse_duration(text)
    return None if ago is None else now_ns - ago


def now_ns() -> int:
    return time.time_ns()


def format_seconds(ns: int | None) -> str:
    """``2026-11-23T14:02:05Z``: a record time, to the second, in UTC."""
    if ns is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))

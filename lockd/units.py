"""Units: nanoseconds per millisecond, and durations (`500ms`, `10s`, `2m`) and sizes
(`64mb`) as flags and environment variables write them."""

from __future__ import annotations

import re

__all__ = ["MS", "parse_duration_ms", "parse_size"]

MS = 1_000_000
"""Nanoseconds per millisecond: lockd keeps time in integer ns and speaks ms on the wire."""

_DURATION_UNITS = {"ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kb": 1 << 10,
    "m": 1 << 20,
    "mb": 1 << 20,
    "g": 1 << 30,
    "gb": 1 << 30,
}
_NUMBER = r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*"


def parse_duration_ms(text: str) -> int:
    """Milliseconds in `text`: a number with unit ms, s, m or h (bare numbers are seconds)."""
    m = re.fullmatch(_NUMBER, text.lower())
    unit = (m.group(2) or "s") if m else None
    if m is None or unit not in _DURATION_UNITS:
        raise ValueError(f"{text!r} is not a duration: use e.g. 500ms, 10s, 2m or 1h")
    return round(float(m.group(1)) * _DURATION_UNITS[unit])


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with optional unit b, kb, mb or gb (powers of 1024)."""
    m = re.fullmatch(_NUMBER, text.lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size: use e.g. 512kb, 64mb or 2gb")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])

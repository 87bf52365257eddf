"""Injectable engine clocks.

The engine measures TTLs on `time.monotonic_ns()`, never the wall clock, so a wall-clock
jump cannot expire a lock early. Tests and the Jepsen harness skew, drift and jump a
`Clock` to model a misbehaving node; `WallClock` exists only as an explicit unsafe mode
that the harness and simulator use to show why monotonic time matters.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from lockd.units import MS

__all__ = ["Clock", "WallClock"]


class Clock:
    """Milliseconds on a monotonic source, with a settable offset and rate.

    `now_ms()` = base + offset + (source - anchor) * rate, re-anchored whenever the rate
    changes so the reading never jumps unless `jump()` is called.
    """

    __slots__ = ("_anchor_ns", "_base_ns", "_offset_ns", "_rate", "_source")

    def __init__(self, source: Callable[[], int] = time.monotonic_ns) -> None:
        self._source = source
        self._anchor_ns = source()
        self._base_ns = self._anchor_ns
        self._offset_ns = 0
        self._rate = 1.0

    def now_ns(self) -> int:
        """The engine's current time in nanoseconds."""
        if self._rate == 1.0:
            return self._source() - self._anchor_ns + self._base_ns + self._offset_ns
        elapsed = self._source() - self._anchor_ns
        return self._base_ns + int(elapsed * self._rate) + self._offset_ns

    def now_ms(self) -> int:
        """The engine's current time in whole milliseconds."""
        if self._rate == 1.0:
            return (self._source() - self._anchor_ns + self._base_ns + self._offset_ns) // MS
        return self.now_ns() // MS

    @property
    def rate(self) -> float:
        """How fast this clock runs relative to its source (1.0 = true time)."""
        return self._rate

    @property
    def offset_ms(self) -> float:
        """Total offset added by `jump()` calls, in milliseconds."""
        return self._offset_ns / 1e6

    def set_rate(self, rate: float) -> None:
        """Drift: from now on, run at `rate` times the source's speed (0.99 = 1% slow)."""
        if not 0.0 < rate < 100.0:
            raise ValueError(f"clock rate must be in (0, 100), got {rate}")
        now = self._source()
        self._base_ns += int((now - self._anchor_ns) * self._rate)
        self._anchor_ns = now
        self._rate = rate

    def jump(self, delta_ms: float) -> None:
        """Step the clock by `delta_ms` (negative steps move it backwards)."""
        self._offset_ns += int(delta_ms * MS)


class WallClock(Clock):
    """UNSAFE: reads the wall clock (`time.time_ns()`), so wall-clock steps move lock expiry.

    Only for demonstrating (in the harness and the simulator) what monotonic time buys.
    The simulator passes its simulated wall time as `source` and steps it with `jump()`.
    """

    __slots__ = ()

    def __init__(self, source: Callable[[], int] | None = None) -> None:
        super().__init__(source or time.time_ns)  # looked up now: tests patch time.time_ns

"""Per-task warnings that cannot flood the log or the CPU.

A dead edge server fails every task sent to it, and an overloaded ingress forgets tasks at the
request rate: one warning per task would be hundreds of lines a second. rclpy's own
``throttle_duration_sec`` does keep the log short, but it still finds the caller (``inspect`` frames
and ``os.path.realpath``, 0.2-0.4 ms per call, measured with py-spy on the gateway at 500 tasks/s)
before deciding to drop the line, which makes an overloaded node slower still. ``ThrottledLog``
decides with one clock read under a lock and says how many lines it left out.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class ThrottledLog:
    """``log(message)`` emits at most one line per ``period_s``; the next emitted line carries the
    number of messages left out since the last one. Thread-safe."""

    def __init__(self, emit: Callable[[str], None], period_s: float, clock: Callable[[], float] = time.monotonic):
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        self._emit, self.period_s, self._clock = emit, float(period_s), clock
        self._lock = threading.Lock()
        self._next_s = float("-inf")
        self.suppressed = 0  # left out since the last emitted line

    def __call__(self, message: str) -> bool:
        """True when the line was emitted."""
        now = self._clock()
        with self._lock:
            if now < self._next_s:
                self.suppressed += 1
                return False
            left_out, self.suppressed = self.suppressed, 0
            self._next_s = now + self.period_s
        if left_out:
            message += f" ({left_out} more like this in the last {self.period_s:g} s not logged)"
        self._emit(message)
        return True

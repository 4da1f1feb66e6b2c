"""Phone clock -> local monotonic clock offset, and from it the age of each packet.

Phone timestamps count from the phone's boot (or the epoch); they share no clock with
the daemon. For every timed packet ``arrival_mono_s - phone_time_s`` is the true offset
plus that packet's network/queuing delay. Assuming the fastest packet seen in the last
``window_s`` had (close to) zero delay, the minimum of that difference over the window
is the offset, and a packet's age at arrival is how far its difference lies above the
minimum. So ages are *relative to the fastest recent packet*: a constant delay common
to all packets (the phone's own sensor-to-send latency) is invisible, while Wi-Fi stalls,
bursts and queueing show up. Phone clock drift (tens of ppm) moves the offset by well
under a millisecond per window, which the sliding window follows.
"""

from __future__ import annotations

from collections import deque


class ClockOffset:
    """Sliding-window minimum of ``arrival - phone_time`` (O(1) amortised per packet)."""

    def __init__(self, window_s: float = 10.0):
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        # (arrival_s, offset_s), offsets strictly increasing: the front is the window minimum.
        self._candidates: deque[tuple[float, float]] = deque()

    @property
    def offset_s(self) -> float | None:
        """Current estimate of ``local_monotonic - phone_clock``; None before the first packet."""
        return self._candidates[0][1] if self._candidates else None

    def observe(self, phone_time_s: float, arrival_s: float) -> float:
        """Add one timed packet; returns its age at arrival in ms (>= 0)."""
        offset = arrival_s - phone_time_s
        candidates = self._candidates
        while candidates and candidates[-1][1] >= offset:
            candidates.pop()
        candidates.append((arrival_s, offset))
        horizon = arrival_s - self.window_s
        while candidates[0][0] < horizon:
            candidates.popleft()
        return (offset - candidates[0][1]) * 1e3

    def reset(self) -> None:
        """Forget the estimate (the phone's clock restarted)."""
        self._candidates.clear()

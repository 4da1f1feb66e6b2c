"""The hand-off from the control loop to a consumer thread (the log writer, the live stream).

The loop calls :meth:`RecordQueue.put` with each tick's record: a queue append, never a wait,
never I/O. A full queue (its consumer stuck on a dead disk or starved of CPU) drops the record
and counts it in :attr:`RecordQueue.dropped`; the loop never notices.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping
from typing import Any


class RecordQueue:
    """A bounded queue of records for one consumer thread; ``None`` in the queue means "stop"."""

    def __init__(self, max_queue: int):
        self._queue: queue.Queue[Mapping[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self.dropped = 0

    def put(self, record: Mapping[str, Any]) -> None:
        """Queue one record; never blocks (a full queue drops and counts)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def event(self, name: str, **details: Any) -> None:
        self.put({"type": "event", "t": time.monotonic(), "event": name, **details})

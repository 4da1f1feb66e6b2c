"""JSON Lines latency log, written off the control loop's thread.

The loop hands each record to :meth:`LatencyLog.put` (a queue append: no I/O, no
serialisation on the tick). A writer thread serialises and writes, flushing at least every
``flush_interval_s`` (100 ms), so a crash loses at most the last flush interval. The
schema is documented in ``docs/latency-log.md``; the files (plain or zstd by the name's
``.zst``, rotation past ``max_bytes``) are :mod:`robotd.logs.log_files`'.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from robotd.logs.log_files import LogFileWriter
from robotd.logs.record_queue import RecordQueue
from sim.sensor_values import float32_text

LOG_SCHEMA_VERSION = 1


def _default(obj: Any) -> Any:
    """JSON encoding for numpy values; non-finite floats become null (JSON has no NaN)."""
    if isinstance(obj, np.ndarray):
        return [_finite(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _sanitised(obj: Any) -> Any:
    """A copy with every non-finite float replaced by None (slow path, only after a failure)."""
    if isinstance(obj, dict):
        return {k: _sanitised(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitised(v) for v in obj]
    if isinstance(obj, (np.ndarray, np.generic)):
        return _default(obj)
    return _finite(obj)


def float32_values(values: Any) -> list[float] | None:
    """``values`` as the log keeps them: each rounded to float32 and written as float32's
    shortest decimal text (7-9 digits instead of float64's 17).

    The fused orientation and the torso gyro are computed from float32 phone readings (Android
    delivers ``float``), so digits past float32's are arithmetic, not measurement; the re-run
    compares its orientation at this precision (:func:`robotd.commands.rerun.rerun`).
    """
    if values is None:
        return None
    return [float32_text(v) for v in values]


def _rounded(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(value, decimals)


#: Loop-line times kept to the nanosecond, the resolution of the clocks they are read from
#: (``time.monotonic``/``perf_counter``): ``t``/``deadline`` in s, stage times in us, age in ms.
_NS_DECIMALS = {"t": 9, "deadline": 9, "tick_us": 3, "rx_to_tx_us": 3, "pkt_age_ms": 6}


def _loop_line(record: dict[str, Any]) -> dict[str, Any]:
    """A loop record at the logged precision (docs/latency-log.md, "Precision"); the loop hands
    the full values over, and this runs on the writer thread, off the tick."""
    out = dict(record)
    for key, decimals in _NS_DECIMALS.items():
        if key in out:
            out[key] = _rounded(out[key], decimals)
    stages = out.get("stages_us")
    if isinstance(stages, dict):
        out["stages_us"] = {k: _rounded(v, 3) for k, v in stages.items()}
    for key in ("quat", "gyro"):
        if key in out:
            out[key] = float32_values(out[key])
    return out


def _dumps(record: dict[str, Any]) -> str:
    try:
        return json.dumps(record, default=_default, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN/inf somewhere in a plain float: JSON has no such value
        return json.dumps(_sanitised(record), default=_default, separators=(",", ":"), allow_nan=False)


class LatencyLog(RecordQueue):
    """Queue + writer thread for one log (one file, or numbered files when rotated). ``put`` is safe to
    call from the loop."""

    def __init__(self, path: Path | str, header: dict[str, Any], flush_interval_s: float = 0.1,
                 max_queue: int = 100_000, max_bytes: int | None = None):
        self.path = Path(path)
        self.flush_interval_s = flush_interval_s
        super().__init__(max_queue)  # self.dropped: records lost to a full queue (writer stuck) ...
        # ... or to a failed write (full disk, ...) or a record that cannot be serialised
        self.write_errors = 0
        self.last_error: str | None = None
        self.lines_written = 0
        self._unflushed = 0  # records handed to the file writer since its last successful flush
        header = {"type": "header", "schema": LOG_SCHEMA_VERSION, **header}
        self._file = LogFileWriter(
            self.path, lambda k: _dumps(header if k == 0 else {**header, "segment": k}), max_bytes=max_bytes)
        self._rotation_reported = False
        self._thread = threading.Thread(target=self._run, name="latency-log", daemon=True)
        self._thread.start()

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Write everything queued (and the summary line), flush, fsync and close.

        Never raises for a failing disk: the run's own shutdown must go on; the loss is counted.
        """
        if summary is not None:
            self.put({"type": "summary", **summary})
        self._queue.put(None)
        self._thread.join(timeout=10.0)
        try:
            self._flush()
        except Exception as exc:
            self._failed(exc)
        try:
            self._file.close()
        except Exception as exc:
            self._failed(exc)

    def health(self) -> str:
        """The log's part of the health line: ``log ok`` or how many records were lost and why."""
        if not self.dropped:
            return "log ok"
        return f"log dropped {self.dropped}" + (f" ({self.last_error})" if self.last_error else "")

    def _flush(self) -> None:
        """Flush (plain or one zstd block); if that fails, every record since the last good flush
        counts as dropped."""
        try:
            self._file.flush()
        except Exception:
            self.dropped += self._unflushed
            self._unflushed = 0
            raise
        self._unflushed = 0
        if self._file.rotation_stopped and not self._rotation_reported:
            self._rotation_reported = True  # said once, in the log itself (nothing was lost)
            self._write({"type": "event", "t": time.monotonic(), "event": "log_rotation_stopped",
                         "reason": self._file.rotation_stopped})

    def _failed(self, exc: BaseException) -> None:
        self.write_errors += 1
        self.last_error = str(exc) or type(exc).__name__

    @property
    def segments(self) -> list[Path]:
        """The files written so far (one unless rotated)."""
        return list(self._file.segments)

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(_dumps(_loop_line(record) if record.get("type") == "loop" else record))
        self.lines_written += 1
        self._unflushed += 1

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        while True:
            timeout = max(0.0, next_flush - time.monotonic())
            try:
                record = self._queue.get(timeout=timeout)
            except queue.Empty:
                record = ...
            if record is None:
                break
            if record is not ...:
                try:
                    self._write(record)
                except Exception as exc:  # a bad record, a full disk: count it, keep the writer going
                    self.dropped += 1
                    self._failed(exc)
            now = time.monotonic()
            if now >= next_flush:
                try:
                    self._flush()
                except Exception as exc:
                    self._failed(exc)
                next_flush = now + self.flush_interval_s

"""``robotd run --foxglove [HOST:PORT]``: the run's channels streamed live over the Foxglove WebSocket protocol.

The control loop hands each record to :meth:`FoxgloveLive.put` exactly as it hands it to the
latency log: a queue append, no encoding, no socket. A thread of its own turns records into
messages (:class:`robotd.logs.foxglove_channels.RunChannels`, the channels ``--mcap`` writes) and
gives them to the Foxglove SDK's server, which sends from its own native threads and keeps at
most ``message_backlog_size`` messages per client, dropping the oldest for a client that does
not keep up. So neither a slow viewer nor the encoding can hold a tick back; a full queue
(the encoder itself starved) drops records and counts them (:attr:`FoxgloveLive.dropped`).
With no client subscribed, records are taken off the queue and dropped without being encoded.

The server binds to 127.0.0.1 unless told otherwise: anyone who can reach it can watch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import foxglove

from robotd.logs.foxglove_channels import ClockMap, RunChannels
from robotd.logs.record_queue import RecordQueue

DEFAULT_ADDRESS = ("127.0.0.1", 8765)
"""Foxglove's default WebSocket port, on the loopback interface."""
_BACKLOG_MESSAGES = 1024  # per client: ~1 s of this run's channels at 50 Hz


class FoxgloveLive(RecordQueue):
    """A Foxglove WebSocket server fed from a queue; ``put``/``event``/``close`` as :class:`LatencyLog`."""

    def __init__(self, host: str, port: int, header: Mapping[str, Any], max_queue: int = 512):
        self._context = foxglove.Context()
        self.channels = RunChannels(self._context, header, ClockMap.from_header(header, None))
        try:
            self.server = foxglove.start_server(name="robotd", host=host, port=port, context=self._context,
                                                message_backlog_size=_BACKLOG_MESSAGES)
        except RuntimeError as exc:  # foxglove.FoxgloveError: cannot bind (port taken, unknown host)
            raise OSError(f"--foxglove {host}:{port}: {exc}") from None
        self.host, self.port = host, self.server.port
        super().__init__(max_queue)
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="foxglove-live", daemon=True)
        self._thread.start()

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Send what is queued (and the summary), then stop the server."""
        if summary is not None:
            self.put({"type": "summary", "t": time.monotonic(), **summary})
        self._queue.put(None)
        self._thread.join(timeout=5.0)
        self.server.stop()

    def _run(self) -> None:
        while (record := self._queue.get()) is not None:
            if record.get("type") != "loop" or self.channels.subscribed():
                self.channels.publish(record)
                self.published += 1


class RecordFanout:
    """Hands each record to several consumers (the latency log and the live stream)."""

    def __init__(self, *sinks: Any):
        self.sinks = [s for s in sinks if s is not None]

    def put(self, record: Mapping[str, Any]) -> None:
        for sink in self.sinks:
            sink.put(record)

    def event(self, name: str, **details: Any) -> None:
        for sink in self.sinks:
            sink.event(name, **details)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        for sink in self.sinks:
            sink.close(summary)

    def health(self) -> str:
        """The health line's log part: the latency log's (the live stream has none), else ``log off``."""
        parts = [sink.health() for sink in self.sinks if hasattr(sink, "health")]
        return " | ".join(parts) or "log off"

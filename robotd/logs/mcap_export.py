"""``robotd replay LOG --mcap OUT.mcap``: a run as MCAP, for Foxglove, PlotJuggler, Rerun or ROS 2 tools.

The records are re-read from the log in order (:meth:`robotd.logs.logread.LogData.records`), the
event lines merged in by time, and published through :class:`robotd.logs.foxglove_channels.RunChannels`
(the same channels ``robotd run --foxglove`` streams live) into an MCAP file written by the
Foxglove SDK (zstd-compressed chunks). The run header goes in as the MCAP metadata record
``robotd.header``; what the log reader warned about, if anything, as ``robotd.reader_warnings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import foxglove

from robotd.logs.foxglove_channels import ClockMap, RunChannels
from robotd.logs.logread import LogData


@dataclass(frozen=True)
class McapExport:
    path: Path
    ticks: int
    events: int
    messages: int


def export_mcap(log: LogData, out: Path) -> McapExport:
    """Write ``log`` to ``out`` (overwriting it); returns what went in."""
    context = foxglove.Context()
    clock = ClockMap.from_header(log.header, float(log.t_s[0]) if log.n_ticks else None)
    channels = RunChannels(context, log.header, clock)
    writer = foxglove.open_mcap(str(out), allow_overwrite=True, context=context)
    try:
        writer.write_metadata("robotd.header", RunChannels.metadata(log.header))
        if log.warnings:
            writer.write_metadata("robotd.reader_warnings", {str(i): w for i, w in enumerate(log.warnings)})
        events = [{"type": "event", "t": e.t_s, "event": e.name, **e.details} for e in log.events]
        pending = iter(events)
        event = next(pending, None)
        for record in log.records():
            while event is not None and event["t"] <= record["t"]:
                channels.publish(event)
                event = next(pending, None)
            channels.publish(record)
        while event is not None:
            channels.publish(event)
            event = next(pending, None)
        if log.summary is not None:
            channels.publish({"type": "summary", **log.summary})
    finally:
        writer.close()
    return McapExport(out, log.n_ticks, len(events), channels.messages)

"""``robotd replay latency.log``: what a run's latency log says about the run.

The report answers the questions asked after a run: did the loop keep its rate, which
stage ate the time when it did not, how old was the phone data, what went wrong and when,
and how long the robot stood. It is built from :class:`robotd.logs.logread.LogData` alone, so
it also works on a log cut short by a crash (the reader's warnings are part of it).

``--rerun`` feeds the logged phone readings through fusion and a policy again; that lives
in :mod:`robotd.commands.rerun`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robotd.cli import existing_output
from robotd.commands.extras import require_extra
from robotd.logs.logread import STAGES, LogData, LogError, read_log
from sim.observation import UPRIGHT_TILT_DEG

LATENCY_ROWS: tuple[str, ...] = (*STAGES, "tick", "rx_to_tx")
"""Rows of the latency table: the six stages, then the whole tick and phone-to-servo."""

FAULT_FLAG_ORDER = ("overrun", "stale", "fall", "nan", "disconnected", "reconnect", "clamped", "slew", "coalesced")
_MAX_EVENTS_SHOWN = 40  # the human report lists this many; --json lists all
_PLOT_POINTS = 3000  # samples per plotted series; more only costs time, not information


@dataclass(frozen=True)
class Percentiles:
    """Distribution of a per-tick value over the ticks that have one (``n``)."""

    n: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: np.ndarray) -> "Percentiles":
        v = values[np.isfinite(values)]
        if v.size == 0:
            return cls(0, None, None, None, None)
        p50, p90, p99 = np.percentile(v, [50, 90, 99]).tolist()
        return cls(int(v.size), p50, p90, p99, float(v.max()))


@dataclass(frozen=True)
class RunStats:
    """Loop timing. The achieved rate counts ticks by ``seq``, so records dropped by the log
    writer do not read as a slow loop; jitter uses only intervals between consecutive ticks."""

    ticks: int
    first_seq: int | None
    last_seq: int | None
    missing_ticks: int
    duration_s: float
    nominal_rate_hz: float | None
    achieved_rate_hz: float | None
    jitter_std_us: float | None
    jitter_p99_us: float | None
    jitter_max_us: float | None
    missed_deadlines: int
    missed_deadlines_source: str
    summary_overruns: int | None


@dataclass(frozen=True)
class PacketCounts:
    """Phone packet totals and where they came from (the summary line has the receiver's
    own counters; without it only the readings that reached the loop can be counted)."""

    accepted: int | None
    rejected: int | None
    stale: int | None
    source: str


@dataclass(frozen=True)
class SerialStats:
    mean_bytes_per_tick: float | None
    max_bytes_per_tick: float | None
    total_bytes: int


@dataclass(frozen=True)
class FlagStats:
    """How often a per-tick flag was set: ticks, separate episodes, and when it first was."""

    ticks: int
    episodes: int
    first_t_rel_s: float | None


@dataclass(frozen=True)
class EventRow:
    t_rel_s: float
    event: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Posture:
    """Time fallen (safety mode ``fallen`` or the ``fall`` flag) and not, time upright (tilt
    within ``UPRIGHT_TILT_DEG``, as in the simulated robot's ground truth; None without any
    orientation data) and the torso tilt from the logged quaternions."""

    not_fallen_s: float
    fallen_s: float
    upright_s: float | None
    falls: int
    fall_events: int
    summary_falls: int | None
    time_by_mode_s: dict[str, float]
    tilt_deg: Percentiles


@dataclass(frozen=True)
class Report:
    """Everything ``robotd replay`` prints; ``--json`` is :func:`dataclasses.asdict` of it."""

    file: str
    schema: int
    robotd_version: str | None
    policy: str | None
    calibration: str | None
    run: RunStats
    latency_us: dict[str, Percentiles]
    packet_age_ms: Percentiles
    packets: PacketCounts
    serial: SerialStats
    flags: dict[str, FlagStats]
    events: list[EventRow]
    posture: Posture
    warnings: list[str]


def build_report(log: LogData) -> Report:
    """Compute the report of a read log (vectorised: an hour of ticks takes milliseconds)."""
    t0_s = float(log.t_s[0]) if log.n_ticks else (log.events[0].t_s if log.events else 0.0)
    period_s, period_note = _period_s(log)
    latency = {s: Percentiles.of(log.stages_us[s]) for s in STAGES}
    latency["tick"] = Percentiles.of(log.tick_us)
    latency["rx_to_tx"] = Percentiles.of(log.rx_to_tx_us)
    return Report(
        file=str(log.path),
        schema=int(log.header["schema"]),
        robotd_version=_str_or_none(log.header.get("robotd_version")),
        policy=_identity(log.header.get("policy")),
        calibration=_identity(log.header.get("calibration")),
        run=_run_stats(log, period_s),
        latency_us=latency,
        packet_age_ms=Percentiles.of(log.pkt_age_ms),
        packets=_packet_counts(log),
        serial=_serial_stats(log),
        flags=_flag_stats(log, t0_s),
        events=[EventRow(round(e.t_s - t0_s, 6), e.name, e.details) for e in log.events],
        posture=_posture(log, period_s),
        warnings=log.warnings + ([period_note] if period_note else []),
    )


def _period_s(log: LogData) -> tuple[float, str | None]:
    """The nominal tick period: from the header's rate, else the median interval (noted)."""
    if log.rate_hz is not None:
        return 1.0 / log.rate_hz, None
    intervals = np.diff(log.t_s)
    period = float(np.median(intervals)) if intervals.size else 0.0
    return period, "the header has no rate_hz: jitter is measured against the median tick interval"


def _run_stats(log: LogData, period_s: float) -> RunStats:
    n = log.n_ticks
    overruns = int(log.has_flag("overrun").sum())
    summary_overruns = _int_or_none((log.summary or {}).get("overruns"))
    if n == 0:
        return RunStats(0, None, None, 0, 0.0, log.rate_hz, None, None, None, None, overruns,
                        "overrun flag", summary_overruns)
    span_ticks = int(log.seq[-1] - log.seq[0])
    duration_s = float(log.t_s[-1] - log.t_s[0])
    consecutive = np.diff(log.seq) == 1
    deviation_us = (np.diff(log.t_s)[consecutive] - period_s) * 1e6
    jitter = deviation_us.size > 0
    return RunStats(
        ticks=n,
        first_seq=int(log.seq[0]),
        last_seq=int(log.seq[-1]),
        missing_ticks=span_ticks + 1 - n,
        duration_s=duration_s,
        nominal_rate_hz=log.rate_hz,
        achieved_rate_hz=span_ticks / duration_s if duration_s > 0 else None,
        jitter_std_us=float(deviation_us.std()) if jitter else None,
        jitter_p99_us=float(np.percentile(np.abs(deviation_us), 99)) if jitter else None,
        jitter_max_us=float(np.abs(deviation_us).max()) if jitter else None,
        missed_deadlines=overruns,
        missed_deadlines_source="overrun flag",
        summary_overruns=summary_overruns,
    )


def _packet_counts(log: LogData) -> PacketCounts:
    """Receiver counters from the summary (``packets: {accepted, rejected, stale}`` or
    ``packets_accepted``...), else the readings the loop lines carry in ``rx``."""
    summary = log.summary or {}
    counters = summary.get("packets")
    if not isinstance(counters, dict):
        counters = {k.removeprefix("packets_"): v for k, v in summary.items() if k.startswith("packets_")}
    if any(k in counters for k in ("accepted", "rejected", "stale")):
        return PacketCounts(_int_or_none(counters.get("accepted")), _int_or_none(counters.get("rejected")),
                            _int_or_none(counters.get("stale")), "summary line")
    return PacketCounts(int(log.n_rx.sum()), None, None,
                        "loop lines (readings in rx); rejected and stale are only in the summary line")


def _serial_stats(log: LogData) -> SerialStats:
    b = log.bytes_written[np.isfinite(log.bytes_written)]
    if b.size == 0:
        return SerialStats(None, None, 0)
    return SerialStats(float(b.mean()), float(b.max()), int(b.sum()))


def _flag_stats(log: LogData, t0_s: float) -> dict[str, FlagStats]:
    known = [f for f in FAULT_FLAG_ORDER if f in log.flag_bit]
    out = {}
    for name in known + sorted(set(log.flag_bit) - set(known)):
        mask = log.has_flag(name)
        starts = _episode_starts(mask)
        first = float(log.t_s[starts[0]] - t0_s) if starts.size else None
        out[name] = FlagStats(int(mask.sum()), int(starts.size), first)
    return out


def _posture(log: LogData, period_s: float) -> Posture:
    dt_s = np.append(np.diff(log.t_s), period_s) if log.n_ticks else np.zeros(0)
    fallen = log.mode_is("fallen") | log.has_flag("fall")
    tilt_rad = torso_angles_rad(log.quat_wxyz)[2]
    known = np.isfinite(tilt_rad)
    upright = known & (tilt_rad < np.radians(UPRIGHT_TILT_DEG))
    return Posture(
        not_fallen_s=float(dt_s[~fallen].sum()),
        fallen_s=float(dt_s[fallen].sum()),
        upright_s=float(dt_s[upright].sum()) if known.any() else None,
        falls=int(_episode_starts(fallen).size),
        fall_events=sum(e.name == "fall" for e in log.events),
        summary_falls=_int_or_none((log.summary or {}).get("falls")),
        time_by_mode_s={m: float(dt_s[log.mode_code == i].sum()) for i, m in enumerate(log.mode_names)},
        tilt_deg=Percentiles.of(np.degrees(tilt_rad)),
    )


def torso_angles_rad(quat_wxyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pitch, roll and tilt (rad) for an (n, 4) array of torso quaternions; NaN rows stay NaN.

    The same definitions as ``sim.observation.gravity_in_torso``, ``pitch_roll_rad`` and
    ``tilt_rad`` (the tests hold them equal), over all ticks at once: those helpers take one
    sample at a time, about 12 µs each, which is two seconds for an hour's log.
    """
    w, x, y, z = (quat_wxyz[:, i] for i in range(4))
    gx = -2 * (x * z - w * y)
    gy = -2 * (y * z + w * x)
    gz = -(1 - 2 * (x * x + y * y))
    return np.arctan2(gx, -gz), np.arctan2(-gy, -gz), np.arccos(np.clip(-gz, -1.0, 1.0))


def _episode_starts(mask: np.ndarray) -> np.ndarray:
    """Indices where a boolean run of ``mask`` begins (a run at index 0 counts)."""
    return np.flatnonzero(mask & ~np.concatenate(([False], mask[:-1])))


def _identity(section: Any) -> str | None:
    if not isinstance(section, dict):
        return None
    name, identity = section.get("name"), section.get("identity")
    if name and identity:
        return f"{name} ({identity})"
    return _str_or_none(name or identity)


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(v)


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


# -- output ----------------------------------------------------------------------------------


def report_json(report: Report) -> str:
    """The whole report as one JSON object; values the log does not have are null."""
    return json.dumps(asdict(report), indent=2)


def format_report(report: Report) -> str:
    """The human report: aligned sections, ``-`` for values the log does not have."""
    r, p, s = report.run, report.posture, report.serial
    rate = f"{_fmt(r.achieved_rate_hz, 2)} Hz achieved, {_fmt(r.nominal_rate_hz, 2)} Hz nominal"
    overrun_pct = f" ({100 * r.missed_deadlines / r.ticks:.2f} %)" if r.ticks else ""
    summary_overruns = f", summary says {r.summary_overruns}" if r.summary_overruns is not None else ""
    lines = [
        f"robotd replay: {report.file}",
        f"  schema {report.schema}, robotd {report.robotd_version or '-'}, policy {report.policy or '-'}, "
        f"calibration {report.calibration or '-'}",
        "",
        _table([
            ["ticks", f"{r.ticks} (seq {_fmt(r.first_seq)}..{_fmt(r.last_seq)}, "
                      f"{r.missing_ticks} missing from the log)"],
            ["duration", f"{r.duration_s:.1f} s"],
            ["loop rate", rate],
            ["jitter (interval - period)", f"std {_fmt(r.jitter_std_us, 0)} µs, p99 {_fmt(r.jitter_p99_us, 0)} µs, "
                                           f"max {_fmt(r.jitter_max_us, 0)} µs"],
            ["missed deadlines", f"{r.missed_deadlines}{overrun_pct} from the {r.missed_deadlines_source}"
                                 f"{summary_overruns}"],
            ["packet age", f"p50 {_fmt(report.packet_age_ms.p50, 1)} ms, p99 {_fmt(report.packet_age_ms.p99, 1)} ms"],
            ["packets", f"accepted {_fmt(report.packets.accepted)}, rejected {_fmt(report.packets.rejected)}, "
                        f"stale {_fmt(report.packets.stale)} (from {report.packets.source})"],
            ["serial bytes per tick", f"mean {_fmt(s.mean_bytes_per_tick, 1)}, max {_fmt(s.max_bytes_per_tick, 0)}, "
                                      f"total {s.total_bytes}"],
            ["not fallen / fallen", f"{p.not_fallen_s:.1f} s / {p.fallen_s:.1f} s, {p.falls} fall(s) "
                                    f"({p.fall_events} fall event(s))"],
            [f"upright (< {UPRIGHT_TILT_DEG:g}°)", "- (no orientation data)" if p.upright_s is None
                                                  else f"{p.upright_s:.1f} s"],
            ["tilt", f"p50 {_fmt(p.tilt_deg.p50, 1)}°, p99 {_fmt(p.tilt_deg.p99, 1)}°, max {_fmt(p.tilt_deg.max, 1)}°"],
            ["time by mode", ", ".join(f"{m} {v:.1f} s" for m, v in p.time_by_mode_s.items()) or "-"],
        ], header=None),
        "",
        "latency (µs)",
        _table([[name, str(q.n), *(_fmt(v, 0) for v in (q.p50, q.p90, q.p99, q.max))]
                for name, q in report.latency_us.items()],
               header=["stage", "n", "p50", "p90", "p99", "max"]),
    ]
    if report.flags:
        lines += ["", "flags", _table(
            [[name, str(f.ticks), str(f.episodes), _fmt(f.first_t_rel_s, 3)] for name, f in report.flags.items()],
            header=["flag", "ticks", "episodes", "first at (s)"])]
    if report.events:
        shown = report.events[:_MAX_EVENTS_SHOWN]
        lines += ["", "events (s from the first tick)", _table(
            [[f"{e.t_rel_s:.3f}", e.event, " ".join(f"{k}={v}" for k, v in e.details.items())] for e in shown],
            header=None)]
        if len(report.events) > len(shown):
            lines.append(f"  ... {len(report.events) - len(shown)} more (all of them with --json)")
    if report.warnings:
        lines += ["", "warnings", *(f"  {w}" for w in report.warnings)]
    return "\n".join(lines)


def _fmt(v: float | int | None, digits: int | None = None) -> str:
    if v is None:
        return "-"
    return str(v) if digits is None else f"{v:.{digits}f}"


def _table(rows: list[list[str]], header: list[str] | None) -> str:
    """Two-space-indented columns: the first left-aligned, numbers right-aligned."""
    all_rows = ([header] if header else []) + rows
    widths = [max(len(row[i]) for row in all_rows if i < len(row)) for i in range(max(map(len, all_rows)))]
    numeric = [bool(header) and i > 0 for i in range(len(widths))]
    return "\n".join(
        "  " + "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()
        for row in all_rows
    )


# -- plot ------------------------------------------------------------------------------------


def _held_pulses_us(log: LogData, rows: np.ndarray) -> list[dict[str, float]]:
    """The pulse each channel holds at each of ``rows`` (sorted tick indices).

    A tick logs only the channels it sent (those past the deadband), and a servo holds its last
    pulse, so every tick up to the last row is read: sampling only ``rows`` showed the start-up
    move, when every channel is sent, and gaps after it."""
    wanted = iter(rows.tolist())
    next_row = next(wanted, None)
    current: dict[str, float] = {}
    out: list[dict[str, float]] = []
    last = int(rows[-1]) + 1 if len(rows) else 0
    for i, raw in enumerate(log.raw_ticks(range(last))):
        current.update(raw.pulses_us)
        while next_row == i:
            out.append(dict(current))
            next_row = next(wanted, None)
    return out


def plot_report(log: LogData, out_path: Path) -> None:
    """Four panels: stage latency over time (per-bin maxima, so spikes survive thinning),
    CDFs of tick_us and rx_to_tx_us, torso pitch/roll with fallen and stale spans, and the
    pulse each channel holds (re-read from the log, drawn at a thinned set of ticks)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 10), layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_cdf, ax_tilt, ax_pulse = fig.subplots(2, 2).ravel()
    t_rel_s = log.t_s - (log.t_s[0] if log.n_ticks else 0.0)
    fig.suptitle(f"{log.path.name}: {log.n_ticks} ticks, {t_rel_s[-1] if log.n_ticks else 0:.1f} s")

    for name in STAGES:
        ax_lat.plot(*_max_envelope(t_rel_s, log.stages_us[name]), lw=0.8, label=name)
    ax_lat.plot(*_max_envelope(t_rel_s, log.tick_us), lw=0.8, color="k", label="tick")
    ax_lat.set(title="latency per stage (max per bin)", xlabel="time (s)", ylabel="µs", yscale="log")
    ax_lat.legend(fontsize="small", ncol=4)

    for name, values in (("tick_us", log.tick_us), ("rx_to_tx_us", log.rx_to_tx_us)):
        v = values[np.isfinite(values)]
        if v.size:
            q = np.linspace(0, 1, min(v.size, _PLOT_POINTS))
            ax_cdf.plot(np.quantile(v, q), q, label=f"{name} (n={v.size})")
    ax_cdf.set(title="latency CDF", xlabel="µs", ylabel="fraction of ticks", xscale="log")
    ax_cdf.grid(True, which="both", alpha=0.3)
    if ax_cdf.lines:
        ax_cdf.legend(fontsize="small")

    rows = _thinned_rows(log.n_ticks)
    pitch_rad, roll_rad, _ = torso_angles_rad(log.quat_wxyz[rows])
    ax_tilt.plot(t_rel_s[rows], np.degrees(pitch_rad), lw=0.8, label="pitch")
    ax_tilt.plot(t_rel_s[rows], np.degrees(roll_rad), lw=0.8, label="roll")
    for mask, color, label in ((log.mode_is("fallen") | log.has_flag("fall"), "red", "fallen"),
                               (log.has_flag("stale"), "orange", "stale")):
        if mask.any():
            ax_tilt.fill_between(t_rel_s, 0, 1, where=mask, step="post", color=color, alpha=0.25, label=label,
                                 transform=ax_tilt.get_xaxis_transform())
    ax_tilt.set(title="torso pitch / roll", xlabel="time (s)", ylabel="degrees")
    ax_tilt.legend(fontsize="small")

    held = _held_pulses_us(log, rows)
    for channel in sorted({c for p in held for c in p}, key=lambda c: (len(c), c)):
        ax_pulse.plot(t_rel_s[rows], [p.get(channel, np.nan) for p in held], lw=0.6, drawstyle="steps-post",
                      label=channel)
    ax_pulse.set(title="pulse per channel (held between sends)", xlabel="time (s)", ylabel="µs")
    if held and held[-1]:
        ax_pulse.legend(fontsize="x-small", ncol=6, title="channel")
    fig.savefig(out_path, dpi=100)


def _thinned_rows(n: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, _PLOT_POINTS)).astype(np.int64)) if n else np.zeros(0, np.int64)


def _max_envelope(t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_PLOT_POINTS`` points: each bin's first time and its largest value."""
    if t.size <= _PLOT_POINTS:
        return t, values
    starts = _thinned_rows(t.size)
    return t[starts], np.fmax.reduceat(values, starts)


# -- command line ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robotd replay",
        description="Report on a run from its latency log: loop rate and jitter, missed deadlines, "
                    "per-stage latency, packet age, faults and events, time fallen and upright.",
    )
    parser.add_argument("log", type=Path, help="latency log written by `robotd run --log`")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="also draw the run into a PNG")
    parser.add_argument("--mcap", type=Path, metavar="OUT.mcap",
                        help="also write the run as MCAP (Foxglove, PlotJuggler, Rerun; needs the [foxglove] extra)")
    parser.add_argument("--rerun", action="store_true",
                        help="feed the logged phone readings through fusion and a policy again: with the "
                             "logged policy the actions must reproduce exactly (exit 1 if not)")
    parser.add_argument("--policy", metavar="OTHER",
                        help="with --rerun: the policy to re-run instead of the logged one")
    parser.add_argument("--force", action="store_true", help="replace an existing --plot / --mcap file")
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``robotd replay``: 0 on success, 2 when the log cannot be read."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has printed why
        return int(exc.code or 0)
    if args.policy and not args.rerun:
        print("robotd replay: --policy only applies to --rerun", file=sys.stderr)
        return 2
    if args.rerun:
        from robotd.commands.rerun import main as rerun_main

        return rerun_main([str(args.log), *(["--policy", args.policy] if args.policy else []),
                           *(["--json"] if args.json else []), *(["--plot", str(args.plot)] if args.plot else []),
                           *(["--force"] if args.force else [])])
    for path, flag, extra in ((args.mcap, "--mcap", "foxglove"), (args.plot, "--plot", "plot")):
        refused = existing_output(path, flag, args.force)
        if refused:
            print(f"robotd replay: {refused}", file=sys.stderr)
            return 2
        if path is not None:
            require_extra(extra)  # before the report is printed, not after
    try:
        log = read_log(args.log)
    except LogError as exc:
        print(f"robotd replay: {exc}", file=sys.stderr)
        return 2
    report = build_report(log)
    print(report_json(report) if args.json else format_report(report))
    if args.mcap:
        from robotd.logs.mcap_export import export_mcap

        try:
            done = export_mcap(log, args.mcap)
        except OSError as exc:
            print(f"robotd replay: cannot write {args.mcap}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"robotd replay: {done.ticks} ticks, {done.events} events, {done.messages} messages written to "
              f"{args.mcap}", file=sys.stderr)
    if args.plot:
        try:
            plot_report(log, args.plot)
        except OSError as exc:
            print(f"robotd replay: cannot write the plot {args.plot}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"robotd replay: plot written to {args.plot}", file=sys.stderr)
    return 0

"""``robotd replay``: report numbers on logs whose answers are known, output forms, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robotd.logs.logread import read_log
from robotd.commands.replay import LATENCY_ROWS, build_report, main, torso_angles_rad
from sim.observation import gravity_in_torso, pitch_roll_rad, tilt_rad
from test_logread import RATE_HZ, STAGE_US, header_record, synthetic_run, write_log

PERIOD_S = 1.0 / RATE_HZ
N_TICKS, OVERRUN_EVERY = 1000, 125  # overruns at seq 124, 249, ... 999: 8 of them, under 1 % of ticks
OVERRUNS = N_TICKS // OVERRUN_EVERY
SUMMARY = {"ticks": N_TICKS, "overruns": OVERRUNS, "falls": 1, "packets": {"accepted": 3990, "rejected": 2, "stale": 5}}


@pytest.fixture
def known_run(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """An overrun (25 ms policy, next tick a period late) every 125th tick, stale phone over
    ticks 200-209 (safety holds), fallen over ticks 500-549."""
    records = list(synthetic_run(N_TICKS, overrun_every=OVERRUN_EVERY, fall=(500, 550), stale=(200, 210)))
    return write_log(tmp_path / "run.log", records, summary=SUMMARY), records


def _loop_t(records: list[dict[str, Any]], seq: int) -> float:
    return next(r["t"] for r in records if r["type"] == "loop" and r["seq"] == seq)


def test_report_numbers_on_a_known_run(known_run: tuple[Path, list[dict[str, Any]]]) -> None:
    path, records = known_run
    report = build_report(read_log(path))
    run = report.run
    assert (run.ticks, run.first_seq, run.last_seq, run.missing_ticks) == (1000, 0, 999, 0)
    # 999 intervals; the 7 after an overrun tick (all but the last one) are two periods long.
    late = OVERRUNS - 1
    assert run.duration_s == pytest.approx((999 + late) * PERIOD_S)
    assert run.achieved_rate_hz == pytest.approx(999 / ((999 + late) * PERIOD_S))
    deviation_us = np.array([PERIOD_S * 1e6] * late + [0.0] * (999 - late))
    assert run.jitter_std_us == pytest.approx(deviation_us.std(), rel=1e-6)
    assert run.jitter_max_us == pytest.approx(PERIOD_S * 1e6)
    assert run.jitter_p99_us == pytest.approx(0.0, abs=1e-3)
    assert (run.missed_deadlines, run.summary_overruns) == (OVERRUNS, OVERRUNS)

    for stage, us in STAGE_US.items():
        lat = report.latency_us[stage]
        assert (lat.n, lat.p50, lat.p99) == (1000, us, us)
        assert lat.max == (25000.0 if stage == "policy" else us)
    assert report.latency_us["tick"].p50 == sum(STAGE_US.values())
    assert report.latency_us["rx_to_tx"].p50 == sum(STAGE_US.values()) + 15000.0
    assert report.latency_us["tick"].max == sum(STAGE_US.values()) - STAGE_US["policy"] + 25000.0
    assert report.latency_us["rx_to_tx"].max == sum(STAGE_US.values()) + 200_000.0  # a stale tick: 200 ms old
    assert list(report.latency_us) == list(LATENCY_ROWS)
    assert report.packet_age_ms.p50 == 15.0 and report.packet_age_ms.max == 200.0

    assert (report.packets.accepted, report.packets.rejected, report.packets.stale) == (3990, 2, 5)
    assert report.packets.source == "summary line"
    assert (report.serial.mean_bytes_per_tick, report.serial.max_bytes_per_tick) == (180.0, 180.0)
    assert report.serial.total_bytes == 180_000

    flags = report.flags
    assert list(flags) == ["overrun", "stale", "fall"]
    assert (flags["overrun"].ticks, flags["overrun"].episodes) == (OVERRUNS, OVERRUNS)
    assert (flags["stale"].ticks, flags["stale"].episodes) == (10, 1)
    t0 = _loop_t(records, 0)
    assert flags["stale"].first_t_rel_s == pytest.approx(_loop_t(records, 200) - t0)
    assert [(e.event, e.t_rel_s) for e in report.events] == [
        ("stale", pytest.approx(_loop_t(records, 200) - t0)),
        ("fall", pytest.approx(_loop_t(records, 500) - t0)),
    ]

    posture = report.posture
    assert posture.fallen_s == pytest.approx(50 * PERIOD_S)
    assert posture.not_fallen_s == pytest.approx(run.duration_s + PERIOD_S - 50 * PERIOD_S)
    assert posture.upright_s == pytest.approx(posture.not_fallen_s)  # tilt ~1° outside the fall
    assert (posture.falls, posture.fall_events, posture.summary_falls) == (1, 1, 1)
    assert posture.time_by_mode_s["hold"] == pytest.approx(10 * PERIOD_S)
    assert posture.tilt_deg.max == pytest.approx(80.0)
    assert report.warnings == []


def test_torso_angles_match_the_observation_helpers() -> None:
    rng = np.random.default_rng(1)
    quats = rng.normal(size=(200, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    pitch, roll, tilt = torso_angles_rad(quats)
    for q, p, r, t in zip(quats, pitch, roll, tilt):
        g = gravity_in_torso(q)
        assert (p, r) == pytest.approx(pitch_roll_rad(g), abs=1e-12)
        assert t == pytest.approx(tilt_rad(g), abs=1e-12)
    assert np.isnan(torso_angles_rad(np.full((1, 4), np.nan))).all()


def test_human_report(known_run: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = known_run
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "missed deadlines            8 (0.80 %) from the overrun flag, summary says 8" in out
    assert "  stage        n    p50    p90    p99     max" in out
    assert "  policy    1000    900    900    900   25000" in out
    assert "1 fall(s)" in out and "accepted 3990, rejected 2, stale 5 (from summary line)" in out


def test_json_report(known_run: tuple[Path, list[dict[str, Any]]], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = known_run
    assert main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"file", "schema", "robotd_version", "policy", "calibration", "run", "latency_us",
                           "packet_age_ms", "packets", "serial", "flags", "events", "posture", "warnings"}
    assert report["run"]["missed_deadlines"] == OVERRUNS
    assert set(report["latency_us"]) == set(LATENCY_ROWS)
    assert report["latency_us"]["policy"] == {"n": 1000, "p50": 900.0, "p90": 900.0, "p99": 900.0, "max": 25000.0}
    assert report["events"][1]["event"] == "fall" and report["events"][1]["details"] == {"tilt_deg": 80.0}
    assert report["posture"]["falls"] == 1
    assert report["policy"] == "pd (pd:kp=1.0)"


def test_plot_writes_a_png(known_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = known_run
    out = tmp_path / "run.png"
    assert main([str(path), "--plot", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert "plot written" in capsys.readouterr().err


def test_plot_to_an_unwritable_path(known_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = known_run
    assert main([str(path), "--plot", str(tmp_path / "no" / "dir.png")]) == 1
    assert "cannot write the plot" in capsys.readouterr().err


def test_without_summary_packets_come_from_the_loop_lines(tmp_path: Path) -> None:
    report = build_report(read_log(write_log(tmp_path / "a.log", synthetic_run(50))))
    assert report.packets.accepted == 50 * 4 and report.packets.rejected is None
    assert report.packets.source.startswith("loop lines")
    assert any("no summary line" in w for w in report.warnings)


def test_dropped_records_do_not_read_as_a_slow_loop(tmp_path: Path) -> None:
    records = [r for r in synthetic_run(500) if r["seq"] % 7 != 3]  # the writer dropped some
    report = build_report(read_log(write_log(tmp_path / "a.log", records, summary={})))
    assert report.run.missing_ticks == 500 - len(records)
    assert report.run.achieved_rate_hz == pytest.approx(RATE_HZ)
    assert report.run.jitter_max_us == pytest.approx(0.0, abs=1e-3)  # intervals across a gap are left out


def test_header_only_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(tmp_path / "a.log", [])
    assert main([str(path)]) == 0
    assert "0 (seq -..-, 0 missing from the log)" in capsys.readouterr().out
    assert main([str(path), "--json", "--plot", str(tmp_path / "a.png")]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["ticks"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        (b"PK\x03\x04 zip file\n", "not a robotd latency log"),
        (json.dumps(header_record(schema=2)).encode() + b"\n",
         "schema 2 is newer than this reader supports (schema 1)"),
    ],
)
def test_unreadable_logs_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.log"
    if content is not None:
        path.write_bytes(content)
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"robotd replay: {path}") and message in captured.err


def test_damaged_log_still_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(tmp_path / "a.log", synthetic_run(100, overrun_every=10))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[42] = b"garbage\n"
    lines[-1] = lines[-1][:100]  # cut off mid-line
    path.write_bytes(b"".join(lines))
    assert main([str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run"]["ticks"] == 98
    assert report["run"]["missed_deadlines"] == 9
    warnings = " | ".join(report["warnings"])
    assert "line 101) is truncated" in warnings and "1 unreadable line(s) skipped: lines 43" in warnings


def test_policy_needs_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(tmp_path / "a.log", synthetic_run(5))
    assert main([str(path), "--policy", "hold"]) == 2
    assert "--policy only applies to --rerun" in capsys.readouterr().err


def test_help_and_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: robotd replay" in capsys.readouterr().out
    assert main([]) == 2


def test_packet_counters_in_the_daemons_summary_form(tmp_path: Path) -> None:
    summary = {"ticks": 50, "overruns": 0, "packets_accepted": 190, "packets_rejected": 3, "falls": 0}
    report = build_report(read_log(write_log(tmp_path / "a.log", synthetic_run(50), summary=summary)))
    assert (report.packets.accepted, report.packets.rejected, report.packets.stale) == (190, 3, None)
    assert report.packets.source == "summary line"


def test_upright_means_within_10_degrees_and_is_absent_without_orientation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """"Upright" is the tilt figure (< 10°, as in the simulated robot's ground truth), apart
    from "not fallen"; a log without any orientation has no upright figure at all."""
    from test_logread import pitch_quat

    records = list(synthetic_run(100))
    for r in records[50:]:
        if r["type"] == "loop":
            r["quat"] = pitch_quat(np.radians(20.0))  # leaning 20°: not fallen, not upright
    report = build_report(read_log(write_log(tmp_path / "lean.log", records)))
    assert report.posture.fallen_s == 0.0
    assert report.posture.upright_s == pytest.approx(report.posture.not_fallen_s / 2, abs=2 * PERIOD_S)

    blind = list(synthetic_run(100))
    for r in blind:
        if r["type"] == "loop":
            r["quat"] = None
    path = write_log(tmp_path / "blind.log", blind)
    assert build_report(read_log(path)).posture.upright_s is None
    capsys.readouterr()
    assert main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "upright (< 10°)" in text and "- (no orientation data)" in text and "not fallen / fallen" in text


def test_the_pulse_panel_holds_each_channel_between_its_sends(tmp_path: Path) -> None:
    """A tick logs only the channels it sent; the plot shows what each servo holds at every sampled
    tick, not gaps wherever a sampled tick sent nothing (the panel used to end after the start-up)."""
    from robotd.commands.replay import _held_pulses_us

    records = list(synthetic_run(1000))
    for rec in records:
        rec.pop("pulses_us", None)
    records[0]["pulses_us"] = {"1": 1500, "2": 1400}
    records[333]["pulses_us"] = {"1": 1520}
    log = read_log(write_log(tmp_path / "run.log", records))
    rows = np.array([0, 200, 500, 999])
    assert _held_pulses_us(log, rows) == [{"1": 1500, "2": 1400}, {"1": 1500, "2": 1400},
                                          {"1": 1520, "2": 1400}, {"1": 1520, "2": 1400}]

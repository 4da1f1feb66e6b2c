"""The latency-log reader, and the synthetic-log helpers the replay tests and benchmark share.

The helpers write logs the way ``docs/latency-log.md`` specifies them (compact JSON, NaN as
null, full-precision floats, a few phone readings per tick), so line sizes and parse costs
are those of a real run.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calibration import JOINT_NAMES, LEG_JOINTS
from robotd.logs.logread import STAGES, LogError, read_log

RATE_HZ = 50.0
CHANNELS = [str(i + 1) for i in range(len(JOINT_NAMES))]
STAGE_US = {"parse": 40.0, "fuse": 120.0, "policy": 900.0, "safety": 60.0, "encode": 30.0, "write": 150.0}
"""Stage times of an ordinary synthetic tick; tests assert the report against these."""


def header_record(**overrides: Any) -> dict[str, Any]:
    header = {
        "type": "header", "schema": 1, "robotd_version": "0.1.0", "started_unix": 1760000000.0,
        "calibration": {"path": "calibration/robot.toml", "identity": "rtrobot-17dof-biped@0f06"},
        "policy": {"name": "pd", "identity": "pd:kp=1.0", "path": None},
        "rate_hz": RATE_HZ, "phone_format": "sensagram", "port": "/dev/ttyACM0",
        "observation": {"controlled_joints": list(LEG_JOINTS), "action_history": 4, "version": 1},
        "joint_names": list(JOINT_NAMES), "channels": [int(c) for c in CHANNELS],
    }
    header.update(overrides)
    return header


def pitch_quat(pitch_rad: float) -> list[float]:
    """Torso orientation leaning forward by ``pitch_rad`` (rotation about the torso y axis)."""
    return [math.cos(pitch_rad / 2), 0.0, math.sin(pitch_rad / 2), 0.0]


def loop_record(seq: int, t_s: float, *, rng: np.random.Generator, stages_us: dict[str, float] | None = None,
                flags: Iterable[str] = (), mode: str = "run", pitch_rad: float = 0.02,
                pkt_age_ms: float | None = 15.0, bytes_written: int = 180, n_rx: int = 4) -> dict[str, Any]:
    """One loop line as the daemon writes it; the jitter-free parts are exact so tests can check them."""
    stages = dict(STAGE_US if stages_us is None else stages_us)
    tick_us = sum(stages.values())
    action = rng.uniform(-1, 1, len(LEG_JOINTS)).tolist()
    targets = (0.3 * np.sin(seq / 25 + np.arange(len(JOINT_NAMES))) + rng.normal(0, 0.01, len(JOINT_NAMES))).tolist()
    arrival = t_s - 0.001 * rng.uniform(1, 20, n_rx)
    return {
        "type": "loop", "seq": seq, "t": t_s, "deadline": t_s - 1e-4,
        "pkt_age_ms": pkt_age_ms, "stages_us": stages, "tick_us": tick_us,
        "rx_to_tx_us": None if pkt_age_ms is None else tick_us + 1000.0 * pkt_age_ms,
        "quat": pitch_quat(pitch_rad), "gyro": rng.normal(0, 0.1, 3).tolist(),
        "action": action, "targets_rad": targets,
        "pulses_us": {c: 1500 + int(400 * v) for c, v in zip(CHANNELS, targets)},
        "bytes": bytes_written, "mode": mode, "flags": list(flags),
        "rx": [[a, 1000.0 + a, kind, rng.normal(0, 1, 3).tolist()]
               for a, kind in zip(arrival.tolist(), itertools.cycle(("accel", "gyro", "rotvec")))],
    }


def synthetic_run(n_ticks: int, *, seed: int = 0, overrun_every: int = 0, fall: tuple[int, int] | None = None,
                  stale: tuple[int, int] | None = None, t0_s: float = 100.0) -> Iterator[dict[str, Any]]:
    """Loop and event lines of a run: overrun every ``overrun_every``-th tick (policy 25 ms,
    next tick one period late), fallen over ticks ``fall=(start, end)``, phone stale over
    ``stale=(start, end)``. Tick times are exact multiples of the period otherwise."""
    rng = np.random.default_rng(seed)
    period = 1.0 / RATE_HZ
    t = t0_s
    for seq in range(n_ticks):
        overrun = overrun_every > 0 and seq % overrun_every == overrun_every - 1
        fallen = fall is not None and fall[0] <= seq < fall[1]
        is_stale = stale is not None and stale[0] <= seq < stale[1]
        flags = (["overrun"] if overrun else []) + (["fall"] if fallen else []) + (["stale"] if is_stale else [])
        if fall is not None and seq == fall[0]:
            yield {"type": "event", "t": t, "event": "fall", "tilt_deg": 80.0}
        if stale is not None and seq == stale[0]:
            yield {"type": "event", "t": t, "event": "stale", "age_ms": 160.0}
        yield loop_record(
            seq, t, rng=rng, flags=flags, mode="fallen" if fallen else ("hold" if is_stale else "run"),
            stages_us={**STAGE_US, "policy": 25000.0} if overrun else None,
            pitch_rad=math.radians(80.0) if fallen else 0.02 * math.sin(seq / 10),
            pkt_age_ms=200.0 if is_stale else 15.0,
        )
        t += 2 * period if overrun else period


def write_log(path: Path, records: Iterable[dict[str, Any]], *, header: dict[str, Any] | None = None,
              summary: dict[str, Any] | None = None) -> Path:
    """Write a log file line by line (streaming, so a benchmark-sized log needs no memory)."""
    with open(path, "w", encoding="utf-8") as f:
        for rec in itertools.chain([header or header_record()], records):
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        if summary is not None:
            f.write(json.dumps({"type": "summary", **summary}, separators=(",", ":")) + "\n")
    return path


# -- tests -----------------------------------------------------------------------------------


def test_columns_match_the_lines(tmp_path: Path) -> None:
    records = list(synthetic_run(200, overrun_every=50, fall=(120, 130), stale=(60, 70)))
    log = read_log(write_log(tmp_path / "a.log", records, summary={"ticks": 200}))
    loops = [r for r in records if r["type"] == "loop"]
    assert log.n_ticks == 200
    assert log.warnings == []
    np.testing.assert_array_equal(log.seq, np.arange(200))
    np.testing.assert_array_equal(log.t_s, [r["t"] for r in loops])
    for s in STAGES:
        np.testing.assert_array_equal(log.stages_us[s], [r["stages_us"][s] for r in loops])
    np.testing.assert_array_equal(log.quat_wxyz, [r["quat"] for r in loops])
    assert log.has_flag("overrun").sum() == 4
    assert log.has_flag("fall").sum() == 10 and log.mode_is("fallen").sum() == 10
    assert not log.has_flag("nan").any() and not log.mode_is("shutdown").any()
    assert [e.name for e in log.events] == ["stale", "fall"]
    assert log.events[1].details == {"tilt_deg": 80.0}
    assert log.summary == {"ticks": 200}
    assert (log.n_rx == 4).all() and (log.bytes_written == 180).all()


def test_raw_ticks_are_reread_on_demand(tmp_path: Path) -> None:
    records = list(synthetic_run(30, fall=(5, 8)))
    log = read_log(write_log(tmp_path / "a.log", records))
    loops = [r for r in records if r["type"] == "loop"]
    raw = list(log.raw_ticks([29, 3]))
    assert [r.seq for r in raw] == [29, 3]
    assert raw[0].targets_rad == loops[29]["targets_rad"]
    assert raw[1].pulses_us == loops[3]["pulses_us"] and raw[1].rx == loops[3]["rx"]
    assert raw[1].action == loops[3]["action"]
    assert len(list(log.raw_ticks())) == 30


def test_nulls_read_as_nan(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rec = loop_record(0, 1.0, rng=rng, pkt_age_ms=None)
    rec.update(quat=None, gyro=[None, 0.1, 0.2])
    rec["stages_us"]["fuse"] = None
    log = read_log(write_log(tmp_path / "a.log", [rec]))
    assert np.isnan(log.pkt_age_ms[0]) and np.isnan(log.rx_to_tx_us[0]) and np.isnan(log.stages_us["fuse"][0])
    assert np.isnan(log.quat_wxyz[0]).all()
    assert np.isnan(log.gyro_rad_s[0, 0]) and log.gyro_rad_s[0, 1] == 0.1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LogError, match="no such file") as err:
        read_log(tmp_path / "nope.log")
    assert "nope.log" in str(err.value)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ("", "empty"),
        ("hello world\n", "'hello world'"),
        ('{"type": "loop", "seq": 0}\n', '"type": "loop"'),
        ("[1, 2]\n", "[1, 2]"),
        (b"\x90\x1a\x00\x00{garbage\n", "found binary data (not JSON Lines text)"),
        (b"PK\x03\x04 zip file\n", "found binary data (not JSON Lines text)"),
    ],
)
def test_not_a_log(tmp_path: Path, content: str | bytes, found: str) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LogError, match="not a robotd latency log") as err:
        read_log(path)
    assert str(path) in str(err.value) and found in str(err.value)


def test_newer_schema_names_both_versions(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.log", [], header=header_record(schema=7))
    with pytest.raises(LogError, match="schema 7 is newer than .*schema 1"):
        read_log(path)


def test_truncated_last_line_is_a_warning(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.log", synthetic_run(20))
    text = path.read_bytes()
    path.write_bytes(text[: len(text) - 300])  # the crash cut the last line
    log = read_log(path)
    assert log.n_ticks == 19 and log.truncated
    assert any("line 21 is truncated" in w or "(line 21) is truncated" in w for w in log.warnings)
    assert log.bad_lines == []


def test_garbage_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write_log(tmp_path / "a.log", synthetic_run(20))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[5] = b"\x00\x00\xff garbage\n"
    lines[9] = b'{"type": "loop", "seq": 8, "t": 1.0, "stages_us": {"par\n'
    lines[12] = b'{"type": "loop", "t": 1.2}\n'  # no seq: cannot be placed
    lines.insert(15, b"\n")  # blank: harmless, not reported
    path.write_bytes(b"".join(lines))
    log = read_log(path)
    assert log.n_ticks == 17
    assert log.bad_lines == [6, 10, 13]
    assert any("3 unreadable line(s) skipped: lines 6, 10, 13" in w for w in log.warnings)
    assert any("not consecutive" in w for w in log.warnings)


def test_a_bad_value_costs_only_that_value(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = [loop_record(i, i * 0.02, rng=rng) for i in range(5)]
    recs[2]["tick_us"] = "fast"
    recs[3]["quat"] = [1.0, 0.0]
    log = read_log(write_log(tmp_path / "a.log", recs))
    assert log.n_ticks == 5
    assert np.isnan(log.tick_us[2]) and np.isfinite(log.tick_us[[0, 1, 3, 4]]).all()
    assert np.isnan(log.quat_wxyz[3]).all() and log.quat_wxyz[4, 0] == pytest.approx(1.0, abs=1e-3)
    assert any('"tick_us" is not a number on 1 line(s)' in w and "lines 4" in w for w in log.warnings)
    assert any('"quat" is not a list of 4 numbers on 1 line(s)' in w for w in log.warnings)


def test_missing_summary_and_unknown_lines_are_reported(tmp_path: Path) -> None:
    records = [*synthetic_run(3), {"type": "metrics", "x": 1}, {"type": "header", "schema": 1}]
    log = read_log(write_log(tmp_path / "a.log", records))
    assert log.n_ticks == 3
    assert any("no summary line" in w for w in log.warnings)
    assert any('unknown type "metrics"' in w for w in log.warnings)
    assert any("second header" in w for w in log.warnings)


def test_50k_lines_parse_in_seconds(tmp_path: Path) -> None:
    path = write_log(tmp_path / "big.log", synthetic_run(50_000, overrun_every=1000))
    start_s = time.process_time()  # CPU time: the test machine is shared, wall time is not ours
    log = read_log(path)
    cpu_s = time.process_time() - start_s
    assert log.n_ticks == 50_000
    assert cpu_s < 6.0, f"reading 50k lines took {cpu_s:.1f} s of CPU"  # about 2 s on an idle core

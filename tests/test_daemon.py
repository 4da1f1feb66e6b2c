"""The whole daemon, in-process, against the board emulator on a real pty and real UDP.

Each supported phone format streams a gently swaying torso; the daemon must handshake,
make its slow timed start-up move, then follow the PD policy with pulses inside the
calibrated limits, and log every field of every tick.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import free_udp_port, run_against_emulator, write_quick_calibration, write_random_rwkv_checkpoint

from calibration import load_calibration
from robotd.daemon.run import RunConfig, run_daemon
from sim.board_emulator import BoardEmulator

LOOP_KEYS = {"type", "seq", "t", "deadline", "pkt_age_ms", "stages_us", "tick_us", "rx_to_tx_us", "quat", "gyro",
             "action", "reset_action", "targets_rad", "pulses_us", "bytes", "mode", "flags", "rx"}
STAGES = {"parse", "fuse", "policy", "safety", "encode", "write"}


@pytest.fixture
def quick_calibration(tmp_path: Path) -> Path:
    return write_quick_calibration(tmp_path)


FORMATS = [
    ("sensagram", "sensagram"),
    ("sensorstream", "sensorstream"),
    ("hyperimu:acc,gyro", "hyperimu:acc,gyro"),
    ("sensors2osc", "sensors2osc"),
    ("sensagram", "auto"),
]


@pytest.mark.parametrize("stream_format,daemon_format", FORMATS, ids=[f"{a}->{b}" for a, b in FORMATS])
def test_daemon_follows_each_phone_format(tmp_path: Path, quick_calibration: Path, stream_format: str,
                                          daemon_format: str) -> None:
    cal = load_calibration(quick_calibration)
    log_path = tmp_path / "latency.log"
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(),
                        phone_format=daemon_format, allow="127.0.0.1", policy="pd", rate_hz=50.0,
                        log_path=str(log_path), duration_s=1.6, calibration_path=str(quick_calibration))
        summary = run_against_emulator(cfg, emulator, stream_format)
        moves = list(emulator.moves)
        assert emulator.framing_errors == 0
        assert emulator.handshakes == 1 and emulator.moves_ignored == 0

    # Start-up: one timed group move of all 17 channels to the nominal pose.
    first = moves[0]
    assert first.time_ms == 300 and len(first.pulses_us) == 17
    nominal = dict(zip(cal.channels.tolist(), np.rint(cal.angles_to_pulses(cal.nominal_rad)).astype(int).tolist()))
    assert first.pulses_us == nominal
    # Then the policy moved the legs, always within the calibrated limits.
    assert len(moves) > 10, f"only {len(moves)} moves"
    limits = {j.channel: (j.min_us, j.max_us) for j in cal.joints}
    for move in moves:
        for ch, pulse in move.pulses_us.items():
            assert limits[ch][0] <= pulse <= limits[ch][1]
    # The last move is the shutdown's timed move to the safe pose.
    safe = dict(zip(cal.channels.tolist(), np.rint(cal.angles_to_pulses(cal.safe_rad)).astype(int).tolist()))
    assert moves[-1].time_ms is not None and moves[-1].pulses_us == safe

    assert summary.packets_accepted > 50 and summary.falls == 0
    assert summary.ticks >= 70 and summary.overruns <= 2

    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert records[0]["type"] == "header" and records[0]["phone_format"] == daemon_format
    loops = [r for r in records if r["type"] == "loop"]
    assert len(loops) == summary.ticks
    for r in loops:
        assert LOOP_KEYS <= r.keys() and STAGES <= r["stages_us"].keys()
    running = [r for r in loops if r["mode"] == "run"]
    assert len(running) > 30
    for r in running:
        assert r["pkt_age_ms"] is not None and r["rx_to_tx_us"] > r["tick_us"] > 0
        assert len(r["quat"]) == 4 and len(r["targets_rad"]) == 17 and r["rx"]
    assert sum(r["bytes"] for r in loops) > 0
    assert records[-1]["type"] == "summary"


def test_no_phone_means_hold_still(tmp_path: Path, quick_calibration: Path) -> None:
    """Without phone data the daemon makes its start-up move, then sends nothing at all."""
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), phone_format="sensagram",
                        policy="pd", log_path=str(tmp_path / "l.log"), duration_s=1.0,
                        calibration_path=str(quick_calibration))
        run_against_emulator(cfg, emulator, None)
        moves = list(emulator.moves)
    assert [m.time_ms for m in moves] == [300, 800]  # start-up move, shutdown safe-pose move


def test_silent_board_fails_clearly(tmp_path: Path) -> None:
    from robotd.board.link import BoardHandshakeError

    with BoardEmulator(silent=True) as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), log_path=None,
                        duration_s=1.0, handshake_timeout_s=0.3)
        with pytest.raises(BoardHandshakeError, match=emulator.path):
            asyncio.run(run_daemon(cfg))
        assert not emulator.moves


@pytest.fixture(scope="module")
def rwkv_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_rwkv_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.safetensors")


def test_daemon_runs_a_checkpoint_and_replays_it_exactly(tmp_path: Path, quick_calibration: Path,
                                                         rwkv_checkpoint: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from robotd.commands.replay import main as replay_main

    log_path = tmp_path / "latency.log"
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), phone_format="sensagram",
                        policy=str(rwkv_checkpoint), log_path=str(log_path), duration_s=1.5,
                        calibration_path=str(quick_calibration))
        summary = run_against_emulator(cfg, emulator, "sensagram")
        assert emulator.framing_errors == 0
    assert summary.policy_errors == 0 and summary.time_following_s > 0.5
    header = json.loads(log_path.read_text().splitlines()[0])
    assert header["policy"]["name"] == "rwkv4" and "random.safetensors@" in header["policy"]["identity"]
    capsys.readouterr()
    assert replay_main([str(log_path), "--rerun", "--json"]) == 0  # the recurrent state reproduces too
    assert json.loads(capsys.readouterr().out)["reproduced"]


def test_recurrent_policy_through_a_phone_gap_replays_exactly(tmp_path: Path, quick_calibration: Path,
                                                              rwkv_checkpoint: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Follow, lose the phone (hold), follow again: the re-run steps the policy as the loop did.

    The second start of control resets the recurrent policy and fills its action history with
    the held pose (logged as ``reset_action``); the re-run must use that fill to reproduce the
    actions, and says NOT reproduced when the fill is taken away.
    """
    import threading

    from robotd.commands.replay import main as replay_main
    from sim.phone_stream import PhoneStreamer, swaying_torso

    log_path = tmp_path / "latency.log"
    cal = load_calibration(quick_calibration)
    udp_port = free_udp_port()
    sway = swaying_torso(cal.phone_to_torso)
    streamer = PhoneStreamer(("127.0.0.1", udp_port), "sensagram", rate_hz=100.0)

    def phone() -> None:  # 1.2 s of data, 0.5 s of silence (> stale_timeout_ms), then data again
        t_start = time.monotonic()
        streamer.run(sway, 1.2)
        time.sleep(0.5)
        offset = time.monotonic() - t_start  # the phone's clock runs on through the gap
        streamer.run(lambda t: sway(t + offset), 1.0)

    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=udp_port, phone_format="sensagram",
                        policy=str(rwkv_checkpoint), log_path=str(log_path), duration_s=2.8,
                        calibration_path=str(quick_calibration))
        sender = threading.Thread(target=phone, daemon=True)
        sender.start()
        try:
            asyncio.run(run_daemon(cfg))
        finally:
            sender.join()
            streamer.close()
    loops = [json.loads(line) for line in log_path.read_text().splitlines()]
    loops = [r for r in loops if r["type"] == "loop"]
    modes = [r["mode"] for r in loops]
    assert all(r["action"] is None for r in loops if r["mode"] != "run")  # not consulted outside run
    starts = [i for i, m in enumerate(modes) if m == "run" and modes[i - 1] != "run"]
    assert len(starts) == 2 and "hold" in modes[starts[0]:starts[1]], modes
    assert [i for i, r in enumerate(loops) if r["reset_action"] is not None] == starts
    assert loops[starts[0]]["reset_action"] == [0.0] * len(loops[starts[0]]["action"])  # nominal after start-up
    assert max(abs(v) for v in loops[starts[1]]["reset_action"]) > 0.05  # the held pose, not zeros

    capsys.readouterr()
    assert replay_main([str(log_path), "--rerun", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reproduced"]
    lines = log_path.read_text().splitlines()
    for i, line in enumerate(lines):
        record = json.loads(line)
        if record.get("type") == "loop" and record["seq"] == loops[starts[1]]["seq"]:
            record["reset_action"] = None  # as if the history had started from zeros
            lines[i] = json.dumps(record)
    without_fill = tmp_path / "without_fill.log"
    without_fill.write_text("\n".join(lines) + "\n")
    assert replay_main([str(without_fill), "--rerun", "--json"]) == 1


def test_checkpoint_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    from policies.checkpoint import ArchConfig
    from policies.networks import build_network, save_network_checkpoint
    from robotd.daemon.policy_select import PolicyLoadError, load_policy
    from sim.observation import ObservationSpec

    spec = ObservationSpec(controlled_joints=("r_knee", "l_knee"))
    net = build_network(ArchConfig(kind="rwkv4", obs_dim=spec.size + 1, n_actions=spec.n_actions, n_bins=spec.n_bins))
    path = save_network_checkpoint(tmp_path / "bad.safetensors", net, spec, None)
    with pytest.raises(PolicyLoadError, match="obs_dim"):
        load_policy(str(path), load_calibration())
    with pytest.raises(PolicyLoadError, match="no such file"):
        load_policy(str(tmp_path / "missing.safetensors"), load_calibration())


class _BadEveryOtherTick:
    """The PD policy, but every second action is ``bad`` (NaN as a diverged network's would be,
    or outside the [-1, 1] contract)."""

    def __init__(self, spec, bad: float):
        from policies.baselines import PdPolicy

        self._pd = PdPolicy(spec)
        self.name, self.identity, self.spec = "bad-half", "bad-half", spec
        self.bad = bad
        self.calls = 0

    def reset(self) -> None:
        self._pd.reset()

    def act(self, obs):
        self.calls += 1
        return np.full(self.spec.n_actions, self.bad) if self.calls % 2 else self._pd.act(obs)


@pytest.mark.parametrize("bad", [np.nan, 1.5])
def test_nan_guarded_ticks_are_not_counted_as_following(tmp_path: Path, quick_calibration: Path, bad: float) -> None:
    from robotd.daemon.run import PreparedRun
    from sim.observation import ObservationSpec

    cal = load_calibration(quick_calibration)
    policy = _BadEveryOtherTick(ObservationSpec(), bad)
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), phone_format="sensagram",
                        log_path=None, duration_s=1.5, calibration_path=str(quick_calibration))
        from sim.phone_stream import PhoneStreamer, swaying_torso

        with PhoneStreamer(("127.0.0.1", cfg.udp_port), "sensagram", rate_hz=100.0) as phone:
            phone.start(swaying_torso(cal.phone_to_torso))
            summary = asyncio.run(run_daemon(cfg, prepared=PreparedRun(cal, policy)))
    run_ticks = summary.time_following_s * cfg.rate_hz + summary.nan_guarded_ticks
    assert summary.nan_guarded_ticks > 10
    # Half of the ticks in "run" had a NaN action: those were held, not followed.
    assert abs(summary.nan_guarded_ticks - run_ticks / 2) <= 2, summary
    assert f"held by the NaN guard {summary.nan_guarded_ticks} ticks" in "\n".join(summary.lines())
    # Each of them was a policy output outside its contract, refused and counted as such.
    assert summary.refused_outputs == summary.nan_guarded_ticks
    assert f"outputs refused {summary.refused_outputs}" in "\n".join(summary.lines())


def test_policy_checked_against_the_robots_calibration_and_mismatches_logged(tmp_path: Path,
                                                                              quick_calibration: Path,
                                                                              rwkv_checkpoint: Path) -> None:
    """A checkpoint trained with another calibration, on a robot whose r_knee limits cut the
    policy's action range around its nominal pose: both are named, and a run writes them into
    its log."""
    from robotd.daemon.policy_select import load_policy, policy_mismatches

    text = quick_calibration.read_text()
    assert text.count("r_knee = 0.5\n") == 1
    narrow = tmp_path / "narrow.toml"  # a deeper nominal crouch: 1.2 + 0.4 rad passes the 1.491 rad limit
    narrow.write_text(text.replace("r_knee = 0.5\n", "r_knee = 1.2\n"))
    cal = load_calibration(narrow)
    assert policy_mismatches(load_policy("pd", load_calibration(), warn=False), load_calibration()) == []
    problems = policy_mismatches(load_policy(str(rwkv_checkpoint), cal, warn=False), cal)
    assert len(problems) == 2, problems
    assert "trained with calibration" in problems[0] and cal.identity in problems[0]
    assert problems[1].startswith("r_knee: the policy's actions span 0.800..1.600 rad") and "14 %" in problems[1]

    log_path = tmp_path / "run.log"
    out = __import__("io").StringIO()
    with BoardEmulator() as emulator:
        cfg = RunConfig(port=emulator.path, udp_host="127.0.0.1", udp_port=free_udp_port(), policy="pd",
                        log_path=str(log_path), duration_s=0.3, calibration_path=str(narrow))
        asyncio.run(run_daemon(cfg, out=out))
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [p[:6] for p in records[0]["policy"]["mismatches"]] == ["r_knee"]
    events = [r for r in records if r["type"] == "event" and r["event"] == "policy_mismatch"]
    assert len(events) == 1 and events[0]["problem"].startswith("r_knee:")
    assert "[robotd] policy_mismatch problem=r_knee:" in out.getvalue()

"""The control loop's tick order: safety mode first, the policy only on run ticks, reset before it acts.

Real parts: the board emulator on a pty behind a real Safety, a PhoneReceiver fed real
SensaGram datagrams through its per-packet path (``handle_datagram``), the real fusion,
and ControlLoop.tick at the loop's rate. The policy records what it is asked to do.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from calibration import DEFAULT_CALIBRATION_PATH, load_calibration
from robotd.phone.fusion import Fusion
from robotd.daemon.loop import ControlLoop
from robotd.phone.formats import make_parser
from robotd.phone.receiver import PhoneReceiver
from robotd.board.link import SerialLink
from robotd.daemon.safety import Safety
from sim.board_emulator import BoardEmulator
from sim.observation import ActionHistory, ObservationSpec
from sim.phone_stream import encode_sensagram, phone_sample

RATE_HZ = 50.0
UPRIGHT = (1.0, 0.0, 0.0, 0.0)


class RecordingPolicy:
    """Leans every controlled joint by half the action scale and writes down each call."""

    name = identity = "recording"

    def __init__(self, spec: ObservationSpec, events: list):
        self.spec = spec
        self.events = events

    def reset(self) -> None:
        self.events.append(("reset", None))

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.events.append(("act", obs.copy()))
        return np.full(self.spec.n_actions, 0.5)


class Rig:
    def __init__(self, tmp_path: Path, emulator: BoardEmulator):
        self.emulator = emulator
        path = tmp_path / "robot.toml"
        path.write_text(DEFAULT_CALIBRATION_PATH.read_text().replace("startup_move_ms = 2000", "startup_move_ms = 100"))
        self.cal = load_calibration(path)
        self.spec = ObservationSpec()
        self.events: list = []
        self.safety = Safety(self.cal, SerialLink(emulator.path), RATE_HZ)
        self.safety.open()
        self.receiver = PhoneReceiver(make_parser("sensagram"), Fusion(self.cal), host="127.0.0.1", port=0)
        self.loop = ControlLoop(self.receiver, RecordingPolicy(self.spec, self.events), self.safety, self.spec,
                                self.cal.nominal_rad, RATE_HZ, log=None)
        self.t0 = time.monotonic()
        self.seq = 0
        self.records: list[dict] = []

    def tick(self, phone: bool) -> dict:
        """One tick, ``phone``: a fresh upright reading arrived just before it."""
        if phone:
            now = time.monotonic()
            for datagram in encode_sensagram(phone_sample(now - self.t0, UPRIGHT, (0.0, 0.0, 0.0),
                                                          self.cal.phone_to_torso)):
                self.receiver.handle_datagram(datagram, "127.0.0.1", now)
        record = self.loop.tick(self.seq, time.monotonic())
        self.events.append(("tick", record))
        self.records.append(record)
        self.seq += 1
        time.sleep(1.0 / RATE_HZ)
        return record


@pytest.fixture
def rig(tmp_path: Path):
    with BoardEmulator() as emulator:
        rig = Rig(tmp_path, emulator)
        yield rig
        rig.safety.shutdown()


def _per_tick(events: list) -> list[tuple[list[str], dict, list[np.ndarray]]]:
    """Split the event stream into ticks: (policy calls in order, the tick's record, observations acted on)."""
    out, calls, observations = [], [], []
    for kind, payload in events:
        if kind == "tick":
            out.append((calls, payload, observations))
            calls, observations = [], []
        else:
            calls.append(kind)
            if kind == "act":
                observations.append(payload)
    return out


def test_policy_runs_only_on_run_ticks_and_is_reset_before_its_first_act(rig: Rig) -> None:
    # Start-up (no phone yet, then the timed move), then following, then a stale phone (hold),
    # then following again.
    for _ in range(10):
        rig.tick(phone=False)
    for _ in range(10):
        rig.tick(phone=True)
    for _ in range(30):
        if rig.tick(phone=False)["mode"] == "hold":
            break
    assert rig.records[-1]["mode"] == "hold", "the phone never went stale"
    # What the board was last told: the held pose (to within the deadband).
    assert rig.emulator.wait_for(lambda em: em.moves_received == sum(bool(r["pulses_us"]) for r in rig.records), 2.0)
    held_pose = rig.cal.pulses_to_angles(np.array([rig.emulator.latest_pulse_us[int(ch)] for ch in rig.cal.channels],
                                                  dtype=np.float64))
    for _ in range(3):
        rig.tick(phone=False)
    for _ in range(5):
        rig.tick(phone=True)

    ticks = _per_tick(rig.events)
    modes = [record["mode"] for _, record, _ in ticks]
    assert modes[0] == "startup" and "hold" in modes and modes[-1] == "run"
    entries = [i for i, m in enumerate(modes) if m == "run" and (i == 0 or modes[i - 1] != "run")]
    assert len(entries) == 2, modes
    k = rig.spec.action_history
    for i, (calls, _, _) in enumerate(ticks):  # the policy is never consulted outside run; reset, then act
        assert calls == ([] if modes[i] != "run" else ["reset", "act"] if i in entries else ["act"]), (i, modes[i])
    for i, (calls, record, observations) in enumerate(ticks):
        if modes[i] != "run":  # start-up and hold: the policy is not consulted, nothing is logged for it
            assert calls == [] and record["action"] is None and record["reset_action"] is None, (i, modes[i])
        elif i in entries:  # reset first, then the first act
            assert calls == ["reset", "act"], (i, calls)
            np.testing.assert_array_equal(observations[0][6:], np.tile(record["reset_action"], k).astype(np.float32))
        else:
            assert calls == ["act"] and record["reset_action"] is None, (i, calls)
    # After the start-up move the servos are at the nominal pose: the history starts at zero.
    first_fill = ticks[entries[0]][1]["reset_action"]
    np.testing.assert_array_equal(first_fill, np.zeros(rig.spec.n_actions))
    # After the hold it starts at the held pose, which the policy had leaned away from nominal.
    second_fill = ticks[entries[1]][1]["reset_action"]
    expected = np.clip((held_pose - rig.cal.nominal_rad)[rig.spec.joint_index] / rig.spec.action_scale_rad, -1, 1)
    step_rad = (rig.cal.safety.deadband_us + 1.0) / np.abs(rig.cal.signed_us_per_rad[rig.spec.joint_index])
    np.testing.assert_allclose(second_fill, expected, rtol=0, atol=float(np.max(step_rad)) / rig.spec.action_scale_rad)
    assert np.max(np.abs(second_fill)) > 0.2


def test_history_fill_is_k_pushes_and_pose_action_inverts_targets() -> None:
    """The fill the daemon and the env start from: K copies of the commanded pose as an action."""
    spec = ObservationSpec()
    cal = load_calibration()
    rng = np.random.default_rng(3)
    action = rng.uniform(-1.0, 1.0, spec.n_actions)
    np.testing.assert_allclose(spec.pose_action(spec.targets_rad(action, cal.nominal_rad), cal.nominal_rad), action,
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(spec.pose_action(cal.nominal_rad + 10.0, cal.nominal_rad), np.ones(spec.n_actions))
    stanced = ObservationSpec(action_scale_rad=0.12, stance_rad=tuple(rng.uniform(-0.3, 0.3, spec.n_actions)))
    np.testing.assert_allclose(stanced.targets_rad(np.zeros(spec.n_actions), cal.nominal_rad)[spec.joint_index],
                               cal.nominal_rad[spec.joint_index] + np.array(stanced.stance_rad), rtol=0, atol=1e-15)
    np.testing.assert_allclose(stanced.pose_action(stanced.targets_rad(action, cal.nominal_rad), cal.nominal_rad),
                               action, rtol=0, atol=1e-12)
    filled, pushed = ActionHistory(spec), ActionHistory(spec)
    for _ in range(3 * ActionHistory._SPARE):  # also across the window's moves back to the buffer's end
        filled.push(rng.uniform(-1, 1, spec.n_actions))
    filled.fill(action)
    for _ in range(spec.action_history):
        pushed.push(action)
    np.testing.assert_array_equal(filled.flat(), pushed.flat())
    for _ in range(2 * ActionHistory._SPARE):
        a = rng.uniform(-1, 1, spec.n_actions)
        filled.push(a)
        pushed.push(a)
        np.testing.assert_array_equal(filled.flat(), pushed.flat())


def test_contract_with_a_stance_round_trips_and_version_1_reads_as_no_stance() -> None:
    spec = ObservationSpec(action_scale_rad=0.12, stance_rad=(0.1,) * 10)
    assert ObservationSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in ObservationSpec().to_dict().items() if k != "stance_rad"} | {"version": 1}
    assert ObservationSpec.from_dict(old).stance_rad == ()
    with pytest.raises(ValueError, match="version 3 is not one this code reads"):
        ObservationSpec.from_dict(spec.to_dict() | {"version": 3})
    with pytest.raises(ValueError, match="2 offsets for 10 controlled joints"):
        ObservationSpec(stance_rad=(0.1, 0.2))


@pytest.mark.parametrize("output, problem", [
    (np.full(10, 1.5), "action 1.5 outside [-1, 1]"),
    (np.zeros(3), "action shape (3,), the contract has (10,)"),
    (np.full(10, np.nan), "action not finite"),
])
def test_a_policy_output_outside_its_contract_is_refused_as_a_nan_action(output: np.ndarray, problem: str) -> None:
    """Clipping 1.5 to 1 would follow a broken policy; the tick holds instead and says why."""
    from robotd.daemon.policy_tick import PolicyTick

    spec = ObservationSpec()

    class Fixed:
        name = identity = "fixed"

        def __init__(self) -> None:
            self.spec = spec

        def reset(self) -> None:
            pass

        def act(self, obs: np.ndarray) -> np.ndarray:
            return output

    refused: list[str] = []
    tick = PolicyTick(Fixed(), spec, on_refused=refused.append)
    step = tick.step(True, np.array(UPRIGHT), np.zeros(3), lambda: np.zeros(spec.n_actions))
    assert step.action is not None and step.action.shape == (spec.n_actions,) and np.all(np.isnan(step.action))
    assert refused == [problem]

"""The simulated robot for hardware-free runs: MuJoCo physics behind a real pty and real UDP.

A :class:`SimulatedRobotRunner` runs in its own process and looks, from the daemon's side,
exactly like the hardware: a servo board on a pseudo-terminal (``BoardEmulator``) whose
received pulses become actuator targets through the calibration, and a phone that streams
its readings over UDP to the daemon in a real app format, at the phone's rate and with
its network latency. The physics advances in real time on absolute deadlines.

The board's timed group moves (``T<ms>``) are played out as such a board can: every channel
of the move starts and finishes together, interpolating linearly from the pulse the board
last put out on that channel. The board has no position feedback (MG996Rs report none), so
it cannot start a ramp from where the servo really is. Before its first command a channel
puts out no pulse at all (the servo is limp: the robot hangs on its string), and the first
command on a channel has nothing to interpolate from: by default it is a jump, the servo
running to the target as fast as it can, whatever ``T`` says (what the Lynxmotion SSC-32, a
close cousin of the board, documents: it "does not know where the servos are on power up, so
the first command ignores T and S"). ``SimRobotConfig.first_move_from_us`` models a board
that ramps from a power-on default pulse instead (e.g. 1500 us). Which one the real board does
is unknown; ``docs/board.md`` says how to check it safely.

The ground truth (:class:`SimRobotReport`) also scores the run as the stay-up task does, with
the same :class:`sim.balance_task.StayUpScore` at 50 Hz (the daemon's default rate and the
env's), the fall rule judged on the true torso orientation; ``robotd run --port sim --sim-task
stay-up`` pushes with the stay-up task's :data:`sim.balance_task.STAY_UP_PUSHES` and prints
those figures.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from calibration import Calibration, load_calibration
from sim.balance_task import SIM_RUN_PUSHES, PushModel, StayUpScore, stay_up_line
from sim.board_emulator import BoardEmulator, ReceivedMove
from sim.model import SimRobot
from sim.observation import UPRIGHT_TILT_DEG
from sim.servo_command import FallRule, tilt_deg_of_up_z
from sim.rotations import rotvec_to_quat
from sim.phone_stream import ENCODERS, PhoneSample, PhoneStreamer


@dataclass(frozen=True)
class SimRobotConfig:
    """How the simulated robot behaves; defaults follow docs/sim.md's phone model."""

    udp_target: tuple[str, int] = ("127.0.0.1", 5555)
    phone_format: str = "sensagram"
    phone_rate_hz: float = 100.0
    phone_latency_ms: tuple[float, float] = (10.0, 60.0)  # per-packet latency range, uniform
    physics_chunk_s: float = 0.01
    calibration_path: str | None = None
    seed: int = 0
    string_length_m: float | None = None  # None: string_slack_m longer than "supported"
    # How much longer than taut-when-standing the string is: the robot stands on its own
    # feet with the string slack, and the string catches it when it leans too far.
    string_slack_m: float = 0.03
    # The servos are unpowered until the board's first move: the robot hangs on the string.
    # (False: the board starts as if it had already been told the nominal pose.)
    limp_until_first_move: bool = True
    # Where a channel's first timed move starts: None, nowhere (the board does not know the
    # servo's angle, so it jumps, ignoring T); a pulse (us), a board that ramps from that
    # power-on default. Never from the true joint angle, which no board without feedback knows.
    first_move_from_us: float | None = None
    # Random horizontal pushes on the torso, so a balance controller has something to do: the
    # balance task's push model (0.1 s, magnitude uniform in 0..8 N, random direction) at random
    # intervals instead of the task's fixed times; None disables them. for_task("stay-up") has
    # the stay-up task's instead.
    pushes: PushModel | None = SIM_RUN_PUSHES["balance"]
    # The task whose pushes these are: "stay-up" also prints the stay-up figures of the report.
    task: str = "balance"
    # Known phone imperfections instead of the seed's draw (e.g. to check `robotd calibrate imu`):
    # the mounting error as a rotation vector in the phone frame (rad), the gyro bias (rad/s).
    phone_mount_error_rad: tuple[float, float, float] | None = None
    phone_gyro_bias_rad_s: tuple[float, float, float] | None = None

    @classmethod
    def for_task(cls, task: str, **config: Any) -> "SimRobotConfig":
        """The simulated robot pushed as ``task`` (a key of :data:`sim.balance_task.SIM_RUN_PUSHES`)
        pushes, unless ``config`` names its own ``pushes`` (``robotd calibrate --port sim``: none)."""
        return cls(task=task, **{"pushes": SIM_RUN_PUSHES[task], **config})


#: The rate the ground truth's stay-up figures are scored at (Hz): the env's control rate.
SCORE_HZ = 50.0


def push_rng(seed: int) -> np.random.Generator:
    """The random pushes' own stream for a sim seed, apart from the phone's packet latencies.

    The runner draws the pushes in ``PushModel.schedule``'s order on a schedule fixed from its
    start, so ``pushes.schedule(push_rng(seed), horizon_s)`` is what a run with that seed meets,
    whatever the controller does or the timing draws.
    """
    return np.random.default_rng([seed, 1])


@dataclass
class SimRobotReport:
    """Ground truth of the run, from the physics (the daemon never sees this)."""

    sim_time_s: float = 0.0
    wall_time_s: float = 0.0
    real_time_factor: float = 0.0
    upright_s: float = 0.0  # torso within UPRIGHT_TILT_DEG of vertical
    mean_tilt_deg: float = 0.0
    falls: int = 0  # transitions from within 45 degrees of vertical to beyond
    pushes: int = 0
    min_up_z: float = 1.0
    mean_string_tension_n: float = 0.0
    moves_received: int = 0
    framing_errors: int = 0
    handshakes: int = 0
    datagrams_sent: int = 0
    late_chunks: int = 0  # physics chunks that started more than one chunk late
    task: str = "balance"  # whose pushes: "stay-up" prints the stay_up figures too
    # StayUpScore.summary() of the run: standing fraction, knock-downs, get-ups, falls (fall rule)
    stay_up: dict[str, float | int] = field(default_factory=dict)

    @property
    def worst_tilt_deg(self) -> float:
        """The torso's largest angle from vertical over the run."""
        return tilt_deg_of_up_z(self.min_up_z)

    def to_dict(self) -> dict[str, float | int]:
        """The report's fields and the worst tilt: what ``robotd run --port sim --sim-report`` writes."""
        return {**asdict(self), "worst_tilt_deg": self.worst_tilt_deg}

    def lines(self) -> list[str]:
        return [
            f"simulated robot: {self.sim_time_s:.1f} s simulated in {self.wall_time_s:.1f} s "
            f"(real-time factor {self.real_time_factor:.3f}, {self.late_chunks} late chunks)",
            f"ground truth: upright (< {UPRIGHT_TILT_DEG:g} deg) {self.upright_s:.1f} of {self.sim_time_s:.1f} s, "
            f"mean tilt "
            f"{self.mean_tilt_deg:.1f} deg, "
            f"{self.pushes} pushes, falls (> 45 deg) {self.falls}, worst tilt "
            f"{self.worst_tilt_deg:.0f} deg, "
            f"mean string tension {self.mean_string_tension_n:.1f} N",
            f"board: {self.handshakes} handshake(s), {self.moves_received} moves, "
            f"{self.framing_errors} framing errors; phone: {self.datagrams_sent} datagrams",
            *([self._stay_up_line()] if self.task == "stay-up" else []),
        ]

    def _stay_up_line(self) -> str:
        s = self.stay_up
        return (f"{stay_up_line(s['standing_fraction'], s['knock_downs'], s['get_ups'])}, "
                f"falls (fall rule) {s['falls']}")


@dataclass
class _Ramp:
    """A timed group move in progress: all channels interpolate together."""

    start_rad: np.ndarray
    end_rad: np.ndarray
    t0_s: float
    duration_s: float


class SimulatedRobotRunner:
    """Physics + board emulator + phone streamer, advancing in real time until stopped."""

    def __init__(self, cfg: SimRobotConfig):
        self.cfg = cfg
        self.cal: Calibration = load_calibration(cfg.calibration_path)
        self.robot = SimRobot(self.cal, seed=cfg.seed, string_length_m=cfg.string_length_m)
        if cfg.string_length_m is None:
            self.robot.biped.set_string_length(self.robot.biped.supported_string_length_m + cfg.string_slack_m)
        if cfg.phone_gyro_bias_rad_s is not None:
            self.robot.phone.bias_rad_s = np.array(cfg.phone_gyro_bias_rad_s, dtype=np.float64)
        if cfg.phone_mount_error_rad is not None:
            site = self.robot.biped.imu_site_id
            # The compiler marks the imu site "same frame as its body" (it starts at identity), and
            # kinematics then copies the body's frame and ignores site_quat: clear that first.
            self.robot.model.site_sameframe[site] = 0
            self.robot.model.site_quat[site] = rotvec_to_quat(np.array(cfg.phone_mount_error_rad, dtype=np.float64))
        self.rng = np.random.default_rng(cfg.seed)  # the phone's packet latencies
        self.push_rng = push_rng(cfg.seed)
        self._channel_index = {int(ch): i for i, ch in enumerate(self.cal.channels)}
        # The angle of the pulse the board last commanded per joint; NaN: none yet (limp servo).
        self._commanded_rad = self.cal.nominal_rad.copy() if not cfg.limp_until_first_move \
            else np.full(len(self.cal.channels), np.nan)
        self._ramp: _Ramp | None = None
        self._moves: queue.SimpleQueue[ReceivedMove] = queue.SimpleQueue()
        self.board = BoardEmulator(on_move=self._moves.put)
        self.phone = PhoneStreamer(cfg.udp_target, ENCODERS[cfg.phone_format], rate_hz=cfg.phone_rate_hz)
        self._in_flight: deque[tuple[float, PhoneSample]] = deque()
        self.report = SimRobotReport()
        self._stop = threading.Event()

    @property
    def board_path(self) -> str:
        return self.board.path

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ board -> actuators

    def _apply_moves(self, now_s: float) -> None:
        while True:
            try:
                move = self._moves.get_nowait()
            except queue.Empty:
                break
            # The board ramps from the pulse it is putting out now (mid-ramp, if a move is still
            # running), never from the servo's true angle, which it cannot know.
            start = self._current_target(now_s).copy()
            end = start.copy()
            for ch, pulse_us in move.pulses_us.items():
                i = self._channel_index.get(ch)
                if i is not None:
                    end[i] = self.cal.joints[i].pulse_to_angle(pulse_us)
                    if math.isnan(start[i]):  # the channel's first command: nothing to ramp from
                        from_us = self.cfg.first_move_from_us
                        start[i] = end[i] if from_us is None else self.cal.joints[i].pulse_to_angle(from_us)
            duration_s = (move.time_ms or 0) / 1000.0
            self._ramp = _Ramp(start, end, move.received_s, duration_s) if duration_s > 0 else None
            self._commanded_rad = end

    def _current_target(self, now_s: float) -> np.ndarray:
        """The angle the board is commanding per joint now; NaN where it has sent no pulse yet."""
        ramp = self._ramp
        if ramp is None:
            return self._commanded_rad
        f = min(1.0, (now_s - ramp.t0_s) / ramp.duration_s)
        if f >= 1.0:
            self._ramp = None
            return ramp.end_rad
        return ramp.start_rad + f * (ramp.end_rad - ramp.start_rad)

    def _servo_targets(self, now_s: float) -> np.ndarray:
        """Actuator targets: the board's pulse where it sends one; a limp servo follows its joint."""
        target = self._current_target(now_s)
        limp = np.isnan(target)
        if limp.any():  # unpowered servos: the target follows the joint, leaving only damping
            target = np.where(limp, self.robot.data.qpos[self.robot.biped.qpos_adr], target)
        return target

    # ------------------------------------------------------------------ phone -> UDP

    def _sample_phone(self, now_s: float) -> None:
        quat_wxyz, gyro, accel = self.robot.phone_reading()
        w, x, y, z = (float(v) for v in quat_wxyz)
        if w < 0:  # Android keeps the rotation vector's w >= 0
            w, x, y, z = -w, -x, -y, -z
        sample = PhoneSample(
            phone_time_s=self.robot.time_s,
            accel_m_s2=(float(accel[0]), float(accel[1]), float(accel[2])),
            gyro_rad_s=(float(gyro[0]), float(gyro[1]), float(gyro[2])),
            rotation_vector_xyzw=(x, y, z, w),
        )
        lo, hi = self.cfg.phone_latency_ms
        due = now_s + self.rng.uniform(lo, hi) / 1000.0
        self._in_flight.append((max(due, self._in_flight[-1][0]) if self._in_flight else due, sample))

    def _deliver_phone(self, now_s: float) -> None:
        while self._in_flight and self._in_flight[0][0] <= now_s:
            self.phone.send(self._in_flight.popleft()[1])

    # ------------------------------------------------------------------ the real-time loop

    def run(self, duration_s: float = math.inf) -> SimRobotReport:
        chunk_s = self.cfg.physics_chunk_s
        phone_period_s = 1.0 / self.cfg.phone_rate_hz
        self.board.start()
        start = time.monotonic()
        next_phone = start
        deadline = start
        report = self.report
        upright = True
        tension_sum, tilt_sum_deg, chunks = 0.0, 0.0, 0
        pushes = self.cfg.pushes
        next_push = start + pushes.first_start_s(self.push_rng) if pushes is not None else math.inf
        push_end = -math.inf
        torso_force = self.robot.data.xfrc_applied[self.robot.biped.torso_id, :3]
        # The stay-up figures, scored at SCORE_HZ on the physics' own time (every score_every chunks).
        score_every = max(1, round(1.0 / (chunk_s * SCORE_HZ)))
        stay_up = StayUpScore(1.0 / (chunk_s * score_every))
        fall_rule = FallRule(self.cal)
        weight_n = self.robot.biped.weight_n
        try:
            while not self._stop.is_set() and deadline - start < duration_s:
                now = time.monotonic()
                if now < deadline:
                    time.sleep(min(deadline - now, chunk_s))
                    continue
                if now - deadline > chunk_s:
                    report.late_chunks += 1
                self._apply_moves(now)
                self.robot.set_targets(self._servo_targets(now))
                if now >= next_push:
                    push = pushes.draw(self.push_rng, now)
                    torso_force[:] = (*push.force_xy_n, 0.0)
                    push_end = now + push.duration_s
                    next_push = pushes.next_start_s(self.push_rng, next_push)
                    report.pushes += 1
                elif now >= push_end:
                    torso_force[:] = 0.0
                self.robot.step(chunk_s)
                deadline += chunk_s
                if now >= next_phone:
                    self._sample_phone(now)
                    next_phone += phone_period_s * max(1, math.floor((now - next_phone) / phone_period_s) + 1)
                self._deliver_phone(now)
                up_z = self.robot.torso_up_z()
                report.min_up_z = min(report.min_up_z, up_z)
                report.upright_s += chunk_s if up_z > math.cos(math.radians(UPRIGHT_TILT_DEG)) else 0.0
                tilt_sum_deg += tilt_deg_of_up_z(up_z)
                is_up = up_z > math.cos(math.radians(45.0))
                report.falls += upright and not is_up
                upright = is_up
                tension = self.robot.string_tension()
                tension_sum += tension
                chunks += 1
                if chunks % score_every == 0:
                    stay_up.add(up_z, tension / weight_n, fall_rule.update(up_z))
        finally:
            self.board.stop()
            self.phone.close()
        report.sim_time_s = self.robot.time_s
        report.wall_time_s = time.monotonic() - start
        report.real_time_factor = report.sim_time_s / report.wall_time_s if report.wall_time_s > 0 else 0.0
        report.mean_string_tension_n = tension_sum / chunks if chunks else 0.0
        report.mean_tilt_deg = tilt_sum_deg / chunks if chunks else 0.0
        report.moves_received = self.board.moves_received
        report.framing_errors = self.board.framing_errors
        report.handshakes = self.board.handshakes
        report.datagrams_sent = self.phone.sent_datagrams
        report.task = self.cfg.task
        report.stay_up = stay_up.summary()
        return report


# ---------------------------------------------------------------------- as a separate process


def _process_main(cfg: SimRobotConfig, conn: "mp.connection.Connection") -> None:
    runner = SimulatedRobotRunner(cfg)
    conn.send(("ready", runner.board_path))
    waiter = threading.Thread(target=lambda: (conn.recv(), runner.stop()), daemon=True)
    waiter.start()
    report = runner.run()
    conn.send(("report", asdict(report)))


class SimulatedRobotProcess:
    """Starts the simulated robot in its own process (own GIL: the daemon's timing is its own)."""

    def __init__(self, cfg: SimRobotConfig, start_timeout_s: float = 60.0):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_process_main, args=(cfg, child), name="simulated-robot", daemon=True)
        self._proc.start()
        if not self._conn.poll(start_timeout_s):
            self._proc.kill()
            raise RuntimeError("the simulated robot did not start")
        kind, self.board_path = self._conn.recv()
        assert kind == "ready"

    def stop(self, timeout_s: float = 10.0) -> SimRobotReport:
        self._conn.send("stop")
        if not self._conn.poll(timeout_s):
            self._proc.kill()
            raise RuntimeError("the simulated robot did not stop")
        _, report = self._conn.recv()
        self._proc.join(timeout_s)
        return SimRobotReport(**report)

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.kill()

"""The balance task, defined once: how the robot is lowered, how it is pushed, what success is.

The robot is used as its builder planned: hung loosely on a string, the string let out until
the robot stands on its own feet, and then pushed. The policy must keep it upright, carrying
its own weight. Concretely (:func:`balance_task_config`):

* the episode starts hanging on a taut string (``supported_string_length_m``) in the env's
  random crouch; the string is let out by 5 cm between t = 1 s and 3 s;
* pushes on the torso at t = 4, 6 and 8 s: 0.1 s each, a random horizontal direction, a
  magnitude uniform in 0..8 N (:class:`PushModel`), drawn from the env's own generator;
* the episode **succeeds** when over its last 5 s the robot carries itself (string tension
  below 10 % of its weight) and stands upright (tilt below 10 degrees) on at least 90 % of
  ticks, and the daemon's fall rule never fired (:class:`BalanceScore`).

The same :class:`PushModel` (with random intervals instead of fixed times) pushes the
simulated robot behind ``robotd run --port sim``. Training, ``robotd eval``, the benchmarks
and tuning all use :data:`BALANCE_TASK_ENV_ID` / :func:`balance_task_config`.

**The stay-up task** (:data:`STAY_UP_TASK_ENV_ID`, :func:`sim.env.stay_up_task_config`) asks
for more than standing through three pushes: getting back up after a push that knocks the
robot down. It is lowered as above, then pushed for 26 s by :data:`STAY_UP_PUSHES` (the first
push at t = 4 s, then one every U(2, 4) s; 0.1 s, a random horizontal direction, U(0, 12) N) in
a 30 s episode. :class:`StayUpScore` counts, from t = 4 s on (:class:`StayUpRule`):

* **standing**: upright (tilt below 10 degrees) and carrying itself (string tension below
  10 % of its weight), on one tick; ``standing_fraction`` is the share of the judged ticks;
* a **knock-down**: a run of 0.5 s or more of consecutive ticks not standing; it starts on the
  run's first tick (a run already under way at t = 4 s starts there);
* a **get-up**: a knock-down after which a run of at least 1 s of consecutive standing ticks
  begins no later than 3 s after the knock-down started (so the robot is back up within 3 s and
  stays up for a second; a dip shorter than 0.5 s is no new knock-down, but it does break the
  1 s run). A standing run cut short by the episode's end does not count;
* a **fall**: the daemon's fall rule firing (a run of firing ticks counts once).

An episode that ends early (a fall ends it in the env) is scored as if the robot lay for the
rest of it: the judged ticks never run count as not standing, so a fall is also a knock-down
without a get-up. The simulated robot behind ``robotd run --port sim --sim-task stay-up`` is
pushed by the same :data:`STAY_UP_PUSHES` and scored by the same :class:`StayUpScore`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.observation import UPRIGHT_TILT_DEG
from sim.servo_command import tilt_deg_of_up_z

#: gymnasium ids of the balance task (registered by :mod:`sim.envs`).
BALANCE_TASK_ENV_ID = "robotd/BalanceTask-v0"
BALANCE_TASK_DISCRETE_ENV_ID = "robotd/BalanceTaskDiscrete-v0"
#: gymnasium ids of the stay-up task.
STAY_UP_TASK_ENV_ID = "robotd/StayUpTask-v0"
STAY_UP_TASK_DISCRETE_ENV_ID = "robotd/StayUpTaskDiscrete-v0"
#: Task name -> (Box id, discrete id); each name's EnvConfig is sim.env.TASK_CONFIGS[name].
TASK_ENV_IDS = {"balance": (BALANCE_TASK_ENV_ID, BALANCE_TASK_DISCRETE_ENV_ID),
                "undelayed-push": ("robotd/UndelayedPush-v0", "robotd/UndelayedPushDiscrete-v0"),
                "stay-up": (STAY_UP_TASK_ENV_ID, STAY_UP_TASK_DISCRETE_ENV_ID)}
#: String tension, as a fraction of the robot's weight, below which the robot carries itself.
SELF_SUPPORTED_LOAD = 0.10


@dataclass(frozen=True)
class Push:
    """One push on the torso: from ``start_s`` for ``duration_s``, a horizontal force (N)."""

    start_s: float
    duration_s: float
    force_xy_n: tuple[float, float]

    @property
    def magnitude_n(self) -> float:
        return math.hypot(*self.force_xy_n)


@dataclass(frozen=True)
class PushModel:
    """Pushes on the torso: fixed start times, or random intervals between pushes.

    Each push lasts ``duration_s`` in a uniformly random horizontal direction, its magnitude
    uniform in ``force_n``. With ``interval_s`` set, pushes start every ``interval_s`` (uniform)
    and ``times_s`` is ignored; the first at ``first_push_s``, or (None) after one
    ``interval_s`` draw from the start.
    """

    force_n: tuple[float, float] = (0.0, 8.0)
    duration_s: float = 0.1
    times_s: tuple[float, ...] = (4.0, 6.0, 8.0)
    interval_s: tuple[float, float] | None = None
    first_push_s: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.force_n
        if not 0.0 <= lo <= hi:
            raise ValueError(f"push force range must be 0 <= low <= high, got {self.force_n}")
        if not self.duration_s > 0:
            raise ValueError(f"push duration must be > 0 s, got {self.duration_s}")
        if self.interval_s is not None and not 0 < self.interval_s[0] <= self.interval_s[1]:
            raise ValueError(f"push interval must be 0 < low <= high, got {self.interval_s}")

    def draw(self, rng: np.random.Generator, start_s: float) -> Push:
        """One push starting at ``start_s``."""
        angle = rng.uniform(0.0, 2.0 * math.pi)
        magnitude = rng.uniform(*self.force_n)
        return Push(start_s, self.duration_s, (magnitude * math.cos(angle), magnitude * math.sin(angle)))

    def next_start_s(self, rng: np.random.Generator, after_s: float) -> float:
        """With ``interval_s``: when the push after one at ``after_s`` starts."""
        assert self.interval_s is not None
        return after_s + rng.uniform(*self.interval_s)

    def first_start_s(self, rng: np.random.Generator) -> float:
        """With ``interval_s``: when the first push starts (draws only without ``first_push_s``)."""
        return self.first_push_s if self.first_push_s is not None else self.next_start_s(rng, 0.0)

    def schedule(self, rng: np.random.Generator, horizon_s: float) -> list[Push]:
        """Every push that starts before ``horizon_s``, in time order."""
        if self.interval_s is None:
            return [self.draw(rng, t) for t in self.times_s if t < horizon_s]
        pushes, t = [], self.first_start_s(rng)
        while t < horizon_s:
            pushes.append(self.draw(rng, t))
            t = self.next_start_s(rng, t)
        return pushes


#: The stay-up task's pushes, and ``robotd run --port sim --sim-task stay-up``'s: from t = 4 s,
#: when the string has been let out, one every U(2, 4) s of U(0, 12) N for 0.1 s.
STAY_UP_PUSHES = PushModel(force_n=(0.0, 12.0), interval_s=(2.0, 4.0), first_push_s=4.0)
#: What pushes the simulated robot behind ``robotd run --port sim --sim-task NAME``: by default
#: the balance task's pushes at random 2.5-3.5 s intervals instead of its fixed times (a run has
#: no episode end), or the stay-up task's own.
SIM_RUN_PUSHES = {"balance": PushModel(interval_s=(2.5, 3.5)), "stay-up": STAY_UP_PUSHES}


@dataclass(frozen=True)
class StringLetOut:
    """The string is lengthened by ``length_m`` linearly between ``start_s`` and ``end_s``."""

    length_m: float = 0.05
    start_s: float = 1.0
    end_s: float = 3.0

    def extra_length_m(self, t_s: float) -> float:
        if t_s <= self.start_s:
            return 0.0
        if t_s >= self.end_s:
            return self.length_m
        return self.length_m * (t_s - self.start_s) / (self.end_s - self.start_s)


@dataclass(frozen=True)
class SuccessRule:
    """What a successful episode is (see the module docstring)."""

    window_s: float = 5.0  # judged over the episode's last window_s
    max_tilt_deg: float = UPRIGHT_TILT_DEG  # "upright" as the daemon's summary and replay mean it
    max_string_load: float = SELF_SUPPORTED_LOAD  # string tension as a fraction of the robot's weight
    min_fraction: float = 0.90


@dataclass
class BalanceScore:
    """Per-episode figures of the balance task, accumulated one control tick at a time.

    ``tilt`` is the true torso tilt and ``load`` the string tension over the robot's weight
    (the simulator's ground truth); ``fell`` is the daemon's fall rule on what the controller
    sees. Only ticks in the last ``rule.window_s`` of an episode of ``episode_ticks`` count
    towards success; the means cover the whole episode.
    """

    episode_ticks: int
    control_hz: float
    rule: SuccessRule = field(default_factory=SuccessRule)
    ticks: int = 0
    window_ticks: int = 0
    window_good: int = 0
    upright_ticks: int = 0
    self_supported_ticks: int = 0
    tilt_sum_deg: float = 0.0
    worst_tilt_deg: float = 0.0
    load_sum: float = 0.0
    fell: bool = False

    def __post_init__(self) -> None:
        self._window_start = self.episode_ticks - round(self.rule.window_s * self.control_hz)
        self._cos_tilt = math.cos(math.radians(self.rule.max_tilt_deg))

    def add(self, up_z: float, load: float, fell: bool) -> None:
        self.ticks += 1
        upright = up_z > self._cos_tilt
        supported = load < self.rule.max_string_load
        tilt_deg = tilt_deg_of_up_z(up_z)
        self.upright_ticks += upright
        self.self_supported_ticks += supported
        self.tilt_sum_deg += tilt_deg
        self.worst_tilt_deg = max(self.worst_tilt_deg, tilt_deg)
        self.load_sum += load
        self.fell = self.fell or fell
        if self.ticks > self._window_start:
            self.window_ticks += 1
            self.window_good += upright and supported

    @property
    def success(self) -> bool:
        """Ran to the end of the episode, never fell, and stood by itself on 90 % of the window."""
        full_window = self.episode_ticks - self._window_start
        return (not self.fell and self.window_ticks == full_window
                and self.window_good >= self.rule.min_fraction * full_window)

    def summary(self) -> dict[str, float | bool]:
        n = max(self.ticks, 1)
        dt = 1.0 / self.control_hz
        return {
            "success": self.success,
            "fell": self.fell,
            "duration_s": self.ticks * dt,
            "upright_s": self.upright_ticks * dt,
            "self_supported_s": self.self_supported_ticks * dt,
            "window_good_fraction": self.window_good / max(self.window_ticks, 1),
            "mean_tilt_deg": self.tilt_sum_deg / n,
            "worst_tilt_deg": self.worst_tilt_deg,
            "mean_string_load": self.load_sum / n,
        }


@dataclass(frozen=True)
class StayUpRule:
    """What the stay-up task counts (see the module docstring); times in seconds."""

    judged_from_s: float = 4.0  # the string has been let out (t = 3 s) and the robot has landed
    max_tilt_deg: float = UPRIGHT_TILT_DEG
    max_string_load: float = SELF_SUPPORTED_LOAD
    knock_down_s: float = 0.5  # a run not standing this long is a knock-down
    get_up_within_s: float = 3.0  # ... got up from if a standing run begins this soon after its start
    stand_again_s: float = 1.0  # ... and lasts this long


@dataclass
class StayUpScore:
    """The stay-up task's figures, accumulated one tick at a time (one scorer for the env and
    the simulated robot behind the daemon, so both report the same figures the same way).

    Feed :meth:`add` every tick from the episode's start at ``control_hz``: the true torso
    up-z, the string tension over the weight and whether the fall rule fires. With
    ``episode_ticks`` (the env's episode length), an early end is scored as lying for the
    rest of the episode; without it (an open-ended run), over the ticks fed.
    """

    control_hz: float
    episode_ticks: int | None = None
    rule: StayUpRule = field(default_factory=StayUpRule)
    ticks: int = 0
    judged_ticks: int = 0
    standing_ticks: int = 0
    knock_downs: int = 0
    get_ups: int = 0
    falls: int = 0
    _down_run: int = field(default=0, init=False, repr=False)  # consecutive judged ticks not standing
    _stand_run: int = field(default=0, init=False, repr=False)  # consecutive standing ticks
    _pending: int | None = field(default=None, init=False, repr=False)  # judged tick a knock-down began
    _firing: bool = field(default=False, init=False, repr=False)  # the fall rule fired on the last tick

    def __post_init__(self) -> None:
        rule, hz = self.rule, self.control_hz
        self._start_tick = round(rule.judged_from_s * hz)
        self._knock_ticks = max(1, round(rule.knock_down_s * hz))
        self._within_ticks = round(rule.get_up_within_s * hz)
        self._stand_ticks = max(1, round(rule.stand_again_s * hz))
        self._cos_tilt = math.cos(math.radians(rule.max_tilt_deg))

    def add(self, up_z: float, load: float, fell: bool) -> None:
        self.ticks += 1
        self.falls += fell and not self._firing
        self._firing = fell
        if self.ticks <= self._start_tick:
            return
        tick = self.judged_ticks
        self.judged_ticks += 1
        if not (up_z > self._cos_tilt and load < self.rule.max_string_load):
            self._stand_run = 0
            self._down_run += 1
            if self._down_run == self._knock_ticks:
                self.knock_downs += 1
                self._pending = tick - self._knock_ticks + 1
            return
        self.standing_ticks += 1
        self._down_run = 0
        if self._stand_run == 0 and self._pending is not None and tick - self._pending > self._within_ticks:
            self._pending = None  # back up, but too late to count
        self._stand_run += 1
        if self._pending is not None and self._stand_run == self._stand_ticks:
            self.get_ups += 1
            self._pending = None

    def summary(self) -> dict[str, float | int]:
        """The figures so far; an early end of an env episode counts as lying to its end."""
        unplayed = 0 if self.episode_ticks is None else max(0, self.episode_ticks - max(self.ticks, self._start_tick))
        judged = self.judged_ticks + unplayed
        knocked_at_end = self._down_run < self._knock_ticks <= self._down_run + unplayed
        return {
            "standing_fraction": self.standing_ticks / judged if judged else 0.0,
            "judged_s": judged / self.control_hz,
            "knock_downs": self.knock_downs + knocked_at_end,
            "get_ups": self.get_ups,
            "falls": self.falls,
        }


def stay_up_line(standing_fraction: float, knock_downs: int, get_ups: int) -> str:
    """The stay-up figures as ``robotd eval`` and the simulated robot's ground truth print them."""
    recovered = f" ({get_ups / knock_downs:.2f})" if knock_downs else ""
    return (f"stay-up: standing (upright, self-supported) {standing_fraction:.3f} of the time after "
            f"{StayUpRule.judged_from_s:g} s, knock-downs {knock_downs}, got up from {get_ups}{recovered}")

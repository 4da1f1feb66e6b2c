"""Actors: environments stepped with the torch-free runtime, exploring, cutting sequences.

Acting must not be the learner's bottleneck, and the two cores should both work. So each
actor runs in its own process (:class:`ActorPool`), steps its environment with the same
numba/numpy step runtime the daemon uses (:mod:`policies.runtime`, weights refreshed from
the learner every round) and sends whole sequences back (:mod:`policies.sequence_replay`),
never single steps. The learner drives them in lock-step rounds: it hands every actor the
current weights and a step budget, learns while they act, then collects. Given the seeds, a
run is therefore the same run however the processes are scheduled.

Exploration is per joint (Ape-X style per-actor epsilons, :func:`actor_epsilon`) and
temporally extended (epsilon-z-greedy, Dabney et al. 2021): on each tick a joint that is not
exploring starts to with probability epsilon, and then holds one uniformly random bin for a
uniformly random 1..``explore_max_ticks`` ticks. Through a slew-limited, delayed servo a
one-tick deviation is reverted before it shows; a held one is a real perturbation whose
effect the learner can see.

Any gymnasium env with a Box observation and a Discrete, MultiDiscrete (equal sizes) or Box
action space can be acted in (:class:`ActionCoding`; a Box action is discretised per
dimension into evenly spaced levels).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from policies.checkpoint import ArchConfig, CheckpointMeta
from policies.sequence_replay import Sequence, SequenceBuilder, SequenceLayout
from sim.observation import DecisionHold


class UnsupportedEnvError(ValueError):
    """The env's spaces are not ones the learner can handle (the message says which and why)."""


@dataclass(frozen=True)
class ActionCoding:
    """How a per-joint bin choice ``[n_actions]`` becomes the env's action."""

    kind: str  # "multidiscrete" | "discrete" | "box"
    n_actions: int
    n_bins: int
    low: np.ndarray | None = None  # box only
    high: np.ndarray | None = None

    @property
    def levels(self) -> list[float]:
        """Action level of each bin as the checkpoint records it (box: in [-1, 1] of each range)."""
        if self.kind == "discrete":
            return [float(i) for i in range(self.n_bins)]
        return np.linspace(-1.0, 1.0, self.n_bins).tolist()

    def to_env(self, bins: np.ndarray) -> Any:
        if self.kind == "discrete":
            return int(bins[0])
        if self.kind == "multidiscrete":
            return np.asarray(bins, dtype=np.int64)
        fraction = np.asarray(bins, dtype=np.float64) / (self.n_bins - 1)
        return (self.low + fraction * (self.high - self.low)).astype(np.float32)


def action_coding(env_id: str, observation_space: gym.Space, action_space: gym.Space, box_bins: int) -> ActionCoding:
    """The coding for an env's spaces, or UnsupportedEnvError naming what does not fit."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise UnsupportedEnvError(f"--env {env_id}: observation space {observation_space} is not a flat Box")
    if isinstance(action_space, gym.spaces.Discrete):
        if action_space.start != 0:
            raise UnsupportedEnvError(f"--env {env_id}: Discrete action space must start at 0, got {action_space}")
        return ActionCoding("discrete", 1, int(action_space.n))
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        nvec = np.asarray(action_space.nvec).reshape(-1)
        if len(set(nvec.tolist())) != 1 or np.any(np.asarray(action_space.start) != 0):
            raise UnsupportedEnvError(f"--env {env_id}: MultiDiscrete action space needs equal sizes starting at 0, "
                                      f"got {action_space}")
        return ActionCoding("multidiscrete", len(nvec), int(nvec[0]))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise UnsupportedEnvError(f"--env {env_id}: Box action space must be bounded to be discretised")
        return ActionCoding("box", action_space.shape[0], box_bins, action_space.low.astype(np.float64),
                            action_space.high.astype(np.float64))
    raise UnsupportedEnvError(f"--env {env_id}: action space {action_space} is not Discrete, MultiDiscrete or a "
                              f"flat Box")


def actor_epsilon(index: int, n_actors: int, base: float, alpha: float) -> float:
    """Ape-X's per-actor exploration: ``base ** (1 + alpha * i / (N - 1))``; a lone actor gets ``base``."""
    return base ** (1.0 + alpha * index / max(n_actors - 1, 1))


@dataclass(frozen=True)
class ActorSpec:
    """Everything an actor process needs to build its env and policy (picklable)."""

    env_id: str
    arch: ArchConfig
    meta_observation: dict[str, Any]  # checkpoint observation record (robot contract or env id)
    action_bins: tuple[float, ...]
    box_bins: int
    layout: SequenceLayout
    seed: int
    explore_max_ticks: int = 1  # 1: plain per-decision epsilon-greedy
    decision_ticks: int = 1  # env ticks per decision, the bins held in between (sim.observation.DecisionHold)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # gymnasium.make keyword arguments

    def checkpoint_meta(self) -> CheckpointMeta:
        """The metadata a step runtime of the learner's current weights needs (no git, no metrics)."""
        return CheckpointMeta(architecture=self.arch, observation=self.meta_observation,
                              action_bins=list(self.action_bins), calibration_identity=None, git_revision="")


@dataclass
class EpisodeStats:
    """One finished training episode, as the learner logs it."""

    actor: int
    steps: int
    episode_return: float
    task: dict[str, Any] = field(default_factory=dict)  # the balance task's score, if the env has one


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """A gymnasium env by id; the robot's ids are registered first. Raises UnsupportedEnvError."""
    import sim.envs  # noqa: F401  (registers the robot's env ids)

    try:
        return gym.make(env_id, **(env_kwargs or {}))
    except gym.error.Error as exc:  # unknown id, namespace or version
        raise UnsupportedEnvError(f"--env {env_id}: {exc}") from None


class Actor:
    """One env, the step runtime and a sequence builder; :meth:`run` acts for a step budget."""

    def __init__(self, spec: ActorSpec, index: int):
        from policies.runtime import RUNTIMES

        self.spec, self.index = spec, index
        self.env = make_env(spec.env_id, spec.env_kwargs)
        self.coding = action_coding(spec.env_id, self.env.observation_space, self.env.action_space, spec.box_bins)
        self._meta = spec.checkpoint_meta()
        self._runtime_cls = RUNTIMES[spec.arch.kind]
        self.runtime = None
        self.rng = np.random.default_rng([spec.seed, index, 1])
        self.builder = SequenceBuilder(spec.layout)
        self._obs, _ = self.env.reset(seed=spec.seed * 1000 + index)
        self._state: np.ndarray | None = None
        self._return, self._steps = 0.0, 0
        self._explore_bin = np.zeros(self.coding.n_actions, dtype=np.int64)
        self._explore_left = np.zeros(self.coding.n_actions, dtype=np.int64)  # ticks left per joint
        self._hold = DecisionHold(spec.decision_ticks)

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.runtime = self._runtime_cls(weights, self._meta)
        if self._state is None:
            self._state = self.runtime.initial_state()
            self.builder.start_episode(self._obs, self._state)

    def run(self, n_steps: int, epsilon: float) -> tuple[list[Sequence], list[EpisodeStats]]:
        """Act for at least ``n_steps`` env ticks (whole decisions); the sequences and episodes completed."""
        assert self.runtime is not None and self._state is not None, "set_weights first"
        sequences: list[Sequence] = []
        episodes: list[EpisodeStats] = []
        n_bins, ticks, hold = self.coding.n_bins, 0, self._hold
        # One env tick per pass: a decision when the hold says so, else its bins repeated; a
        # decision's sequence step is taken when it ends (the next is due, or the episode ended).
        # A run stops between decisions only, so its first pass decides.
        while ticks < n_steps or not hold.due:
            if hold.due:
                q, self._state = self.runtime.step(self._obs, self._state)
                bins = self._explore(np.argmax(q, axis=-1), epsilon, n_bins)
                action, reward = self.coding.to_env(bins), 0.0
            obs, r, terminated, truncated, info = self.env.step(action)
            hold.advance()
            reward += float(r)
            ticks += 1
            self._steps += 1
            done = terminated or truncated
            if done or hold.due:
                self._return += reward
                sequences += self.builder.add(bins, reward, obs, self._state, terminated, truncated)
            if done:
                episodes.append(EpisodeStats(self.index, self._steps, self._return, dict(info.get("task", {}))))
                obs, _ = self.env.reset()
                self._state = self.runtime.initial_state()
                self.builder.start_episode(obs, self._state)
                self._return, self._steps = 0.0, 0
                self._explore_left[:] = 0
                hold.reset()
            self._obs = obs
        return sequences, episodes

    def _explore(self, bins: np.ndarray, epsilon: float, n_bins: int) -> np.ndarray:
        """epsilon-z-greedy per joint: start a random bin with probability epsilon, hold it a while."""
        left = self._explore_left
        start = (left == 0) & (self.rng.random(len(bins)) < epsilon)
        if start.any():
            n = int(start.sum())
            self._explore_bin[start] = self.rng.integers(0, n_bins, n)
            left[start] = self.rng.integers(1, self.spec.explore_max_ticks + 1, n)
        exploring = left > 0
        bins[exploring] = self._explore_bin[exploring]
        left[exploring] -= 1
        return bins

    def close(self) -> None:
        self.env.close()


def _actor_main(conn: Any, spec: ActorSpec, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the learner's to handle: it saves, then stops us
    actor = Actor(spec, index)
    conn.send(("ready", None))
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            actor.close()
            return
        _, weights, n_steps, epsilon = msg
        if weights is not None:
            actor.set_weights(weights)
        conn.send(("data", actor.run(n_steps, epsilon)))


class ActorPool:
    """``n`` actor processes driven in lock-step rounds (:meth:`start_round`, then :meth:`finish_round`)."""

    def __init__(self, spec: ActorSpec, n: int, start_timeout_s: float = 120.0):
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_actor_main, args=(child, spec, i), name=f"actor-{i}", daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for i, conn in enumerate(self._conns):
            if not conn.poll(start_timeout_s):
                self.close()
                raise RuntimeError(f"actor {i} did not start within {start_timeout_s:.0f} s")
            kind, _ = conn.recv()
            assert kind == "ready"

    def __len__(self) -> int:
        return len(self._conns)

    def start_round(self, weights: dict[str, np.ndarray] | None, n_steps: int, epsilons: list[float]) -> None:
        for conn, eps in zip(self._conns, epsilons):
            conn.send(("run", weights, n_steps, eps))

    def finish_round(self) -> tuple[list[Sequence], list[EpisodeStats]]:
        sequences, episodes = [], []
        for i, conn in enumerate(self._conns):  # actor order: the same run whatever finishes first
            try:
                kind, (seqs, eps) = conn.recv()
            except EOFError:
                raise RuntimeError(f"actor {i} died (exit code {self._procs[i].exitcode})") from None
            sequences += seqs
            episodes += eps
        return sequences, episodes

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()

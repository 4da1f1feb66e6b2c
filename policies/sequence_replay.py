"""Sequence replay for recurrent Q-learning (R2D2): fixed-length sequences with their start state.

An actor's steps are cut into sequences per episode (:class:`SequenceBuilder`); the learner
samples them in batches (:class:`SequenceReplay`). numpy only: nothing here needs torch.

Layout of one sequence (:class:`SequenceLayout`, ``B = burn_in``, ``T = train_len``):

* ``obs``: ``B + T + 1`` observation slots. Slots ``0 .. B-1`` are the burn-in, slots
  ``B .. B+T-1`` the steps trained on, slot ``B + length`` the observation after the last
  valid step (what the n-step target bootstraps from).
* ``actions``, ``rewards``: ``T`` entries for the trained steps; only the first ``length`` are
  valid (a sequence at an episode's end may be shorter; the rest is zero padding).
* ``terminal``: the observation in slot ``B + length`` ends the episode (no bootstrap).
* ``start_state``: the actor's recurrent state before slot 0 (``has_burn_in``) or, for an
  episode's first sequence, before slot ``B`` (the episode's own initial state: nothing to
  burn in, and slots ``0 .. B-1`` are padding).

Sequence ``k`` of an episode trains on its steps ``k*T .. k*T + T - 1`` and burns in on the
``B`` steps before (``B <= T``), so consecutive sequences overlap by ``B`` steps, every step is
trained on in exactly one sequence, and no sequence ever holds steps of two episodes.

Priorities follow R2D2: ``eta * max|td| + (1 - eta) * mean|td|`` over a sequence's valid
steps; sampling is proportional to ``priority ** alpha`` with importance weights
``(N * P(i)) ** -beta`` normalised by their maximum; new sequences get the largest priority
the replay holds now (not the largest ever seen: the early TD errors of values still climbing
to their level would otherwise set every later sequence's priority for good).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.durable import replace_synced, write_synced


@dataclass(frozen=True)
class SequenceLayout:
    burn_in: int
    train_len: int

    def __post_init__(self) -> None:
        if self.train_len < 1 or not 0 <= self.burn_in <= self.train_len:
            raise ValueError(f"need train_len >= 1 and 0 <= burn_in <= train_len, got {self}")

    @property
    def obs_slots(self) -> int:
        return self.burn_in + self.train_len + 1


@dataclass
class Sequence:
    """One sequence as the actor emits it (see the module docstring)."""

    obs: np.ndarray  # [B + T + 1, obs_dim] float32
    actions: np.ndarray  # [T, n_actions] int16
    rewards: np.ndarray  # [T] float32
    length: int
    terminal: bool
    has_burn_in: bool
    start_state: np.ndarray  # [*state_shape] float32
    episode_step: int  # the episode step of the first trained slot (k * T)


class SequenceBuilder:
    """Cuts one environment's stream of steps into sequences, episode by episode.

    Call :meth:`start_episode` with the first observation and the recurrent state the policy
    consumes it with, then :meth:`add` after every step with the step's outcome and the state
    the policy consumes the next observation with (its state after the step).
    """

    def __init__(self, layout: SequenceLayout):
        self.layout = layout
        self._obs: list[np.ndarray] = []
        self._states: list[np.ndarray] = []  # states[t]: the state the policy consumed obs[t] with
        self._actions: list[np.ndarray] = []
        self._rewards: list[float] = []
        self._emitted = 0  # steps of this episode already in an emitted sequence

    def start_episode(self, obs: np.ndarray, state: np.ndarray) -> None:
        self._obs = [np.asarray(obs, dtype=np.float32).copy()]
        self._states = [np.asarray(state, dtype=np.float32).copy()]
        self._actions, self._rewards = [], []
        self._emitted = 0

    def add(self, action: np.ndarray, reward: float, next_obs: np.ndarray, next_state: np.ndarray,
            terminated: bool, truncated: bool) -> list[Sequence]:
        """Record one step; returns the sequences it completed (none, or one)."""
        self._actions.append(np.asarray(action, dtype=np.int16).reshape(-1).copy())
        self._rewards.append(float(reward))
        self._obs.append(np.asarray(next_obs, dtype=np.float32).copy())
        self._states.append(np.asarray(next_state, dtype=np.float32).copy())
        steps = len(self._actions)
        if steps - self._emitted == self.layout.train_len or ((terminated or truncated) and steps > self._emitted):
            seq = self._cut(self._emitted, steps - self._emitted, terminated)
            self._emitted = steps
            return [seq]
        return []

    def _cut(self, start: int, length: int, terminal: bool) -> Sequence:
        b, t = self.layout.burn_in, self.layout.train_len
        obs_dim = self._obs[0].shape[0]
        obs = np.zeros((b + t + 1, obs_dim), dtype=np.float32)
        has_burn_in = start > 0 and b > 0
        if has_burn_in:
            obs[:b] = self._obs[start - b:start]
            start_state = self._states[start - b]
        else:
            start_state = self._states[start]
        obs[b:b + length + 1] = self._obs[start:start + length + 1]
        actions = np.zeros((t, self._actions[0].shape[0]), dtype=np.int16)
        actions[:length] = self._actions[start:start + length]
        rewards = np.zeros(t, dtype=np.float32)
        rewards[:length] = self._rewards[start:start + length]
        return Sequence(obs, actions, rewards, length, bool(terminal), has_burn_in, start_state.copy(), start)


class SequenceReplay:
    """A ring buffer of sequences with proportional priorities (numpy arrays, one row a sequence)."""

    def __init__(self, capacity: int, layout: SequenceLayout, obs_dim: int, n_actions: int,
                 state_shape: tuple[int, ...], alpha: float = 0.9, eta: float = 0.9, seed: int = 0):
        if capacity < 1:
            raise ValueError("replay capacity must be >= 1 sequence")
        self.capacity, self.layout, self.alpha, self.eta = capacity, layout, alpha, eta
        t = layout.train_len
        self.obs = np.zeros((capacity, layout.obs_slots, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, t, n_actions), dtype=np.int16)
        self.rewards = np.zeros((capacity, t), dtype=np.float32)
        self.length = np.zeros(capacity, dtype=np.int32)
        self.terminal = np.zeros(capacity, dtype=bool)
        self.has_burn_in = np.zeros(capacity, dtype=bool)
        self.start_state = np.zeros((capacity, *state_shape), dtype=np.float32)
        self.priority = np.zeros(capacity, dtype=np.float64)
        self.size = 0
        self.next = 0
        self.added = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def steps(self) -> int:
        """Valid (trainable) steps held."""
        return int(self.length[:self.size].sum())

    def add(self, seq: Sequence) -> int:
        i = self.next
        self.obs[i], self.actions[i], self.rewards[i] = seq.obs, seq.actions, seq.rewards
        self.length[i], self.terminal[i], self.has_burn_in[i] = seq.length, seq.terminal, seq.has_burn_in
        self.start_state[i] = seq.start_state
        self.priority[i] = self.priority[:self.size].max() if self.size else 1.0
        self.next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1
        return i

    def sample(self, batch_size: int, beta: float, prioritized: bool = True
               ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """(indices, batch arrays by name, importance weights normalised to max 1; all 1 if uniform)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay")
        if prioritized:
            p = self.priority[:self.size] ** self.alpha
            p /= p.sum()
            idx = self.rng.choice(self.size, size=batch_size, p=p)
            weights = (self.size * p[idx]) ** -beta
            weights /= weights.max()
        else:
            idx = self.rng.integers(0, self.size, batch_size)
            weights = np.ones(batch_size)
        batch = {name: getattr(self, name)[idx] for name in
                 ("obs", "actions", "rewards", "length", "terminal", "has_burn_in", "start_state")}
        return idx, batch, weights.astype(np.float32)

    def update_priorities(self, idx: np.ndarray, td_abs: np.ndarray, valid: np.ndarray) -> None:
        """R2D2's mixture of max and mean |td| over each sampled sequence's valid steps."""
        td = np.where(valid, td_abs, 0.0)
        n = np.maximum(valid.sum(1), 1)
        priority = self.eta * td.max(1) + (1.0 - self.eta) * td.sum(1) / n + 1e-6
        self.priority[idx] = priority

    # ------------------------------------------------------------------ resume

    _ARRAYS = ("obs", "actions", "rewards", "length", "terminal", "has_burn_in", "start_state", "priority")

    def save(self, path: Path, env_steps: int) -> None:
        """Everything needed to continue, written atomically (``--resume``).

        Stamped with the learner's ``env_steps``: the learner state saved beside it carries the
        same count, so a replay and a learner from two different checkpoints are told apart.
        """
        tmp = path.with_name(path.name + ".tmp")
        write_synced(tmp, lambda f: np.savez(
            f, **{name: getattr(self, name)[:self.size] for name in self._ARRAYS},
            counters=np.array([self.size, self.next, self.added]), env_steps=np.array(env_steps),
            rng=np.frombuffer(repr(self.rng.bit_generator.state).encode(), dtype=np.uint8)))
        replace_synced(tmp, path)

    @staticmethod
    def stamp(path: Path) -> int | None:
        """The ``env_steps`` a saved replay belongs with; None for one saved before replays were stamped."""
        with np.load(path) as f:
            return int(f["env_steps"]) if "env_steps" in f.files else None

    def load(self, path: Path) -> None:
        with np.load(path) as f:
            size, nxt, added = (int(v) for v in f["counters"])
            if size > self.capacity or f["obs"].shape[1:] != self.obs.shape[1:]:
                raise ValueError(f"{path}: replay of another shape or larger than capacity {self.capacity}")
            for name in self._ARRAYS:
                getattr(self, name)[:size] = f[name]
            self.size, self.next, self.added = size, nxt, added
            self.rng.bit_generator.state = ast.literal_eval(bytes(f["rng"]).decode())

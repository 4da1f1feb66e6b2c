"""Recurrent Q-learning (R2D2 family) with a per-joint branching head, top to bottom.

The algorithm, in the order it runs (every knob is a field of :class:`QLearningConfig`):

1. **Actors** (:mod:`policies.actors`, one process per env) act with the torch-free step
   runtime on the learner's latest weights, explore per joint with their own epsilon, and cut
   their experience into overlapping fixed-length sequences that never cross an episode end,
   each stored with the recurrent state the actor had at its start.
2. **Replay** (:mod:`policies.sequence_replay`) keeps those sequences with R2D2 priorities.
3. **Learner** (this module): a batch of sequences is burned in (no gradient, no loss) from
   the stored states, for the online and the target network alike; then both run over the
   trained part. The value of a joint action is DecQN's mean over joints,
   ``Q(s, a) = mean_j Q_j(s, a_j)``; the target is an n-step double-Q target,
   ``G + gamma^m * mean_j Q'_j(s', argmax_b Q_j(s', b))``, with R2D2's value rescaling ``h``;
   the loss is the importance-weighted Huber loss of ``Q(s, a)`` against it. The target
   network is a copy made every ``target_update_every`` updates.
4. Rounds are lock-step: the learner sends weights and a step budget to every actor, updates
   while they act, then collects their sequences. So a run is reproducible from its seed.

Why DecQN's mean (and not BDQ's per-branch target): with one TD error on the mean over
joints, the joints share the credit for the one reward there is; BDQ regresses every branch
on the full target separately, which asks each joint's Q to explain what the other nine did.

:func:`train` adds what a person needs around it: the run directory (checkpoints in the
project's format, the best one by periodic greedy evaluation, ``metrics.csv``, a learning
curve PNG, the resolved config as TOML), a progress bar, Ctrl-C that saves and stops, and
``--resume`` with replay and optimiser state.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import pickle
import signal
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from policies.actors import ActorPool, ActorSpec, EpisodeStats, action_coding, actor_epsilon, make_env
from policies.checkpoint import ARCH_KINDS, ArchConfig
from calibration import Calibration, load_calibration
from calibration.durable import replace_synced, write_synced
from policies.networks import build_network, numpy_weights, save_network_checkpoint
from policies.rwkv import QNetwork
from policies.sequence_replay import SequenceLayout, SequenceReplay
from policies.evaluation import TUNING_EVAL_SEED
from sim.observation import ObservationSpec, stance_offsets


#: TOML has no null: a None field is written as this string (and read back as None).
NONE_IN_TOML = "none"
ENV_DEFAULTS_PATH = Path(__file__).with_name("env_defaults.toml")
#: A run directory's resume state (Learner.save_resume_state): the learner, its replay, and the
#: learner of a checkpoint being written (whole only once the replay beside it is).
RESUME_STATE, REPLAY_STATE, PENDING_RESUME_STATE = "learner.pt", "replay.npz", "learner.pt.tmp"


@dataclass
class QLearningConfig:
    """Every hyperparameter of a training run; ``robotd train --config FILE.toml`` sets any of them."""

    # --- task and network
    env_id: str = "robotd/BalanceTaskDiscrete-v0"  # any gymnasium env with a flat Box observation
    arch: str = "rwkv4"  # rwkv4 | gru | mlp
    d: int = 64  # width of the network
    n_layers: int = 2
    mlp_history: int = 8  # observations the mlp network sees (current one included)
    box_bins: int = 5  # bins per dimension when the env's action space is a Box
    # Robot env: the policy decides every decision_ticks ticks and holds its bins in between
    # (recorded in the checkpoint's contract, so the daemon steps it the same way). A sequence
    # step, n_step and gamma are then per decision; the rewards of its ticks are summed.
    decision_ticks: int = 1
    # Robot env: joint offset (rad) of the extreme bins (None: the contract's 0.4). The bins are
    # evenly spaced in [-1, 1] of it; a smaller scale gives finer corrections around the pose.
    action_scale_rad: float | None = None
    # Robot env: the stance the middle bin holds, as joint -> offset (rad) from the nominal pose
    # (written into the checkpoint's contract; joints not named stay at 0). robotd stance
    # tunes one with Bayesian optimisation; the policy then learns to react around it.
    stance_rad: dict[str, float] | None = None
    # The untrained network's preferred bin on every joint (None: no preference). For the
    # robot the middle bin is "hold the nominal pose", which stands 53 % of pushed episodes:
    # starting there, exploration perturbs a stance instead of flailing.
    initial_greedy_bin: int | None = 2
    # Robot env: actions the observation carries (None: the contract's 4). The servo's dead time is
    # 80-250 ms, 4-12 ticks at 50 Hz: a shorter history hides commands still on their way.
    action_history: int | None = 12
    # Robot env: the calibration TOML the envs build the robot from (its joint limits, and its
    # dead_time_ms as the centre of the randomised actuator delay); its identity goes into the
    # checkpoints, so the daemon running that calibration finds the policy trained for it.
    # None: the envs' own lookup and delay range. `robotd train` always sets it.
    calibration: str | None = None
    # --- budget and parallelism
    total_steps: int = 1_000_000  # env steps over all actors; 0: no step limit (then minutes is the budget)
    minutes: float | None = None  # wall-clock budget (with total_steps too: whichever comes first)
    num_envs: int = 2  # actor processes, one env each
    steps_per_round: int = 200  # env steps per actor between two weight refreshes
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 1  # the actors need the other core
    # --- sequences and replay
    burn_in: int = 20  # steps replayed before each trained part, without loss (<= train_len)
    train_len: int = 40  # trained steps per sequence; sequences overlap by burn_in
    replay_capacity_steps: int = 200_000
    learning_starts: int = 10_000  # env steps before the first update
    # Trained steps sampled per env step collected: 8 is 12 500 updates per 1M env steps at the
    # default batch (4: 6 250, too little learning per budget; the learner alone runs ~27/s).
    replay_ratio: float = 8.0
    batch_size: int = 16  # sequences per update
    prioritized: bool = True
    priority_alpha: float = 0.9  # R2D2
    priority_eta: float = 0.9  # priority = eta * max|td| + (1 - eta) * mean|td|
    priority_beta: float = 0.6  # importance-sampling exponent
    # --- targets and optimisation
    gamma: float = 0.98  # a 1 s horizon at 50 Hz: a push is caught (or not) within it
    n_step: int = 5
    value_rescaling: bool = True  # h(x) = sign(x)(sqrt(|x|+1)-1) + 1e-3 x, on targets and values
    # Q = c + (what the network learns), c = mean reward per step / (1 - gamma), measured on the
    # replay when learning starts (reward centring). Why: the robot's alive reward makes every
    # value ~150 whatever the action, and a network climbing there from 0 trains only the bins
    # taken, so the dueling head's mean subtraction pushes untaken bins down by far more than
    # any real difference (docs/learning.md). Centred, the network starts at the right level and
    # value rescaling compresses the small differences near 0 (h' = 0.5) instead of at 150 (0.04).
    center_returns: bool = True
    # Observations shifted and scaled to zero mean, unit std (from the replay when learning
    # starts, then fixed); checkpoints hold it folded into the input layer.
    normalize_observations: bool = True
    huber_delta: float = 1.0
    lr: float = 3e-4
    adam_eps: float = 1e-6
    max_grad_norm: float = 10.0
    target_update_every: int = 100  # learner updates between target network copies (125 per 1M env steps)
    # --- exploration (per joint)
    epsilon_start: float = 0.5
    epsilon_decay_steps: int = 200_000  # linear from epsilon_start to each actor's own epsilon
    epsilon_base: float = 0.1  # Ape-X: actor i of N explores with base ** (1 + alpha * i / (N - 1))
    epsilon_alpha: float = 1.0
    explore_max_ticks: int = 1  # > 1: a joint that explores holds its random bin 1..this many ticks
    # --- evaluation and checkpoints
    eval_every_steps: int = 50_000
    eval_episodes: int = 10
    # The periodic evals choose the best checkpoint, so they run on the tuning episodes (from
    # seed 2000), never on the ones robotd eval and the docs report (from 1000).
    eval_seed: int = TUNING_EVAL_SEED
    checkpoint_every_steps: int = 50_000

    def __post_init__(self) -> None:
        if self.arch not in ARCH_KINDS:
            raise ValueError(f"arch: {self.arch!r} is not one of {', '.join(ARCH_KINDS)}")
        SequenceLayout(self.burn_in, self.train_len)  # validates burn_in <= train_len
        for name in ("num_envs", "steps_per_round", "batch_size", "n_step", "target_update_every", "d", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.total_steps < 0 or (self.total_steps == 0 and self.minutes is None):
            raise ValueError("total_steps: must be > 0, or 0 with a minutes budget")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma: must be in (0, 1], got {self.gamma}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "QLearningConfig":
        """A config from a TOML table; an unknown key (naming the nearest known one or the field an
        alias means) or a value of the wrong type is an error naming it, before anything is made.

        TOML has no null: ``"none"`` stands for None (what :meth:`to_dict` writes for it).
        """
        from policies.config_table import check_table

        aliases = {"learning_rate": "lr", "discount": "gamma", "buffer_size": "replay_capacity_steps",
                   "total_timesteps": "total_steps", "n_envs": "num_envs", "target_update_interval":
                   "target_update_every", "hidden_size": "d", "num_layers": "n_layers"}
        values = {k: None if v == NONE_IN_TOML else v for k, v in values.items()}
        check_table(cls, values, source, aliases)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Every field, None as ``"none"``: the resolved config.toml round-trips exactly."""
        return {k: NONE_IN_TOML if v is None else v for k, v in dataclasses.asdict(self).items()}

    @staticmethod
    def env_defaults(env_id: str) -> dict[str, Any]:
        """The shipped per-env hyperparameters (policies/env_defaults.toml) for ``env_id``; {} if none."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib

        return tomllib.loads(ENV_DEFAULTS_PATH.read_text()).get(env_id, {})

    def robot_spec(self, base: ObservationSpec) -> ObservationSpec:
        """The observation and action contract this config trains on the robot's env (``base``: the env's).

        Every policy compared with ours on the same footing (bench/learners.py's SB3 rows,
        bench/authority.py's PD) acts through this contract too.
        """
        return dataclasses.replace(base, decision_ticks=self.decision_ticks,
                                   action_history=base.action_history if self.action_history is None
                                   else self.action_history,
                                   action_scale_rad=self.action_scale_rad or base.action_scale_rad,
                                   stance_rad=stance_offsets(base.controlled_joints, self.stance_rad))


# ---------------------------------------------------------------------------------------------
# The loss


def value_rescale(x: Tensor, eps: float = 1e-3) -> Tensor:
    """R2D2's h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1.0) - 1.0) + eps * x


def inverse_value_rescale(x: Tensor, eps: float = 1e-3) -> Tensor:
    """h^-1, exact: sign(x) (((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1)."""
    return torch.sign(x) * (((torch.sqrt(1.0 + 4.0 * eps * (x.abs() + 1.0 + eps)) - 1.0) / (2.0 * eps)) ** 2 - 1.0)


def n_step_targets(rewards: Tensor, length: Tensor, terminal: Tensor, bootstrap: Tensor, gamma: float,
                   n: int) -> tuple[Tensor, Tensor]:
    """n-step returns for every trained step of a batch of sequences, and the bootstrap discount.

    ``rewards`` [B, T] (zero past ``length``), ``length`` [B], ``terminal`` [B] (the observation
    after the last valid step ends the episode), ``bootstrap`` [B, T + 1]: the value of the
    observation in train slot j. Step i sums ``m = min(n, length - i)`` rewards and bootstraps
    from slot ``i + m`` with ``gamma ** m``, unless that slot is the terminal one. Returns
    (``G + gamma**m * bootstrap`` [B, T], valid mask [B, T]).
    """
    b, t = rewards.shape
    steps = torch.arange(t, device=rewards.device)
    valid = steps[None, :] < length[:, None]
    m = torch.clamp(length[:, None] - steps[None, :], min=0).clamp(max=n)  # rewards summed per step
    padded = torch.cat([rewards, rewards.new_zeros(b, n)], 1)
    ret = rewards.new_zeros(b, t)
    for k in range(n):
        ret = ret + (gamma ** k) * padded[:, k:k + t] * (k < m)
    boot_slot = (steps[None, :] + m).clamp(max=t)
    boot = bootstrap.gather(1, boot_slot)
    boot = torch.where(terminal[:, None] & (boot_slot == length[:, None]), torch.zeros_like(boot), boot)
    return torch.where(valid, ret + (gamma ** m) * boot, torch.zeros_like(ret)), valid


def _joint_value(q: Tensor, bins: Tensor) -> Tensor:
    """DecQN: the mean over joints of each joint's Q of its bin. q [B, T, J, K], bins [B, T, J]."""
    return q.gather(-1, bins.unsqueeze(-1)).squeeze(-1).mean(-1)


def sequence_loss(online: QNetwork, target: QNetwork, batch: dict[str, Tensor], weights: Tensor,
                  cfg: QLearningConfig, return_offset: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, |td| [B, T], valid [B, T]) for a batch of sequences (layout: policies.sequence_replay).

    The networks output ``h(Q - return_offset)`` (``h``: value rescaling, or the identity), so a
    terminal bootstrap is ``Q = 0``, i.e. ``-return_offset`` in the network's terms.
    """
    obs, start = batch["obs"], batch["start_state"]
    b_in = cfg.burn_in
    with torch.no_grad():  # burn-in: rebuild the recurrent state, carry no loss
        if b_in:
            keep = batch["has_burn_in"].view(-1, *([1] * (start.dim() - 1)))
            _, online_state = online.forward_sequence(obs[:, :b_in], start)
            _, target_state = target.forward_sequence(obs[:, :b_in], start)
            online_state = torch.where(keep, online_state, start)
            target_state = torch.where(keep, target_state, start)
        else:
            online_state = target_state = start
        q_target, _ = target.forward_sequence(obs[:, b_in:], target_state)  # [B, T + 1, J, K]
    q_online, _ = online.forward_sequence(obs[:, b_in:], online_state)
    taken = _joint_value(q_online[:, :-1], batch["actions"])  # [B, T]
    with torch.no_grad():
        greedy = q_online.argmax(-1)  # double Q: the online net picks, the target net values
        bootstrap = _joint_value(q_target, greedy)  # [B, T + 1]
        if cfg.value_rescaling:
            bootstrap = inverse_value_rescale(bootstrap)
        returns, valid = n_step_targets(batch["rewards"], batch["length"], batch["terminal"],
                                        bootstrap + return_offset, cfg.gamma, cfg.n_step)
        returns = returns - return_offset
        if cfg.value_rescaling:
            returns = value_rescale(returns)
    td = taken - returns
    per_step = torch.nn.functional.huber_loss(taken, returns, reduction="none", delta=cfg.huber_delta)
    per_step = per_step * valid
    loss = (per_step.sum(1) / valid.sum(1).clamp(min=1) * weights).mean()
    return loss, td.detach().abs(), valid


# ---------------------------------------------------------------------------------------------
# The learner


@dataclass
class TrainState:
    """Counters that --resume restores."""

    env_steps: int = 0
    updates: int = 0
    rounds: int = 0
    episodes: int = 0
    elapsed_s: float = 0.0
    best_eval: tuple[float, float] = (-math.inf, -math.inf)  # (success rate, mean return)
    next_eval: int = 0
    next_checkpoint: int = 0
    target_copies: int = 0
    return_offset: float = 0.0  # c of QLearningConfig.center_returns (set when learning starts)


@dataclass
class RunInfo:
    """What a training run tells its caller (the CLI prints it)."""

    run_dir: Path
    state: TrainState
    interrupted: bool
    last_eval: dict[str, Any] = field(default_factory=dict)


class ResumeStateError(ValueError):
    """A run directory's resume state cannot be continued (unreadable, or learner and replay disagree)."""


def read_learner_state(path: Path) -> dict[str, Any]:
    """learner.pt's content; ResumeStateError names the file if it cannot be read."""
    try:
        return torch.load(path, weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:  # missing, cut short, not torch's
        raise ResumeStateError(f"{path}: cannot read the learner state to resume ({exc})") from None


def _warn(message: str) -> None:
    print(f"robotd train: warning: {message}", file=sys.stderr, flush=True)


class Learner:
    """Networks, optimiser, replay and the run directory of one training run."""

    def __init__(self, cfg: QLearningConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = run_dir
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device(cfg.device)
        from sim.envs import ENV_IDS

        self.calibration: Calibration | None = None
        if cfg.calibration is not None and cfg.env_id in ENV_IDS:
            self.calibration = load_calibration(cfg.calibration)
        probe = make_env(cfg.env_id, {"calibration": self.calibration} if self.calibration is not None else None)
        try:
            coding = action_coding(cfg.env_id, probe.observation_space, probe.action_space, cfg.box_bins)
            obs_dim = int(probe.observation_space.shape[0])
            self.robot_spec = getattr(probe.unwrapped, "spec_obs", None)
            env_config = getattr(probe.unwrapped, "config", None)
            self.calibration_identity = getattr(getattr(probe.unwrapped, "calibration", None), "identity", None)
        finally:
            probe.close()
        self.coding = coding
        self.env_kwargs: dict[str, Any] = {}
        if self.robot_spec is not None:
            self.robot_spec = cfg.robot_spec(self.robot_spec)
            obs_dim = self.robot_spec.size
            # The env moves the servos by this contract (targets_rad), as the daemon will.
            env_config = dataclasses.replace(env_config, obs_spec=self.robot_spec)
            if self.calibration is not None:  # this robot's joints and dead time
                from sim.env import centred_actuator_delay

                env_config = centred_actuator_delay(env_config, self.calibration.servo_timing.dead_time_ms)
                self.env_kwargs["calibration"] = self.calibration
            self.env_kwargs["config"] = env_config
            self.meta_observation = self.robot_spec.to_dict()
            self.action_bins = tuple(float(x) for x in self.robot_spec.bin_levels())
        else:
            if (cfg.decision_ticks != 1 or cfg.action_scale_rad is not None or cfg.stance_rad is not None
                    or cfg.calibration is not None):
                raise ValueError(f"decision_ticks, action_scale_rad, stance_rad, calibration: apply to the robot's "
                                 f"envs only, not {cfg.env_id}")
            self.meta_observation = {"env_id": cfg.env_id}
            self.action_bins = tuple(coding.levels)
        self.arch = ArchConfig(kind=cfg.arch, obs_dim=obs_dim, n_actions=coding.n_actions, n_bins=coding.n_bins,
                               d=cfg.d, n_layers=cfg.n_layers, history=cfg.mlp_history)
        self.online = build_network(self.arch).to(self.device)
        self._initial_preference()
        self.target = copy.deepcopy(self.online)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.layout = SequenceLayout(cfg.burn_in, cfg.train_len)
        self.replay = SequenceReplay(max(1, cfg.replay_capacity_steps // cfg.train_len), self.layout, obs_dim,
                                     coding.n_actions, self.arch.state_shape, cfg.priority_alpha, cfg.priority_eta,
                                     seed=cfg.seed)
        self.state = TrainState(next_eval=cfg.eval_every_steps, next_checkpoint=cfg.checkpoint_every_steps)
        self._loss_ema: float | None = None

    @torch.no_grad()
    def _initial_preference(self) -> None:
        """Make the untrained greedy policy pick ``initial_greedy_bin`` on every joint (tiny margin)."""
        b = self.cfg.initial_greedy_bin
        if b is None:
            return
        if not 0 <= b < self.arch.n_bins:
            raise ValueError(f"initial_greedy_bin: {b} is not a bin of 0..{self.arch.n_bins - 1}")
        head = self.online.head
        head.advantage.weight.mul_(0.01)
        bias = head.advantage.bias.view(self.arch.n_actions, self.arch.n_bins)
        bias.zero_()
        bias[:, b] = 0.1

    def actor_spec(self) -> ActorSpec:
        return ActorSpec(self.cfg.env_id, self.arch, self.meta_observation, self.action_bins,
                         self.cfg.box_bins, self.layout, self.cfg.seed, self.cfg.explore_max_ticks,
                         self.cfg.decision_ticks, self.env_kwargs)

    def weights(self) -> dict[str, np.ndarray]:
        return numpy_weights(self.online)

    def epsilons(self) -> list[float]:
        cfg = self.cfg
        frac = min(1.0, self.state.env_steps / max(cfg.epsilon_decay_steps, 1))
        out = []
        for i in range(cfg.num_envs):
            final = actor_epsilon(i, cfg.num_envs, cfg.epsilon_base, cfg.epsilon_alpha)
            out.append(cfg.epsilon_start + frac * (final - cfg.epsilon_start) if cfg.epsilon_start > final else final)
        return out

    def updates_due(self, new_steps: int) -> int:
        """Updates for ``new_steps`` collected: replay_ratio trained steps per env step."""
        cfg = self.cfg
        if self.state.env_steps < cfg.learning_starts or len(self.replay) == 0:
            return 0
        per_update = cfg.batch_size * cfg.train_len
        owed = (self.state.env_steps - cfg.learning_starts + new_steps) * cfg.replay_ratio / per_update
        return max(0, int(owed) - self.state.updates)

    @torch.no_grad()
    def start_learning(self) -> None:
        """What learning needs from the first data, measured once on the replay and then fixed
        (a moving normaliser or offset would move every target): the observation normalisation
        and the return offset c (``QLearningConfig.normalize_observations``, ``center_returns``)."""
        size = len(self.replay)
        if self.cfg.normalize_observations:
            b = self.layout.burn_in
            valid = np.arange(self.layout.train_len + 1)[None, :] <= self.replay.length[:size, None]
            obs = self.replay.obs[:size, b:][valid]
            std = obs.std(0)
            # A constant input (always 0, say) keeps its scale: nothing to normalise, nothing to divide by.
            scale = np.where(std > 1e-6, 1.0 / np.maximum(std, 1e-6), 1.0)
            for net in (self.online, self.target):
                net.set_obs_normalization(torch.from_numpy(obs.mean(0)), torch.from_numpy(scale))
        if self.cfg.center_returns:
            steps = np.arange(self.layout.train_len)[None, :] < self.replay.length[:size, None]
            mean_reward = float(self.replay.rewards[:size][steps].mean())
            self.state.return_offset = mean_reward / max(1.0 - self.cfg.gamma, 1e-3)

    def update(self) -> float:
        cfg = self.cfg
        if self.state.updates == 0:
            self.start_learning()
        idx, batch_np, weights_np = self.replay.sample(cfg.batch_size, cfg.priority_beta, cfg.prioritized)
        dev = self.device
        # Indices as int64 (gather's type); everything else as stored.
        batch = {name: torch.from_numpy(a.astype(np.int64) if name in ("actions", "length") else a).to(dev)
                 for name, a in batch_np.items()}
        loss, td_abs, valid = sequence_loss(self.online, self.target, batch, torch.from_numpy(weights_np).to(dev), cfg,
                                            self.state.return_offset)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.online.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        if cfg.prioritized:
            self.replay.update_priorities(idx, td_abs.cpu().numpy(), valid.cpu().numpy())
        self.state.updates += 1
        if self.state.updates % cfg.target_update_every == 0:
            self.target.load_state_dict(self.online.state_dict())
            self.state.target_copies += 1
        value = float(loss.detach())
        self._loss_ema = value if self._loss_ema is None else 0.98 * self._loss_ema + 0.02 * value
        return value

    @property
    def loss_ema(self) -> float | None:
        return self._loss_ema

    # ------------------------------------------------------------------ run directory

    def save_checkpoint(self, name: str, metrics: dict[str, Any] | None = None) -> Path:
        path = self.run_dir / f"{name}.safetensors"
        training = {"config": self.cfg.to_dict(), "env_steps": self.state.env_steps, "updates": self.state.updates,
                    "return_offset": self.state.return_offset}
        return save_network_checkpoint(path, self.online, self.robot_spec if self.robot_spec is not None else
                                       {"env_id": self.cfg.env_id, "action_bins": self.action_bins},
                                       self.calibration_identity, training=training, metrics=metrics)

    def save_resume_state(self) -> None:
        """Networks, optimiser, counters and replay: what --resume needs to continue this run.

        One checkpoint is two files stamped with the same ``env_steps`` (learner.pt's state and
        replay.npz's stamp). learner.pt is replaced last, and that rename commits the checkpoint:
        a kill before the replay's rename leaves the previous pair untouched, a kill between the
        two renames leaves the new learner whole in learner.pt.tmp (:meth:`load_resume_state`
        completes the commit from it).
        """
        learner, pending = self.run_dir / RESUME_STATE, self.run_dir / PENDING_RESUME_STATE
        write_synced(pending, lambda f: torch.save({
            "online": self.online.state_dict(), "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(), "state": dataclasses.asdict(self.state),
            "torch_rng": torch.get_rng_state(), "loss_ema": self._loss_ema,
            "obs_normalization": (self.online.obs_shift, self.online.obs_scale)}, f))
        self.replay.save(self.run_dir / REPLAY_STATE, self.state.env_steps)
        replace_synced(pending, learner)

    def _checked_resume_state(self) -> dict[str, Any]:
        """learner.pt's content, once its step count matches replay.npz's: never a learner and a
        replay from two checkpoints. A pair a kill split between its two renames is completed
        (warned in one line); any other mismatch is refused with :class:`ResumeStateError`."""
        learner, replay = self.run_dir / RESUME_STATE, self.run_dir / REPLAY_STATE
        pending = self.run_dir / PENDING_RESUME_STATE
        saved = read_learner_state(learner)
        steps = saved["state"]["env_steps"]
        try:
            replay_steps = SequenceReplay.stamp(replay)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # missing, cut short, not a .npz
            raise ResumeStateError(f"{replay}: cannot read the replay to resume ({exc})") from None
        if replay_steps is None:
            _warn(f"{replay} has no step stamp (saved by an older robotd): cannot check that it belongs "
                  f"with {learner.name}")
        elif replay_steps != steps:
            completed = read_learner_state(pending) if pending.exists() else None
            if completed is None or completed["state"]["env_steps"] != replay_steps:
                raise ResumeStateError(f"{learner} is at {steps} env steps but {replay} at {replay_steps}: they "
                                       f"are not one checkpoint, and resuming would mix them")
            _warn(f"the checkpoint at {replay_steps} env steps was cut off before {learner.name} was replaced: "
                  f"completed from {pending.name}")
            replace_synced(pending, learner)
            saved = completed
        return saved

    def _keep_best_on_disk(self) -> None:
        """An eval after the last checkpoint may have written best.safetensors before a kill: its
        score, not the checkpoint's older one, is the one a resumed run has to beat."""
        best = self.run_dir / "best.safetensors"
        if best.exists():
            from policies.checkpoint import load_checkpoint

            self.state.best_eval = max(self.state.best_eval, eval_rank(load_checkpoint(best)[1].metrics))

    def load_resume_state(self) -> None:
        """Continue from the run directory's last checkpoint (:meth:`save_resume_state`)."""
        saved = self._checked_resume_state()
        self.online.load_state_dict(saved["online"])
        self.target.load_state_dict(saved["target"])
        if "obs_normalization" in saved:
            for net in (self.online, self.target):
                net.set_obs_normalization(*saved["obs_normalization"])
        self.optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        state["best_eval"] = tuple(state["best_eval"])
        self.state = TrainState(**state)
        torch.set_rng_state(saved["torch_rng"])
        self._loss_ema = saved["loss_ema"]
        self.replay.load(self.run_dir / REPLAY_STATE)
        self._keep_best_on_disk()


METRICS_FIELDS = ("env_steps", "updates", "minutes", "epsilon", "loss", "train_episodes", "train_return",
                  "train_success", "eval_success", "eval_return", "eval_tilt_deg", "env_steps_per_s",
                  "updates_per_s", "updates_per_1m_steps", "target_copies_per_1m_steps")


def eval_rank(result: dict[str, Any]) -> tuple[float, float]:
    """How evals are ranked for ``best``: success rate first (none off the robot), then return."""
    return (result["eval_success"] if not math.isnan(result["eval_success"]) else -math.inf,
            result["eval_return"])


def _evaluate(learner: Learner) -> dict[str, Any]:
    """Greedy eval of the current weights through the torch-free runtime, on fixed seeds."""
    from policies.evaluation import evaluate_on_env, evaluate_policy
    from policies.runtime import RUNTIMES, CheckpointPolicy

    meta = learner.actor_spec().checkpoint_meta()  # the actors' runtime, on the same weights
    runtime = RUNTIMES[learner.arch.kind](learner.weights(), meta)
    cfg = learner.cfg
    if learner.robot_spec is not None:  # the robot's task, moved by the policy's contract
        from sim.envs import BOX_TWIN

        report = evaluate_policy(CheckpointPolicy(runtime, learner.robot_spec), cfg.eval_episodes, cfg.eval_seed,
                                 BOX_TWIN[cfg.env_id], learner.env_kwargs, name="training")
        return {"eval_success": report.success_rate, "eval_return": report.mean_return,
                "eval_tilt_deg": report.mean_tilt_deg, "report": report.to_dict()}
    report = evaluate_on_env(runtime, cfg.env_id, cfg.eval_episodes, cfg.eval_seed, box_bins=cfg.box_bins)
    return {"eval_success": float("nan"), "eval_return": report.mean_return, "eval_tilt_deg": float("nan"),
            "report": report.to_dict()}


def plot_learning_curve(metrics_csv: Path, out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    with open(metrics_csv) as f:
        rows = [r for r in csv.DictReader(f)]
    if not rows:
        return

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan for r in rows])

    minutes, steps = col("minutes"), col("env_steps")
    has_eval = ~np.isnan(col("eval_return"))
    success = col("eval_success")

    def line(ax, x: np.ndarray, y: np.ndarray, style: str, label: str, **kw: Any) -> None:
        """Only a series with values gets a line and a legend entry (CartPole has no success)."""
        if np.any(~np.isnan(y)):
            ax.plot(x, y, style, label=label, **kw)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if np.any(~np.isnan(success)):
        line(ax, minutes[has_eval], success[has_eval], "o-", "greedy eval success")
        line(ax, minutes, col("train_success"), "-", "training episodes success", alpha=0.5)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
    else:
        line(ax, minutes[has_eval], col("eval_return")[has_eval], "o-", "greedy eval return")
        ax.set_ylabel("return")
    ax.set_xlabel("wall-clock minutes")
    ax.legend(loc="best", fontsize=8)
    ax = axes[1]
    line(ax, steps, col("train_return"), "-", "training episodes return", alpha=0.6)
    line(ax, steps[has_eval], col("eval_return")[has_eval], "o-", "greedy eval return")
    ax.xaxis.set_major_formatter(EngFormatter())  # 200k, 1M: full step counts overlap
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def _keep_metrics_up_to(path: Path, env_steps: int) -> None:
    """Drop the metrics rows that a run resumed at ``env_steps`` writes again (the evals between its
    last checkpoint and a kill) and a row the kill cut short, so that rows never repeat or go back."""
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f)
                if None not in row and None not in row.values() and int(row["env_steps"]) <= env_steps]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=METRICS_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(path.name + ".tmp")
    write_synced(tmp, lambda f: f.write(text.getvalue().encode()))
    replace_synced(tmp, path)


def write_config_toml(cfg: QLearningConfig, path: Path) -> None:
    import tomli_w

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two writers (tuning workers) never share one
    tmp.write_text(tomli_w.dumps(cfg.to_dict()))
    tmp.replace(path)


def train(cfg: QLearningConfig, run_dir: Path, resume: bool = False, progress: bool = True,
          on_eval: Callable[[TrainState, dict[str, Any]], bool] | None = None) -> RunInfo:
    """Train until the step or time budget is spent or Ctrl-C; everything lands in ``run_dir``.

    ``on_eval(state, eval)`` is called after each periodic eval (``eval`` holds ``eval_success``,
    ``eval_return``...); returning True ends the run there, saved as on any other end (tuning
    prunes hopeless trials with it).
    """
    from tqdm import tqdm

    run_dir.mkdir(parents=True, exist_ok=True)
    learner = Learner(cfg, run_dir)
    if learner.calibration is not None:
        cal = learner.calibration
        low, high = learner.env_kwargs["config"].randomization.actuator_delay_ms
        print(f"calibration {cal.path} ({cal.identity}): its joint limits; actuator delay {low:g}-{high:g} ms "
              f"around its dead time, {cal.servo_timing.dead_time_ms:g} ms", flush=True)
    if resume:
        learner.load_resume_state()
        print(f"resuming at {learner.state.env_steps} env steps, {learner.state.updates} updates (the last "
              f"checkpoint)", flush=True)
    write_config_toml(cfg, run_dir / "config.toml")
    metrics_path = run_dir / "metrics.csv"
    new_metrics = not (resume and metrics_path.exists())
    if not new_metrics:
        _keep_metrics_up_to(metrics_path, learner.state.env_steps)
    metrics_file = open(metrics_path, "w" if new_metrics else "a", newline="")
    writer = csv.DictWriter(metrics_file, fieldnames=METRICS_FIELDS)
    if new_metrics:
        writer.writeheader()
    stop = {"flag": False}
    previous_handler = signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    pool = ActorPool(learner.actor_spec(), cfg.num_envs)
    state = learner.state
    bar = tqdm(total=cfg.total_steps or None, initial=state.env_steps, unit="step", dynamic_ncols=True, disable=not progress,
               desc="robotd train")
    window: list[EpisodeStats] = []
    last_eval: dict[str, Any] = {}
    started = time.monotonic() - state.elapsed_s
    rate_t, rate_steps, rate_updates = time.monotonic(), state.env_steps, state.updates
    round_steps = cfg.steps_per_round * cfg.num_envs

    def evaluate(epsilon: float, successes: list[bool]) -> dict[str, Any]:
        """The periodic eval: a metrics row, and ``best`` when it beats every earlier eval."""
        nonlocal rate_t, rate_steps, rate_updates, window
        result = _evaluate(learner)
        score = eval_rank(result)
        if score > state.best_eval:
            state.best_eval = score
            learner.save_checkpoint("best", {k: v for k, v in result.items() if k != "report"}
                                    | {"eval": result["report"]})
        now = time.monotonic()
        dt = max(now - rate_t, 1e-9)
        writer.writerow({
            "env_steps": state.env_steps, "updates": state.updates, "minutes": f"{state.elapsed_s / 60:.3f}",
            "epsilon": f"{epsilon:.4f}",
            "loss": f"{learner.loss_ema:.5f}" if learner.loss_ema is not None else "",
            "train_episodes": len(window),
            "train_return": f"{np.mean([e.episode_return for e in window]):.2f}" if window else "",
            "train_success": f"{np.mean(successes):.3f}" if successes else "",
            "eval_success": f"{result['eval_success']:.3f}", "eval_return": f"{result['eval_return']:.2f}",
            "eval_tilt_deg": f"{result['eval_tilt_deg']:.2f}",
            "env_steps_per_s": f"{(state.env_steps - rate_steps) / dt:.1f}",
            "updates_per_s": f"{(state.updates - rate_updates) / dt:.2f}",
            "updates_per_1m_steps": f"{state.updates / max(state.env_steps, 1) * 1e6:.0f}",
            "target_copies_per_1m_steps": f"{state.target_copies / max(state.env_steps, 1) * 1e6:.1f}",
        })
        metrics_file.flush()
        rate_t, rate_steps, rate_updates = now, state.env_steps, state.updates
        window = []
        success = "" if math.isnan(result["eval_success"]) else f"success {result['eval_success']:.2f}, "
        bar.write(f"[{state.env_steps} steps, {state.elapsed_s / 60:.1f} min] eval: {success}"
                  f"return {result['eval_return']:.1f}")
        return result

    def checkpoint() -> None:
        """``last`` and the resume state, at the same env steps."""
        learner.save_checkpoint("last")
        learner.save_resume_state()

    try:
        if not resume:
            # The untrained network first (it holds the stance or the nominal pose): the curve's
            # start, and the checkpoint to beat, so training never ships something worse. Then a
            # checkpoint, so that a run killed at any moment from here on can be resumed.
            last_eval = evaluate(learner.epsilons()[0], [])
            checkpoint()
        while (cfg.total_steps == 0 or state.env_steps < cfg.total_steps) and not stop["flag"]:
            if cfg.minutes is not None and time.monotonic() - started >= cfg.minutes * 60.0:
                break
            epsilons = learner.epsilons()
            pool.start_round(learner.weights(), cfg.steps_per_round, epsilons)
            for _ in range(learner.updates_due(round_steps)):  # learn while the actors act
                learner.update()
            sequences, episodes = pool.finish_round()
            for seq in sequences:
                learner.replay.add(seq)
            state.env_steps += round_steps
            state.rounds += 1
            state.episodes += len(episodes)
            state.elapsed_s = time.monotonic() - started
            window += episodes
            bar.update(round_steps)
            successes = [e.task["success"] for e in window if "success" in e.task]
            bar.set_postfix_str(
                f"ret {np.mean([e.episode_return for e in window]) if window else float('nan'):.0f} "
                f"succ {np.mean(successes) if successes else float('nan'):.2f} "
                f"loss {learner.loss_ema if learner.loss_ema is not None else float('nan'):.3f} "
                f"eps {epsilons[0]:.3f}", refresh=False)
            evaluate_now = state.env_steps >= state.next_eval or 0 < cfg.total_steps <= state.env_steps
            if evaluate_now:
                state.next_eval += cfg.eval_every_steps
                last_eval = evaluate(epsilons[0], successes)
                if on_eval is not None and on_eval(state, last_eval):
                    break
            if state.env_steps >= state.next_checkpoint:
                state.next_checkpoint += cfg.checkpoint_every_steps  # saved so: a resumed run waits for the next
                checkpoint()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        bar.close()
        pool.close()
        state.elapsed_s = time.monotonic() - started
        checkpoint()
        metrics_file.close()
        plot_learning_curve(metrics_path, run_dir / "learning_curve.png",
                            f"robotd train: {cfg.arch} on {cfg.env_id} (seed {cfg.seed})")
    return RunInfo(run_dir, state, stop["flag"], {k: v for k, v in last_eval.items() if k != "report"})

"""Seeded greedy evaluation: one definition of "how good is this policy" for every caller.

``robotd eval``, the learner's periodic eval, the benchmarks and tuning all call
:func:`evaluate_policy` on the balance task (:mod:`sim.balance_task`; or another of its tasks,
the stay-up task adding its own figures to the report): episode ``i`` is the
env reset with seed ``seed + i``, so every policy compared meets the very same robots, pushes
and phone errors. A policy is anything with the daemon's ``reset()`` / ``act(obs)`` interface
(``pd``, ``hold``, a checkpoint through the torch-free runtime, as the daemon runs it).
:func:`evaluate_on_env` is the same for a checkpoint trained on another gymnasium env.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

#: First seed of the episodes that choose: tuning trials and a training run's best checkpoint
#: (EVAL_SEED = 1000 is for reporting, never for choosing). Here, below both the learner and the
#: tuner that use it, so that neither has to import the other for it.
TUNING_EVAL_SEED = 2000
#: The first seed of the fixed evaluation episodes (the issue's and the docs' figures use these).
EVAL_SEED = 1000


@dataclass
class StayUpFigures:
    """The stay-up task's figures over the evaluated episodes (:class:`sim.balance_task.StayUpScore`)."""

    standing_fraction: float  # mean over episodes of the share of t >= 4 s upright and self-supported
    knock_downs: int  # all episodes together
    get_ups: int  # knock-downs followed by 1 s of standing that began within 3 s
    get_up_fraction: float | None  # get_ups / knock_downs; None without knock-downs
    standing_fractions: list[float] = field(default_factory=list)  # per episode

    @classmethod
    def of(cls, tasks: list[dict[str, Any]]) -> "StayUpFigures":
        """Totals and means of the episodes' ``info["task"]`` summaries."""
        fractions = [float(t["standing_fraction"]) for t in tasks]
        knock_downs = sum(int(t["knock_downs"]) for t in tasks)
        get_ups = sum(int(t["get_ups"]) for t in tasks)
        return cls(standing_fraction=float(np.mean(fractions)) if fractions else 0.0, knock_downs=knock_downs,
                   get_ups=get_ups, get_up_fraction=get_ups / knock_downs if knock_downs else None,
                   standing_fractions=fractions)

    def line(self) -> str:
        from sim.balance_task import stay_up_line

        return stay_up_line(self.standing_fraction, self.knock_downs, self.get_ups)


@dataclass
class EvalReport:
    """Figures over the evaluated episodes (means over episodes unless named otherwise)."""

    policy: str
    env_id: str
    episodes: int
    seed: int
    success_rate: float
    mean_return: float
    upright_s: float  # tilt below the success rule's 10 degrees
    self_supported_s: float  # string below 10 % of the weight
    mean_tilt_deg: float
    worst_tilt_deg: float  # the worst over all episodes
    mean_string_load: float  # string tension over weight
    action_smoothness: float  # mean squared action change per tick (lower is smoother)
    falls: int
    successes: list[bool] = field(default_factory=list)
    stay_up: StayUpFigures | None = None  # on the stay-up task only

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values; without ``stay_up`` on the other tasks, as before it existed."""
        report = asdict(self)
        if self.stay_up is None:
            del report["stay_up"]
        return report

    def lines(self) -> list[str]:
        return [
            f"{self.policy} on {self.env_id}: {self.episodes} episodes, seeds {self.seed}..{self.seed + self.episodes - 1}",
            f"success {self.success_rate:.2f} ({sum(self.successes)}/{self.episodes}), falls {self.falls}, "
            f"mean return {self.mean_return:.1f}",
            f"upright {self.upright_s:.2f} s, self-supporting {self.self_supported_s:.2f} s per episode; "
            f"tilt mean {self.mean_tilt_deg:.1f} deg, worst {self.worst_tilt_deg:.1f} deg; "
            f"string load {self.mean_string_load:.3f} of the weight; action smoothness {self.action_smoothness:.4f}",
            *([self.stay_up.line()] if self.stay_up is not None else []),
        ]


def evaluate_policy(policy: Any, episodes: int = 30, seed: int = EVAL_SEED, env_id: str | None = None,
                    env_kwargs: dict[str, Any] | None = None, name: str | None = None,
                    progress: Callable[[int], None] | None = None) -> EvalReport:
    """Run ``policy`` greedily on ``episodes`` seeded episodes of the balance task (Box actions).

    The env moves the servos by the policy's contract (``policy.spec``: its action scale and
    stance); ``env_kwargs`` without a ``config`` get the task of ``env_id`` (the balance task
    for an id of no task) with it, and one whose config holds another contract is an error,
    not a silently different robot."""
    import gymnasium as gym

    import sim.envs  # noqa: F401  (registers the env ids)
    from sim.balance_task import BALANCE_TASK_ENV_ID, TASK_ENV_IDS
    from sim.env import TASK_CONFIGS

    env_id = env_id or BALANCE_TASK_ENV_ID
    env_kwargs = dict(env_kwargs or {})
    spec = getattr(policy, "spec", None)
    if spec is not None:
        if "config" not in env_kwargs:
            task = next((name for name, ids in TASK_ENV_IDS.items() if env_id in ids), "balance")
            env_kwargs["config"] = TASK_CONFIGS[task](obs_spec=spec)
        elif env_kwargs["config"].obs_spec != spec:
            raise ValueError(f"{getattr(policy, 'name', 'policy')}: the env's contract {env_kwargs['config'].obs_spec} "
                             f"is not the policy's {spec}")
    env = gym.make(env_id, **env_kwargs).unwrapped  # the env's own truncation, no wrappers
    returns, tasks, smooth = [], [], []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            policy.reset()
            total, prev, rate_sum, steps = 0.0, None, 0.0, 0
            while True:
                action = np.clip(np.nan_to_num(np.asarray(policy.act(obs), dtype=np.float64)), -1.0, 1.0)
                if prev is not None:
                    rate_sum += float(np.sum((action - prev) ** 2))
                prev = action
                obs, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                steps += 1
                if terminated or truncated:
                    break
            returns.append(total)
            tasks.append(info["task"])
            smooth.append(rate_sum / max(steps - 1, 1))
            if progress is not None:
                progress(i + 1)
    finally:
        env.close()
    successes = [bool(t["success"]) for t in tasks]
    return EvalReport(
        policy=name or getattr(policy, "identity", type(policy).__name__), env_id=env_id, episodes=episodes,
        seed=seed, success_rate=float(np.mean(successes)) if episodes else 0.0,
        mean_return=float(np.mean(returns)) if episodes else 0.0,
        upright_s=_mean(tasks, "upright_s"), self_supported_s=_mean(tasks, "self_supported_s"),
        mean_tilt_deg=_mean(tasks, "mean_tilt_deg"),
        worst_tilt_deg=float(max((t["worst_tilt_deg"] for t in tasks), default=0.0)),
        mean_string_load=_mean(tasks, "mean_string_load"), action_smoothness=float(np.mean(smooth)) if smooth else 0.0,
        falls=sum(bool(t["fell"]) for t in tasks), successes=successes,
        stay_up=StayUpFigures.of(tasks) if tasks and "standing_fraction" in tasks[0] else None,
    )


def _mean(tasks: list[dict[str, Any]], key: str) -> float:
    return float(np.mean([t[key] for t in tasks])) if tasks else 0.0


@dataclass
class EnvEvalReport:
    """A checkpoint on a plain gymnasium env: returns of greedy episodes."""

    policy: str
    env_id: str
    episodes: int
    seed: int
    mean_return: float
    std_return: float
    returns: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        return [f"{self.policy} on {self.env_id}: {self.episodes} episodes, seeds {self.seed}..",
                f"mean return {self.mean_return:.1f} +- {self.std_return:.1f}"]


def evaluate_on_env(runtime: Any, env_id: str, episodes: int = 10, seed: int = EVAL_SEED,
                    box_bins: int | None = None, name: str | None = None) -> EnvEvalReport:
    """Greedy episodes of a step runtime on ``env_id``, through the same action coding as training."""
    from policies.actors import action_coding, make_env

    env = make_env(env_id)
    coding = action_coding(env_id, env.observation_space, env.action_space, box_bins or runtime.arch.n_bins)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            state = runtime.initial_state()
            total = 0.0
            while True:
                q, state = runtime.step(np.asarray(obs, dtype=np.float32), state)
                obs, reward, terminated, truncated, _ = env.step(coding.to_env(np.argmax(q, axis=-1)))
                total += float(reward)
                if terminated or truncated:
                    break
            returns.append(total)
    finally:
        env.close()
    return EnvEvalReport(name or getattr(runtime, "identity", "runtime"), env_id, episodes, seed,
                         float(np.mean(returns)), float(np.std(returns)), returns)

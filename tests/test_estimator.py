"""The learner's estimator on data whose answer is known: no preference for what the behaviour does.

The synthetic case of the shipped policy's training (b6): the stance bin is taken on 99.2 % of
joint-steps, the reward (~3 per tick, the alive and standing terms) does not depend on the
action at all, so every bin of every joint is worth the same. A learner that reads a gap between
the taken bin and the others out of such data invents it. Before return centring the real
``Learner.update`` learned gaps of 1.5-2.5 h-units here (with its value still at 60 of a true
150); the test keeps that configuration as the control that shows the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from policies.qlearning import Learner, QLearningConfig
from policies.sequence_replay import SequenceBuilder

OFF_STANCE = 0.008  # fraction of joint-steps that explore another bin (b6's training)
UPDATES = 300  # past the first target copy (every 250), where the old learner's gap jumps


def _learner_on_stance_data(tmp_path: Path, **overrides) -> Learner:
    cfg = QLearningConfig(gamma=0.98, n_step=10, lr=2e-4, target_update_every=250, seed=0, **overrides)
    learner = Learner(cfg, tmp_path)
    rng = np.random.default_rng(0)
    n_act, n_bins, obs_dim = learner.arch.n_actions, learner.arch.n_bins, learner.arch.obs_dim
    stance = n_bins // 2
    levels = np.linspace(-1.0, 1.0, n_bins)
    history = np.zeros(((obs_dim - 6) // n_act, n_act), np.float32)
    state = learner.online.initial_state(1)[0].numpy()

    def observe() -> np.ndarray:
        gravity = np.array([0.0, 0.0, -1.0]) + rng.normal(0.0, 0.03, 3)
        return np.concatenate([gravity, rng.normal(0.0, 0.1, 3), history.reshape(-1)]).astype(np.float32)

    builder = SequenceBuilder(learner.layout)
    builder.start_episode(observe(), state)
    n_steps = 12_000
    for t in range(n_steps):
        action = np.full(n_act, stance)
        explore = rng.random(n_act) < OFF_STANCE
        action[explore] = rng.integers(0, n_bins, explore.sum())
        history[1:], history[0] = history[:-1], levels[action]
        for seq in builder.add(action, 3.0 + rng.normal(0.0, 0.3), observe(), state, False, t == n_steps - 1):
            learner.replay.add(seq)
    return learner


def _learned_gap(learner: Learner) -> float:
    """Mean over joints and replayed steps of Q_j(stance bin) - mean of Q_j(other bins), in h-units."""
    _, batch, _ = learner.replay.sample(64, 0.0, prioritized=False)
    with torch.no_grad():
        q, _ = learner.online.forward_sequence(torch.from_numpy(batch["obs"]), torch.from_numpy(batch["start_state"]))
    stance = learner.arch.n_bins // 2
    others = torch.cat([q[..., :stance], q[..., stance + 1:]], -1)
    return float((q[..., stance] - others.mean(-1)).mean())


def _train(learner: Learner) -> float:
    for _ in range(UPDATES):
        learner.update()
    return _learned_gap(learner)


def test_no_gap_is_learned_where_the_data_has_none(tmp_path: Path) -> None:
    learner = _learner_on_stance_data(tmp_path)
    gap = _train(learner)
    assert abs(gap) < 0.2, f"learned a {gap:.2f} h-unit preference for the taken bin out of action-free rewards"
    assert learner.state.return_offset == pytest.approx(3.0 / 0.02, rel=0.02)


def test_the_uncentred_learner_invents_the_gap(tmp_path: Path) -> None:
    """The control: without return centring the same data gives the artefact this fixes."""
    learner = _learner_on_stance_data(tmp_path, center_returns=False, normalize_observations=False)
    assert _train(learner) > 1.0

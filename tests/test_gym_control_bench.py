"""bench/gym_control.py's mechanics: SB3 stops at its wall-clock budget; the table's medians and verdict.

Scores are not checked here (that is the benchmark itself, docs/learning.md).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def gym_control():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling bench/cartpole.py, as when run
    try:
        spec = importlib.util.spec_from_file_location("bench_gym_control", BENCH / "gym_control.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_sb3_learns_until_its_budget_only(gym_control):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, seed=0, verbose=0)
    t0 = time.monotonic()
    model.learn(total_timesteps=10**9, callback=gym_control.sb3_budget(2.0))
    assert 2.0 <= time.monotonic() - t0 < 30.0 and 0 < model.num_timesteps < 10**9


def test_table_medians_and_the_verdict(gym_control):
    results = [{"learner": "robotd", "seed": s, "return": r, "return_last": r - 10, "env_steps": 1000}
               for s, r in ((0, 700.0), (1, 900.0), (2, 800.0))]
    results += [{"learner": "sb3-sac", "seed": s, "return": 1000.0, "env_steps": 500} for s in (0, 1, 2)]
    results += [{"learner": "sb3-ppo", "seed": s, "return": 600.0 + s, "env_steps": 9000} for s in (0, 1, 2)]
    table = gym_control.markdown_table(results, [0, 1, 2])
    assert "| robotd | 700 (last 690) | 900 (last 890) | 800 (last 790) | 800 | 1000 |" in table
    assert "robotd / best peer (medians) = 0.80; target >= 0.8: reached" in table
    results[1]["return"] = 100.0  # robotd's median falls to 700
    assert "= 0.70; target >= 0.8: not reached" in gym_control.markdown_table(results, [0, 1, 2])

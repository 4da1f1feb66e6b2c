"""bench/learners.py's mechanics: the SB3 budget-and-validation callback, resuming, the table.

Scores are not checked here (that is the benchmark itself): these check that SB3 stops when its
wall-clock budget is spent and keeps a validated ``best``, that a rerun skips finished pairs
and refuses a results file of another experiment, and the table's medians and ratios.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "learners.py"


@pytest.fixture(scope="module")
def learners():
    spec = importlib.util.spec_from_file_location("bench_learners", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sb3_stops_at_its_budget_and_keeps_the_best_validated_model(learners, tmp_path):
    sb3 = pytest.importorskip("stable_baselines3")
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    spec = learners.sb3_obs_spec(learners.config_values())
    env = make_vec_env(learners.make_task_env, n_envs=1, seed=0,
                       env_kwargs={"env_kwargs": learners.task_env_kwargs(spec)})
    model = sb3.PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0, verbose=0)
    callback = learners.sb3_callback(budget_s=4.0, every_s=1.0, episodes=1, spec=spec, best_path=tmp_path / "best.zip")
    t0 = time.monotonic()
    model.learn(total_timesteps=100_000, callback=callback)
    env.close()
    assert model.num_timesteps < 100_000 and time.monotonic() - t0 < 30.0  # the budget stopped it
    assert callback.evals >= 1 and callback.best[0] >= 0.0
    best = learners.Sb3Policy(sb3.PPO.load(tmp_path / "best.zip", device="cpu"), spec, "best")
    report = learners.run_episodes(best, 1, learners.EVAL_SEED)
    assert report.episodes == 1 and 0.0 <= report.success_rate <= 1.0
    assert 0 < learners.best_env_steps("sb3-ppo", tmp_path) <= model.num_timesteps  # read back from the zip


SHIPPED = "bench/balance_runs/b6.toml"


def _result(row, seed, success, best=True, minutes=4.0, episodes=100, env_steps=1000, config=SHIPPED, best_at=0):
    figures = {"success": success, "mean_tilt_deg": 2.0 * success, "mean_return": 1000.0}
    if row in ("hold", "pd", "balance"):
        return {"row": row, "seed": None, "episodes": episodes, "config": config, "minutes": None, "env_steps": 0,
                "val_evals": 0, "test": {"policy": figures}}
    return {"row": row, "seed": seed, "episodes": episodes, "config": config, "minutes": minutes,
            "env_steps": env_steps, "val_evals": 7, "best_env_steps": best_at if best else None,
            "test": {"best": figures if best else None, "last": {**figures, "success": success / 2}}}


def test_every_trained_row_acts_around_the_configs_stance(learners):
    """SB3's Box action zero holds the stance our learner's middle bin holds, at the same scale."""
    import numpy as np

    from calibration import JOINT_NAMES

    values = learners.config_values()
    spec = learners.sb3_obs_spec(values)
    assert spec.action_scale_rad == values["action_scale_rad"]
    offsets = spec.targets_rad(np.zeros(len(spec.controlled_joints)), np.zeros(len(JOINT_NAMES)))
    for i, joint in zip(spec.joint_index, spec.controlled_joints):
        assert offsets[i] == pytest.approx(values["stance_rad"].get(joint, 0.0))
    assert np.count_nonzero(offsets) == len(values["stance_rad"])


def test_a_rerun_skips_the_finished_pairs_and_runs_the_baselines_once(learners):
    done = [_result("sb3-ppo", 0, 0.5), _result("hold", None, 0.75)]
    plan = learners.planned_runs(["sb3-ppo", "robotd-gru", "hold", "pd"], [0, 1], done)
    assert plan == [("sb3-ppo", 1), ("robotd-gru", 0), ("robotd-gru", 1), ("pd", None)]


def test_a_results_file_of_another_budget_is_refused(learners, tmp_path):
    done = [_result("sb3-sac", 0, 0.5, minutes=2.0)]
    shipped = learners.SHIPPED_CONFIG
    with pytest.raises(SystemExit, match="--minutes 2.0"):
        learners.check_same_experiment(done, 4.0, 100, shipped, tmp_path / "results.jsonl")
    learners.check_same_experiment(done, 2.0, 100, shipped, tmp_path / "results.jsonl")


def test_a_results_file_of_another_config_is_refused(learners, tmp_path):
    """Lines without a config (written before it was recorded) were b5's, at the nominal stance."""
    old = _result("sb3-ppo", 0, 0.5)
    del old["config"]
    b5 = learners.REPO / "bench" / "balance_runs" / "b5.toml"
    with pytest.raises(SystemExit, match="b5.toml"):
        learners.check_same_experiment([old], 4.0, 100, learners.SHIPPED_CONFIG, tmp_path / "results.jsonl")
    learners.check_same_experiment([old], 4.0, 100, b5, tmp_path / "results.jsonl")


def test_table_gives_median_range_and_ratio_to_hold(learners):
    results = [_result("robotd-rwkv4", s, v, best_at=a) for s, v, a in ((0, 0.8, 0), (1, 0.6, 50_000), (2, 0.9, 0))]
    results += [_result("sb3-sac", 0, 0.3, best=False), _result("hold", None, 0.75), _result("pd", None, 0.25)]
    table = learners.markdown_table(results).splitlines()
    row = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in table[2:]}
    best = row[("robotd-rwkv4", "best")].split("|")
    assert [c.strip() for c in best[3:9]] == ["0.80", "0.60", "0.90", "**0.80**", "0.60–0.90", "1.6°"]
    assert best[10].strip() == f"{0.8 / 0.75:.2f}" and best[11].strip() == "7" and best[12].strip() == "0, 50,000, 0"
    assert "**0.40**" in row[("robotd-rwkv4", "last")]  # last: 0.40, 0.30, 0.45
    assert row[("sb3-sac", "best")].split("|")[3].strip() == "—"  # no validation eval: no best
    assert "**0.25**" in row[("pd", "—")] and row[("pd", "—")].split("|")[-4].strip() == f"{0.25 / 0.75:.2f}"

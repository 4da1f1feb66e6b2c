"""The stay-up task: its scorer on synthetic tilt/load traces, its pushes, its env and its report.

The scorer (:class:`sim.balance_task.StayUpScore`) is the one definition of "standing",
"knock-down" and "get-up" for ``robotd eval --task stay-up`` and the simulated robot's ground
truth, so its rules are pinned here tick by tick, edge cases included.
"""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest

import sim.envs  # noqa: F401  (registers the env ids)
from calibration import load_calibration
from policies.evaluation import evaluate_policy
from robotd.daemon.policy_select import load_policy
from sim.balance_task import (STAY_UP_PUSHES, STAY_UP_TASK_DISCRETE_ENV_ID, STAY_UP_TASK_ENV_ID, TASK_ENV_IDS,
                              PushModel, StayUpScore)
from sim.env import TASK_CONFIGS, stay_up_task_config

HZ = 50.0
EPISODE_TICKS = 1500  # the task's 30 s at 50 Hz
UP = (1.0, 0.0)  # (up_z, string load): upright and self-supported
TILTED = (math.cos(math.radians(25.0)), 0.0)  # on its feet, leaning 25 degrees
HANGING = (1.0, 0.15)  # upright, but the string carries 15 % of the weight
Segment = tuple[float, tuple[float, float]]  # (seconds, (up_z, load))


def _score(segments: list[Segment], episode_ticks: int | None = EPISODE_TICKS,
           fell_at_end: bool = False) -> dict[str, float | int]:
    score = StayUpScore(HZ, episode_ticks)
    trace = [sample for seconds, sample in segments for _ in range(round(seconds * HZ))]
    for i, (up_z, load) in enumerate(trace):
        score.add(up_z, load, fell_at_end and i == len(trace) - 1)
    return score.summary()


@pytest.mark.parametrize("segments, knock_downs, get_ups, standing_s", [
    ([(30.0, UP)], 0, 0, 26.0),
    # Not standing before t = 4 s is the lowering, not a knock-down.
    ([(3.9, TILTED), (26.1, UP)], 0, 0, 26.0),
    # A dip shorter than 0.5 s costs time standing but is no knock-down.
    ([(10.0, UP), (0.48, TILTED), (19.52, UP)], 0, 0, 26.0 - 0.48),
    # Knocked down for 1 s, then up for good: one get-up.
    ([(10.0, UP), (1.0, TILTED), (19.0, UP)], 1, 1, 25.0),
    # The string counts: upright but hanging on it is not standing.
    ([(10.0, UP), (1.0, HANGING), (19.0, UP)], 1, 1, 25.0),
    # Back up 3.0 s after the knock-down began: still in time.
    ([(10.0, UP), (3.0, TILTED), (17.0, UP)], 1, 1, 23.0),
    # Back up 3.1 s after it began: too late, however long it then stands.
    ([(10.0, UP), (3.1, TILTED), (16.9, UP)], 1, 0, 26.0 - 3.1),
    # Back up within 3 s but only for 0.9 s, then a short dip: the second run begins 3.1 s after
    # the knock-down's start, too late.
    ([(10.0, UP), (2.0, TILTED), (0.9, UP), (0.2, TILTED), (16.9, UP)], 1, 0, 26.0 - 2.2),
    # ... and the same with the second run beginning 1.7 s after the start: a get-up.
    ([(10.0, UP), (1.0, TILTED), (0.5, UP), (0.2, TILTED), (18.3, UP)], 1, 1, 26.0 - 1.2),
    # Two knock-downs; the second one's get-up does not count for the first.
    ([(8.0, UP), (4.0, TILTED), (2.0, UP), (0.6, TILTED), (15.4, UP)], 2, 1, 26.0 - 4.6),
    # Not standing when judging begins: a knock-down from t = 4 s, got up from 2 s later.
    ([(6.0, TILTED), (24.0, UP)], 1, 1, 24.0),
    # Up again at the very end, but for less than the 1 s a get-up needs.
    ([(28.2, UP), (1.0, TILTED), (0.8, UP)], 1, 0, 25.0),
])
def test_knock_downs_and_get_ups_on_synthetic_traces(segments: list[Segment], knock_downs: int, get_ups: int,
                                                     standing_s: float) -> None:
    assert sum(seconds for seconds, _ in segments) == pytest.approx(30.0)
    summary = _score(segments)
    assert (summary["knock_downs"], summary["get_ups"], summary["falls"]) == (knock_downs, get_ups, 0)
    assert summary["judged_s"] == pytest.approx(26.0)
    assert summary["standing_fraction"] == pytest.approx(standing_s / 26.0)


def test_an_episode_ended_by_a_fall_is_scored_as_lying_to_its_end() -> None:
    # Standing until 10 s, then 0.2 s leaning and the fall rule fires: the env ends the episode.
    summary = _score([(10.0, UP), (0.2, TILTED)], fell_at_end=True)
    assert summary == {"standing_fraction": pytest.approx(6.0 / 26.0), "judged_s": pytest.approx(26.0),
                       "knock_downs": 1, "get_ups": 0, "falls": 1}
    # Ended before judging began: all 26 s lost, one knock-down.
    early = _score([(2.0, TILTED)], fell_at_end=True)
    assert (early["standing_fraction"], early["judged_s"], early["knock_downs"]) == (0.0, 26.0, 1)


def test_an_open_ended_run_is_judged_over_the_ticks_fed() -> None:
    summary = _score([(6.0, UP), (0.3, TILTED)], episode_ticks=None)
    assert summary["judged_s"] == pytest.approx(2.3)
    assert summary["standing_fraction"] == pytest.approx(2.0 / 2.3)
    assert summary["knock_downs"] == 0  # 0.3 s so far, and nothing says the run is over
    assert _score([(3.0, UP)], episode_ticks=None)["standing_fraction"] == 0.0  # nothing judged yet


def test_a_run_of_fall_rule_ticks_is_one_fall() -> None:
    score = StayUpScore(HZ)
    for fell in (False, True, True, False, True, True, True, False):
        score.add(*TILTED, fell)
    assert score.summary()["falls"] == 2


def test_the_first_push_at_four_seconds_then_every_two_to_four() -> None:
    pushes = STAY_UP_PUSHES.schedule(np.random.default_rng(7), 30.0)
    starts = np.array([p.start_s for p in pushes])
    assert starts[0] == 4.0 and starts[-1] < 30.0 and starts[-1] + 4.0 >= 30.0
    assert np.all((np.diff(starts) >= 2.0) & (np.diff(starts) <= 4.0))
    assert all(0.0 <= p.magnitude_n <= 12.0 and p.duration_s == 0.1 for p in pushes)
    # Without first_push_s the first start is one interval draw, as the simulated robot always had.
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert PushModel(interval_s=(2.5, 3.5)).schedule(rng_a, 10.0)[0].start_s == 2.5 + rng_b.uniform() * 1.0


def test_the_task_is_registered_beside_the_balance_task() -> None:
    assert TASK_ENV_IDS["stay-up"] == (STAY_UP_TASK_ENV_ID, STAY_UP_TASK_DISCRETE_ENV_ID)
    assert TASK_CONFIGS["stay-up"] is stay_up_task_config
    cfg = stay_up_task_config()
    assert (cfg.episode_s, cfg.pushes, cfg.string_let_out) == (30.0, STAY_UP_PUSHES, TASK_CONFIGS["balance"]().string_let_out)
    env = gym.make(STAY_UP_TASK_DISCRETE_ENV_ID).unwrapped
    assert env.config == cfg and isinstance(env.action_space, gym.spaces.MultiDiscrete)
    env.close()


@pytest.fixture(scope="module")
def hold_reports() -> dict[str, dict]:
    hold = load_policy("hold", load_calibration())
    return {task: evaluate_policy(hold, 2, 1000, TASK_ENV_IDS[task][0]).to_dict() for task in ("balance", "stay-up")}


def test_eval_reports_the_stay_up_figures_from_the_env_episodes(hold_reports: dict[str, dict]) -> None:
    report = hold_reports["stay-up"]
    assert report["env_id"] == STAY_UP_TASK_ENV_ID
    stay_up = report["stay_up"]
    env = gym.make(STAY_UP_TASK_ENV_ID, config=stay_up_task_config()).unwrapped
    tasks = []
    for seed in (1000, 1001):  # hold's action is zero: the env's own episodes, summed by hand
        env.reset(seed=seed)
        while True:
            _, _, terminated, truncated, info = env.step(np.zeros(env.action_space.shape))
            if terminated or truncated:
                tasks.append(info["task"])
                break
    env.close()
    assert stay_up["standing_fractions"] == [t["standing_fraction"] for t in tasks]
    assert stay_up["standing_fraction"] == pytest.approx(np.mean(stay_up["standing_fractions"]))
    assert stay_up["knock_downs"] == sum(t["knock_downs"] for t in tasks) >= stay_up["get_ups"]
    assert report["falls"] == sum(t["falls"] for t in tasks)
    json.dumps(report)


def test_balance_task_reports_keep_their_fields(hold_reports: dict[str, dict]) -> None:
    assert list(hold_reports["balance"]) == [
        "policy", "env_id", "episodes", "seed", "success_rate", "mean_return", "upright_s", "self_supported_s",
        "mean_tilt_deg", "worst_tilt_deg", "mean_string_load", "action_smoothness", "falls", "successes"]

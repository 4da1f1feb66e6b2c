"""What a trained Q-network believes along its own greedy episodes of the balance task.

For each decision (every tick, or every ``decision_ticks`` ticks, on the robot the checkpoint's
contract describes: its stance and action scale): the predicted value (h^-1 of the mean over
joints of each joint's best Q, plus the run's return offset when it centred its returns), the realised discounted return from that decision, the reward,
the true tilt, and per joint how far the second-best bin is below the best (small margins = a
greedy choice decided by noise).

    python bench/q_diagnostics.py runs/balance/last.safetensors [--seeds 1000 1001] [--every 50]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from policies.qlearning import inverse_value_rescale
from policies.runtime import load_runtime
from sim.observation import DecisionHold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--gamma", type=float, default=None, help="default: the run's config")
    args = parser.parse_args()
    import gymnasium as gym

    import sim.envs  # noqa: F401
    from sim.balance_task import BALANCE_TASK_ENV_ID
    from sim.env import balance_task_config

    runtime = load_runtime(args.checkpoint)
    gamma = args.gamma or runtime.meta.training.get("config", {}).get("gamma", 0.98)
    offset = float(runtime.meta.training.get("return_offset", 0.0))  # c of centred returns (0: not centred)
    # The robot the policy was trained on: its contract (action scale, stance, decision ticks).
    spec = runtime.meta.spec
    env = gym.make(BALANCE_TASK_ENV_ID, config=balance_task_config(obs_spec=spec)).unwrapped
    middle_bin = runtime.arch.n_bins // 2  # action zero: the stance (or the nominal pose)
    for seed in args.seeds:
        obs, _ = env.reset(seed=seed)
        state = runtime.initial_state()
        rows = []  # one per decision; gamma and n-step are per decision too
        hold = DecisionHold(spec.decision_ticks)  # the robot's rule: bins held between decisions
        done = False
        while not done:  # one env tick per pass; a decision's row when it ends, its ticks' rewards summed
            if hold.due:
                q, state = runtime.step(obs, state)
                ordered = np.sort(q, axis=1)
                value = offset + float(inverse_value_rescale(torch.tensor(float(ordered[:, -1].mean()))))
                action, reward = runtime.greedy_action(q), 0.0
            obs, tick_reward, terminated, truncated, info = env.step(action)
            hold.advance()
            reward += float(tick_reward)
            done = terminated or truncated
            if done or hold.due:
                tilt = float(np.degrees(np.arccos(min(1.0, info["torso_up_z"]))))
                rows.append((value, reward, tilt, ordered[:, -1] - ordered[:, -2],
                             bool(np.all(q.argmax(1) == middle_bin))))
        ret, acc = np.zeros(len(rows)), 0.0
        for i in reversed(range(len(rows))):
            acc = rows[i][1] + gamma * acc
            ret[i] = acc
        for t in range(0, len(rows), args.every):
            value, reward, tilt, margin, is_hold = rows[t]
            print(f"seed {seed} decision {t:3d}: predicted {value:6.1f}  realised {ret[t]:6.1f}  reward {reward:5.2f}  "
                  f"tilt {tilt:5.1f} deg  greedy==middle bin {is_hold}  margin to 2nd bin "
                  f"min {margin.min():.3f} median {np.median(margin):.3f}")


if __name__ == "__main__":
    main()

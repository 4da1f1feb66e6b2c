"""How a policy holds up: success against push magnitude, servo dead time and phone latency.

Every point is ``evaluate_policy`` on the same seeded episodes of the balance task (seeds from
1000) with one thing fixed instead of drawn:

* push tolerance: all three pushes of an episode at one magnitude, 0..15 N in 2.5 N steps;
* servo dead time: 80, 120, 160, 200, 250 ms (what ``robotd calibrate latency`` measures);
* phone latency: 10, 25, 40, 60 ms.

    python bench/robustness.py --policies hold pd policies/trained/balance.safetensors \\
        [--episodes 30] [--out docs/img/robustness.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from calibration import load_calibration
from policies.evaluation import EVAL_SEED, evaluate_policy
from robotd.daemon.policy_select import load_policy
from sim.balance_task import BALANCE_TASK_ENV_ID, PushModel
from sim.env import balance_task_config
from sim.phone_model import PhoneConfig

PUSH_N = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0]
DEAD_TIME_MS = [80.0, 120.0, 160.0, 200.0, 250.0]
PHONE_LATENCY_MS = [10.0, 25.0, 40.0, 60.0]


def sweeps(spec) -> dict[str, list[tuple[float, object]]]:
    base = balance_task_config(obs_spec=spec)
    return {
        "push magnitude (N)": [(f, replace(base, pushes=PushModel(force_n=(f, f)))) for f in PUSH_N],
        "servo dead time (ms)": [(ms, replace(base, randomization=replace(base.randomization,
                                                                          actuator_delay_ms=(ms, ms))))
                                 for ms in DEAD_TIME_MS],
        "phone latency (ms)": [(ms, replace(base, phone=replace(PhoneConfig(), latency_ms=(ms, ms))))
                               for ms in PHONE_LATENCY_MS],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["hold", "pd"])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--out", type=Path, default=Path("robustness.png"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cal = load_calibration()
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name in args.policies:
        policy = load_policy(name, cal)
        results[name] = {}
        for axis, points in sweeps(policy.spec).items():
            row = []
            for x, config in points:
                report = evaluate_policy(policy, args.episodes, args.seed, BALANCE_TASK_ENV_ID,
                                         {"config": config, "calibration": cal}, name=name)
                row.append((x, report.success_rate))
                print(f"{name:>40}  {axis:<22} {x:6.1f}: success {report.success_rate:.2f}", flush=True)
            results[name][axis] = row
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_names = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(axes_names), figsize=(5 * len(axes_names), 3.8))
    for ax, axis in zip(np.atleast_1d(axes), axes_names):
        for name, by_axis in results.items():
            xs, ys = zip(*by_axis[axis])
            ax.plot(xs, ys, "o-", label=Path(name).stem if name.endswith(".safetensors") else name)
        ax.set_xlabel(axis)
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"balance task, {args.episodes} episodes per point (seeds {args.seed}..)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The real daemon against the simulated robot: the learned policy beside ``pd`` and ``hold``.

    python bench/daemon_runs.py                                  # 3 policies x 5 runs x 60 s (~17 min)
    python bench/daemon_runs.py --duration 5 --runs 1 --policies balance hold   # a quick check

Each run is ``robotd run --port sim --duration S --policy P --sim-seed K --sim-report ...
--log OUT/P-K.log`` in its own process, one after the other: the default simulated robot, its
string slack (3 cm longer than taut when standing, so it only catches a fall) and random
pushes on the torso (0..8 N for 0.1 s, every 2.5-3.5 s). Run ``K`` has sim seed ``K`` for every
policy, so the policies meet the same pushes at the same times and the same phone.

Per run, from the simulator's ground truth (``--sim-report``): time upright (< 10 deg, the
whole run including the start-up move), mean and worst tilt, falls (> 45 deg), mean string
tension, pushes; from the daemon's latency log (``robotd.commands.replay``'s report): the ``policy``
stage p50/p99 over the ticks that ran the policy (safety mode ``run``), tick_us p99 over all
ticks, overruns and the daemon's own fall count.

The step runtime's cost is measured in the same bench run, in this process before the runs,
call by call (p50/p99): the checkpoint runtime's ``runtime.step`` alone, and the loop's whole
policy stage (``PolicyTick.step``: observation, act, history push), for every policy; each back
to back (warm caches, what bench/policy_step.py reports) and paced, one call per 20 ms loop
period with the process idle in between, as the daemon calls it. The ratio of the loop's
``policy`` stage (the same code beside the receiver and log threads and the simulator's
process) to each says what running inside the loop costs on top.

Prints a markdown table per policy (each run, the median and the worst over runs) and writes
``OUT/daemon_runs.json`` (every figure, the push magnitudes each seed had, the costs).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from daemon_harness import free_udp_port  # noqa: E402

from calibration import load_calibration  # noqa: E402
from robotd.daemon.run import RunConfig  # noqa: E402
from robotd.logs.logread import read_log  # noqa: E402
from robotd.daemon.policy_select import load_policy  # noqa: E402
from robotd.daemon.policy_tick import PolicyTick  # noqa: E402
from robotd.commands.replay import Percentiles, build_report  # noqa: E402
from sim.robot_process import SimRobotConfig, push_rng  # noqa: E402

#: Per-run figures, with how to pick the worst of several runs (min or max) and the table's format.
COLUMNS: dict[str, tuple[str, Any, str]] = {
    "upright_fraction": ("upright", min, "{:.3f}"),
    "upright_s": ("upright s", min, "{:.1f}"),
    "mean_tilt_deg": ("mean tilt °", max, "{:.1f}"),
    "worst_tilt_deg": ("worst tilt °", max, "{:.1f}"),
    "falls": ("falls", max, "{:d}"),
    "daemon_falls": ("daemon falls", max, "{:d}"),
    "mean_string_tension_n": ("string N", max, "{:.2f}"),
    "pushes": ("pushes", min, "{:d}"),
    "max_push_n": ("max push N", max, "{:.1f}"),
    "overruns": ("overruns", max, "{:d}"),
    "policy_us_p50": ("policy p50 µs", max, "{:.0f}"),
    "policy_us_p99": ("policy p99 µs", max, "{:.0f}"),
    "tick_us_p99": ("tick p99 µs", max, "{:.0f}"),
}


def label_of(policy: str) -> str:
    """A file-name-safe label for a ``--policy`` value (a name, ``pd:...`` or a checkpoint path)."""
    name = Path(policy).stem if policy.endswith(".safetensors") else policy
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def per_call_us(call: Callable[[], object], calls: int, pause_s: float = 0.0) -> dict[str, float]:
    """p50/p99 µs of ``call``, timed call by call after a warm-up (JIT compile, caches); with
    ``pause_s``, idle that long before each call, as the loop is between ticks."""
    for _ in range(200):
        call()
    times_ns = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        if pause_s:
            time.sleep(pause_s)
        t0 = clock()
        call()
        times_ns[i] = clock() - t0
    p50, p99 = np.percentile(times_ns / 1e3, [50, 99]).tolist()
    return {"p50": p50, "p99": p99, "calls": calls}


def step_costs(policy_spec: str, calls: int, paced_calls: int, period_s: float) -> dict[str, dict[str, float]]:
    """The policy's cost outside the loop, in this process: ``policy_tick`` is the loop's whole
    policy stage (:class:`PolicyTick`: observation, act, history), ``runtime_step`` the
    checkpoint runtime's ``step`` alone (absent for pd, hold, ...); each back to back and
    ``*_paced``, one call per loop period with the process idle in between (cold caches)."""
    policy = load_policy(policy_spec, load_calibration(None), warn=False)
    spec = policy.spec
    tick = PolicyTick(policy, spec)
    quat, gyro = np.array([0.998, 0.04, -0.03, 0.01]), np.array([0.05, -0.02, 0.01])
    start = np.zeros(spec.n_actions)
    calls_by_name: dict[str, Callable[[], object]] = {"policy_tick": lambda: tick.step(True, quat, gyro, lambda: start)}
    runtime = getattr(policy, "runtime", None)
    if runtime is not None:
        obs = np.random.default_rng(0).standard_normal(runtime.arch.obs_dim).astype(np.float32)
        state = runtime.initial_state()
        calls_by_name["runtime_step"] = lambda: runtime.step(obs, state, out_state=state)
    costs = {}
    for name, call in calls_by_name.items():
        costs[name] = per_call_us(call, calls)
        costs[f"{name}_paced"] = per_call_us(call, paced_calls, pause_s=period_s)
    return costs


def one_run(policy: str, seed: int, duration_s: float, out_dir: Path) -> dict[str, Any]:
    """One ``robotd run --port sim`` and its figures (ground truth + latency log)."""
    stem = f"{label_of(policy)}-{seed}"
    log_path, truth_path = out_dir / f"{stem}.log", out_dir / f"{stem}.truth.json"
    cmd = [sys.executable, "-m", "robotd.cli", "run", "--port", "sim", "--duration", f"{duration_s:g}",
           "--policy", policy, "--sim-seed", str(seed), "--sim-report", str(truth_path), "--log", str(log_path),
           "--udp", f"127.0.0.1:{free_udp_port()}"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=duration_s + 180)
    wall_s = time.monotonic() - t0
    (out_dir / f"{stem}.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not truth_path.exists():
        raise RuntimeError(f"{' '.join(cmd)} ended with {proc.returncode}:\n{proc.stderr[-2000:]}")
    truth = json.loads(truth_path.read_text())
    pushes = SimRobotConfig().pushes  # what robotd run --port sim pushes with; its seed's schedule:
    planned = pushes.schedule(push_rng(seed), truth["sim_time_s"]) if pushes is not None else []
    log = read_log(log_path)
    report = build_report(log)
    # Only the ticks that ran the policy: on the others (start-up move, fallen) the stage is a no-op.
    policy_us = Percentiles.of(log.stages_us["policy"][log.mode_is("run")])
    summary = log.summary or {}
    return {
        "policy": policy, "seed": seed, "log": str(log_path), "wall_s": wall_s,
        "sim_time_s": truth["sim_time_s"],
        "upright_s": truth["upright_s"],
        "upright_fraction": truth["upright_s"] / truth["sim_time_s"] if truth["sim_time_s"] > 0 else 0.0,
        "mean_tilt_deg": truth["mean_tilt_deg"],
        "worst_tilt_deg": truth["worst_tilt_deg"],
        "falls": truth["falls"],
        "pushes": truth["pushes"],
        "push_magnitudes_n": [p.magnitude_n for p in planned],
        "max_push_n": max((p.magnitude_n for p in planned), default=0.0),
        "mean_string_tension_n": truth["mean_string_tension_n"],
        "late_chunks": truth["late_chunks"],
        "daemon_falls": summary.get("falls"),
        "overruns": summary.get("overruns"),
        "policy_us_p50": policy_us.p50,
        "policy_us_p99": policy_us.p99,
        "policy_ticks": policy_us.n,
        "tick_us_p99": report.latency_us["tick"].p99,
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median and worst over runs of every column (a column a run lacks is left out)."""
    out: dict[str, dict[str, float]] = {"median": {}, "worst": {}}
    for key, (_, worst, _) in COLUMNS.items():
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out["median"][key] = statistics.median(values)
            out["worst"][key] = worst(values)
    return out


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    fmt = COLUMNS[key][2]
    return fmt.format(round(value)) if fmt == "{:d}" else fmt.format(value)


def policy_table(policy: str, runs: list[dict[str, Any]], agg: dict[str, dict[str, float]]) -> str:
    head = "| run (seed) | " + " | ".join(title for title, _, _ in COLUMNS.values()) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in runs:
        rows.append(f"| {r['seed']} | " + " | ".join(_cell(k, r.get(k)) for k in COLUMNS) + " |")
    for name in ("median", "worst"):
        rows.append(f"| **{name}** | " + " | ".join(_cell(k, agg[name].get(k)) for k in COLUMNS) + " |")
    return f"### `--policy {policy}`\n\n" + "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", nargs="+", default=["balance", "pd", "hold"])
    parser.add_argument("--runs", type=int, default=5, help="runs per policy; run K has sim seed K (default 5)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run (default 60)")
    parser.add_argument("--step-calls", type=int, default=20000,
                        help="back-to-back timed calls of each policy cost outside the loop (default 20000)")
    parser.add_argument("--paced-calls", type=int, default=500,
                        help="timed calls of each, one per 20 ms loop period (default 500: 10 s each)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "daemon_runs",
                        help="folder for the logs and daemon_runs.json (default runs/daemon_runs)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    taken = [p.name for p in sorted(args.out.glob("*.log"))]
    if taken:
        sys.exit(f"{args.out} already holds latency logs ({', '.join(taken[:3])}, ...): "
                 f"the daemon never overwrites one; pick a fresh --out")

    costs = {p: step_costs(p, args.step_calls, args.paced_calls, 1.0 / RunConfig.rate_hz) for p in args.policies}
    for p, c in costs.items():
        print(f"{p} outside the loop: " + "; ".join(f"{what} p50 {s['p50']:.1f} µs, p99 {s['p99']:.1f} µs"
                                                   for what, s in c.items()),
              flush=True)

    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policies}
    t0 = time.monotonic()
    for seed in range(args.runs):  # seed-major: a run interrupted late still has every policy on seed 0
        for p in args.policies:
            r = one_run(p, seed, args.duration, args.out)
            runs[p].append(r)
            print(f"{p} seed {seed}: upright {r['upright_fraction']:.3f}, mean tilt {r['mean_tilt_deg']:.1f}°, "
                  f"worst {r['worst_tilt_deg']:.1f}°, falls {r['falls']}, policy p99 "
                  f"{_cell('policy_us_p99', r['policy_us_p99'])} µs ({r['wall_s']:.0f} s wall)", flush=True)

    aggregates = {p: aggregate(rs) for p, rs in runs.items()}
    print(f"\n{args.runs} run(s) of {args.duration:g} s per policy ({time.monotonic() - t0:.0f} s wall); "
          f"ground truth from the simulator, latency from the logs\n")
    for p in args.policies:
        print(policy_table(p, runs[p], aggregates[p]) + "\n")
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for p, c in costs.items():
        med = aggregates[p]["median"]
        if "policy_us_p50" not in med:
            continue
        ratios[p] = {what: {q: med[f"policy_us_{q}"] / s[q] for q in ("p50", "p99")} for what, s in c.items()}
        over = "; ".join(f"/ {what}: p50 x{r['p50']:.1f}, p99 x{r['p99']:.1f}" for what, r in ratios[p].items())
        print(f"`{p}`: loop policy stage (median over runs) p50 {med['policy_us_p50']:.0f} µs, p99 "
              f"{med['policy_us_p99']:.0f} µs; {over}")

    result = {
        "command": " ".join(sys.argv),
        "config": {"policies": args.policies, "runs": args.runs, "duration_s": args.duration,
                   "step_calls": args.step_calls, "paced_calls": args.paced_calls},
        "outside_loop_us": costs,
        "loop_policy_stage_over_outside": ratios,
        "summary": aggregates,
        "runs": runs,
    }
    path = args.out / "daemon_runs.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Median time of one policy step (batch 1) for each way of running an RWKV checkpoint.

    python bench/policy_step.py [--d 64] [--layers 2] [--repeats 7] [--steps 2000]

Compares, in one process on the same random-weight checkpoint: the daemon runtime (fused numba),
the same step in vectorised numpy, torch eager ``forward_step`` (inference mode, 1 intra-op thread:
more threads only add overhead at this size) and onnxruntime (1 thread) on the exported step.
Each repeat times ``--steps`` consecutive steps; the table shows the median over repeats of the
per-step mean, and ratios against torch eager and plain numpy. It also measures the numba
start-up: a fresh process with an empty JIT cache (compile) and again with the cache filled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from policies.checkpoint import ArchConfig  # noqa: E402
from policies.networks import build_network, save_network_checkpoint  # noqa: E402
from policies.rwkv import randomize_parameters  # noqa: E402
from policies.runtime import RwkvRuntime  # noqa: E402
from sim.observation import ObservationSpec  # noqa: E402

STARTUP_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from policies.runtime import RwkvRuntime
t1 = time.perf_counter()
rt = RwkvRuntime.from_checkpoint(sys.argv[1])
s = rt.initial_state()
rt.step(np.zeros(rt.arch.obs_dim, np.float32), s, s)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def time_steps(step: Callable[[], object], steps: int, repeats: int) -> float:
    """Median over repeats of the mean seconds per call (after a warm-up)."""
    for _ in range(50):
        step()
    per_step = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        per_step.append((time.perf_counter() - t0) / steps)
    return statistics.median(per_step)


def candidates(ckpt: Path, net: torch.nn.Module, tmp: Path) -> dict[str, Callable[[], object]]:
    obs = np.random.default_rng(0).standard_normal(net.arch.obs_dim).astype(np.float32)
    runs: dict[str, Callable[[], object]] = {}
    for backend in ("numba", "numpy"):
        rt = RwkvRuntime.from_checkpoint(ckpt, backend=backend)
        state = rt.initial_state()
        runs[f"runtime ({backend})"] = lambda rt=rt, state=state: rt.step(obs, state, state)

    obs_t, state_t = torch.from_numpy(obs)[None], net.initial_state(1)

    def torch_step() -> None:
        with torch.inference_mode():
            net.forward_step(obs_t, state_t)

    runs["torch eager"] = torch_step
    try:
        import onnxruntime as ort

        from policies.onnx_export import export_onnx
    except ImportError:
        print("onnxruntime not installed: skipping it", file=sys.stderr)
        return runs
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(export_onnx(ckpt, tmp / "p.onnx")), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"obs": obs[None], "state": state_t.numpy()}
    runs["onnxruntime"] = lambda: session.run(None, feed)
    return runs


def numba_startup(ckpt: Path, cache_dir: Path) -> tuple[float, float, float]:
    """Fresh-process seconds: import, then load + first step with an empty numba cache, then cached."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(REPO)}
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(ckpt)], env=env, cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
        runs.append((float(out[0]), float(out[1])))
    return runs[1][0], runs[0][1], runs[1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    spec = ObservationSpec()
    arch = ArchConfig("rwkv4", spec.size, spec.n_actions, spec.n_bins, d=args.d, n_layers=args.layers)
    net = randomize_parameters(build_network(arch)).eval()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = save_network_checkpoint(tmp / "p.safetensors", net, spec, None)
        results = {name: time_steps(run, args.steps, args.repeats) for name, run in
                   candidates(ckpt, net, tmp).items()}
        import_s, cold, warm = numba_startup(ckpt, tmp / "numba-cache")

    torch_s, numpy_s = results["torch eager"], results["runtime (numpy)"]
    print(f"RWKV-4 step, d={args.d}, {args.layers} layers, obs {spec.size}, q {spec.n_actions}x{spec.n_bins}, "
          f"batch 1; median of {args.repeats} x {args.steps} steps")
    print(f"{'backend':<18}{'us/step':>10}{'torch/x':>10}{'numpy/x':>10}")
    for name, s in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"{name:<18}{s * 1e6:>10.1f}{torch_s / s:>10.1f}{numpy_s / s:>10.2f}")
    print(f"numba start-up, fresh process: import policies.runtime {import_s:.2f} s; load checkpoint + first "
          f"step {cold:.2f} s with an empty cache (compile), {warm:.2f} s from the cache")


if __name__ == "__main__":
    main()

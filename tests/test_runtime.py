"""Torch-free step runtime: matches the torch network, never imports torch, fast, safe to run."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.checkpoint import ArchConfig, CheckpointError, load_checkpoint
from policies.networks import build_network, save_network_checkpoint
from policies.rwkv import randomize_parameters
from policies.runtime import GruRuntime, MlpRuntime, CheckpointPolicy, RwkvRuntime, load_policy_checkpoint, load_runtime
from sim.observation import ObservationSpec

SPEC = ObservationSpec()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def checkpoint(tmp_path: Path, kind: str = "rwkv4", scale: float = 1.0):
    """A random-weight network of ``kind`` saved as a checkpoint; returns (net, path)."""
    arch = ArchConfig(kind, SPEC.size, SPEC.n_actions, SPEC.n_bins, history=4)
    net = randomize_parameters(build_network(arch), scale, seed=1).eval()
    path = save_network_checkpoint(tmp_path / f"{kind}.safetensors", net, SPEC, "cal-test")
    return net, path


@pytest.mark.parametrize("kind, backend", [("rwkv4", "numba"), ("rwkv4", "numpy"), ("gru", None), ("mlp", None)])
@torch.no_grad()
def test_runtime_matches_torch_forward_step(tmp_path, kind, backend):
    net, path = checkpoint(tmp_path, kind)
    runtime = RwkvRuntime.from_checkpoint(path, backend=backend) if backend else load_runtime(path)
    assert type(runtime) is {"rwkv4": RwkvRuntime, "gru": GruRuntime, "mlp": MlpRuntime}[kind]
    state, state_t = runtime.initial_state(), net.initial_state(1)
    np.testing.assert_array_equal(state, state_t[0].numpy())
    rng = np.random.default_rng(0)
    for t in range(64):
        obs = rng.standard_normal(SPEC.size).astype(np.float32)
        before = state.copy()
        in_place = t % 2 == 1
        q, new_state = runtime.step(obs, state, out_state=state if in_place else None)
        if not in_place:
            np.testing.assert_array_equal(state, before)  # the input state is left untouched
        state = new_state
        q_t, state_t = net.forward_step(torch.from_numpy(obs)[None], state_t)
        np.testing.assert_allclose(q, q_t[0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(state, state_t[0].numpy(), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_rwkv_runtime_long_horizon_matches_parallel_form(tmp_path):
    net, path = checkpoint(tmp_path, scale=2.0)
    runtime = RwkvRuntime.from_checkpoint(path)
    obs = np.random.default_rng(1).standard_normal((4096, SPEC.size)).astype(np.float32)
    state = runtime.initial_state()
    for o in obs:
        q, state = runtime.step(o, state, out_state=state)
    q_par, state_par = net.forward_sequence(torch.from_numpy(obs)[None], net.initial_state(1))
    assert np.isfinite(state).all() and np.isfinite(q).all()
    # float32 rounding differs between the two orders of summation: compare relative to the scale
    np.testing.assert_allclose(q, q_par[0, -1].numpy(), atol=1e-4 * np.abs(q).max())
    np.testing.assert_allclose(state, state_par[0].numpy(), rtol=1e-3, atol=1e-4 * np.abs(state[:, :3]).max())


def test_importing_and_running_the_runtime_does_not_import_torch(tmp_path):
    _, path = checkpoint(tmp_path)
    code = (
        "import sys, numpy as np\n"
        "from policies.runtime import load_policy_checkpoint\n"
        f"p = load_policy_checkpoint({str(path)!r}, calibration_identity='cal-test')\n"
        "p.act(np.zeros(p.spec.size, np.float32))\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_rwkv_step_is_fast(tmp_path):
    """Target is <= 50 us (see bench/policy_step.py); the bound here only catches a broken JIT path."""
    _, path = checkpoint(tmp_path)
    runtime = RwkvRuntime.from_checkpoint(path)
    state, obs = runtime.initial_state(), np.zeros(SPEC.size, np.float32)
    runtime.step(obs, state, state)
    times = []
    for _ in range(500):
        t0 = time.perf_counter()
        runtime.step(obs, state, state)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 500e-6


def test_greedy_action_uses_the_bins(tmp_path):
    _, path = checkpoint(tmp_path)
    runtime = load_runtime(path)
    q = np.random.default_rng(2).standard_normal((SPEC.n_actions, SPEC.n_bins)).astype(np.float32)
    np.testing.assert_array_equal(runtime.greedy_action(q), SPEC.discrete_to_action(q.argmax(1)))


def test_policy_adapter(tmp_path):
    _, path = checkpoint(tmp_path)
    policy = load_policy_checkpoint(path, calibration_identity="cal-test")
    assert policy.name == "rwkv4" and policy.spec == SPEC
    assert policy.identity.startswith("rwkv4.safetensors@") and len(policy.identity.split("@")[1]) == 12
    rng = np.random.default_rng(3)
    observations = rng.standard_normal((5, SPEC.size)).astype(np.float32)
    first = [policy.act(o) for o in observations]
    assert all(a.shape == (SPEC.n_actions,) and np.all(np.abs(a) <= 1) for a in first)
    policy.reset()
    np.testing.assert_array_equal(np.stack([policy.act(o) for o in observations]), np.stack(first))


def test_policy_acts_nan_when_a_q_value_is_not_finite(tmp_path):
    """argmax of a NaN/inf Q row is a real bin: the policy must say NaN so the daemon holds."""
    _, path = checkpoint(tmp_path, "mlp")
    weights, meta = load_checkpoint(path)
    weights["head.value.bias"] = np.array([np.inf], np.float32)
    policy = CheckpointPolicy(MlpRuntime(weights, meta), SPEC)
    action = policy.act(np.zeros(SPEC.size, np.float32))
    assert action.shape == (SPEC.n_actions,) and np.all(np.isnan(action))


def test_policy_refuses_mismatched_contract(tmp_path):
    _, path = checkpoint(tmp_path)
    runtime = RwkvRuntime.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="observation.action_history"):
        CheckpointPolicy(runtime, ObservationSpec(action_history=2))
    with pytest.raises(CheckpointError, match="calibration_identity"):
        load_policy_checkpoint(path, calibration_identity="another-robot")


def test_runtime_refuses_wrong_kind_and_missing_tensors(tmp_path):
    _, path = checkpoint(tmp_path, "gru")
    with pytest.raises(CheckpointError, match="'gru' checkpoint, not for RwkvRuntime"):
        RwkvRuntime.from_checkpoint(path)
    _, path = checkpoint(tmp_path)
    weights, meta = load_checkpoint(path)
    del weights["blocks.1.att.key.weight"]
    with pytest.raises(CheckpointError, match="lacks tensor 'blocks.1.att.key.weight'"):
        RwkvRuntime(weights, meta)
    weights, meta = load_checkpoint(path)
    weights["emb.weight"] = weights["emb.weight"][:, :5]
    with pytest.raises(CheckpointError, match="'emb.weight' has shape"):
        RwkvRuntime(weights, meta)

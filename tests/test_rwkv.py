"""RWKV-4 Q-network: reference equations, parallel vs step agreement, numerical safety, baselines."""

import numpy as np
import pytest
import torch

from policies.checkpoint import ArchConfig
from policies.networks import build_network
from policies.rwkv import PP_EMPTY, RwkvQNetwork, randomize_parameters

OBS, N_ACT, N_BINS = 46, 10, 5
ARCH = ArchConfig("rwkv4", OBS, N_ACT, N_BINS)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny ops: a second intra-op thread only adds contention (10x slower on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rwkv(scale: float = 1.0, seed: int = 0) -> RwkvQNetwork:
    return randomize_parameters(RwkvQNetwork(ARCH), scale, seed).eval()


def reference_step(sd: dict[str, np.ndarray], n_layers: int, obs: np.ndarray, state: list[np.ndarray]):
    """RWKV-4 one step written from docs (learning.md / BlinkDL's RNN form), float64, one sample.

    ``state`` is a list of 5 * n_layers vectors in the reference order x_att, aa, bb, pp, x_ffn.
    """

    def ln(x, name):
        return (x - x.mean()) / np.sqrt(x.var() + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    def sig(x):
        return 1 / (1 + np.exp(-x))

    state = [s.copy() for s in state]
    x = ln(sd["emb.weight"] @ obs + sd["emb.bias"], "blocks.0.ln0")
    for i in range(n_layers):
        b = f"blocks.{i}."
        xx = ln(x, b + "ln1")
        att = {n: sd[b + "att." + n].reshape(-1) for n in ("time_mix_k", "time_mix_v", "time_mix_r")}
        xk = xx * att["time_mix_k"] + state[5 * i] * (1 - att["time_mix_k"])
        xv = xx * att["time_mix_v"] + state[5 * i] * (1 - att["time_mix_v"])
        xr = xx * att["time_mix_r"] + state[5 * i] * (1 - att["time_mix_r"])
        state[5 * i] = xx
        r = sig(sd[b + "att.receptance.weight"] @ xr)
        k = sd[b + "att.key.weight"] @ xk
        v = sd[b + "att.value.weight"] @ xv
        aa, bb, pp = state[5 * i + 1], state[5 * i + 2], state[5 * i + 3]
        u, w = sd[b + "att.time_first"], -np.exp(sd[b + "att.time_decay"])
        ww = u + k
        p = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - p), np.exp(ww - p)
        wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
        ww = pp + w
        p = np.maximum(ww, k)
        e1, e2 = np.exp(ww - p), np.exp(k - p)
        state[5 * i + 1], state[5 * i + 2], state[5 * i + 3] = e1 * aa + e2 * v, e1 * bb + e2, p
        x = x + sd[b + "att.output.weight"] @ (r * wkv)

        xx = ln(x, b + "ln2")
        mk, mr = sd[b + "ffn.time_mix_k"].reshape(-1), sd[b + "ffn.time_mix_r"].reshape(-1)
        xk = xx * mk + state[5 * i + 4] * (1 - mk)
        xr = xx * mr + state[5 * i + 4] * (1 - mr)
        state[5 * i + 4] = xx
        r = sig(sd[b + "ffn.receptance.weight"] @ xr)
        k = np.square(np.maximum(sd[b + "ffn.key.weight"] @ xk, 0))
        x = x + r * (sd[b + "ffn.value.weight"] @ k)
    x = ln(x, "ln_out")
    value = sd["head.value.weight"] @ x + sd["head.value.bias"]
    adv = (sd["head.advantage.weight"] @ x + sd["head.advantage.bias"]).reshape(N_ACT, N_BINS)
    return value + adv - adv.mean(1, keepdims=True), state


def test_parameter_names_and_shapes_follow_the_reference():
    shapes = {k: tuple(v.shape) for k, v in RwkvQNetwork(ARCH).state_dict().items()}
    d = ARCH.d
    for i in range(ARCH.n_layers):
        for n in ("time_mix_k", "time_mix_v", "time_mix_r"):
            assert shapes[f"blocks.{i}.att.{n}"] == (1, 1, d)
        assert shapes[f"blocks.{i}.att.time_decay"] == shapes[f"blocks.{i}.att.time_first"] == (d,)
        for n in ("key", "value", "receptance", "output"):
            assert shapes[f"blocks.{i}.att.{n}.weight"] == (d, d)
        assert shapes[f"blocks.{i}.ffn.key.weight"] == (4 * d, d)
        assert shapes[f"blocks.{i}.ffn.value.weight"] == (d, 4 * d)
        assert shapes[f"blocks.{i}.ffn.receptance.weight"] == (d, d)
        assert f"blocks.{i}.ln1.weight" in shapes and f"blocks.{i}.ln2.bias" in shapes
    assert "blocks.0.ln0.weight" in shapes and "blocks.1.ln0.weight" not in shapes
    assert not any(k.startswith("blocks.") and k.endswith((".key.bias", ".value.bias", ".output.bias"))
                   for k in shapes)


def test_forward_step_matches_independent_reference_equations():
    net = rwkv(seed=1)
    sd = {k: v.double().numpy() for k, v in net.state_dict().items()}
    ref_state = [np.zeros(ARCH.d) for _ in range(5 * ARCH.n_layers)]
    for i in range(ARCH.n_layers):
        ref_state[5 * i + 3][:] = -1e38
    state = net.initial_state(1)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs = rng.standard_normal(OBS)
        q_ref, ref_state = reference_step(sd, ARCH.n_layers, obs, ref_state)
        with torch.no_grad():
            q, state = net.forward_step(torch.tensor(obs[None], dtype=torch.float32), state)
        np.testing.assert_allclose(q[0].numpy(), q_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(state[0].numpy().reshape(-1, ARCH.d), np.stack(ref_state), rtol=1e-4, atol=1e-4)


def run_steps(net, obs: torch.Tensor, state: torch.Tensor):
    qs = []
    for t in range(obs.shape[1]):
        q, state = net.forward_step(obs[:, t], state)
        qs.append(q)
    return torch.stack(qs, 1), state


@pytest.mark.parametrize("T,from_zero", [(256, True), (150, False)])
@torch.no_grad()
def test_parallel_sequence_matches_step_by_step(T, from_zero):
    net = rwkv(seed=2)
    gen = torch.Generator().manual_seed(3)
    state = net.initial_state(2)
    if not from_zero:  # a state reached by running, as replay stores it
        _, state = net.forward_sequence(torch.randn(2, 37, OBS, generator=gen), state)
    obs = torch.randn(2, T, OBS, generator=gen)
    q_par, s_par = net.forward_sequence(obs, state)
    q_seq, s_seq = run_steps(net, obs, state)
    torch.testing.assert_close(q_par, q_seq, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_par, s_seq, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_large_keys_do_not_overflow():
    net = rwkv(scale=30.0, seed=4)  # keys in the hundreds: exp(k) would overflow float32
    obs = torch.randn(1, 200, OBS, generator=torch.Generator().manual_seed(5)) * 10
    q_par, s_par = net.forward_sequence(obs, net.initial_state(1))
    q_seq, s_seq = run_steps(net, obs, net.initial_state(1))
    assert torch.isfinite(q_par).all() and torch.isfinite(s_par).all() and torch.isfinite(q_seq).all()
    torch.testing.assert_close(q_par, q_seq, rtol=1e-3, atol=1e-3 * q_seq.abs().max().item())


@torch.no_grad()
def test_long_horizon_stays_finite_and_consistent():
    """4096 steps in parallel; the last 64 re-done step by step from the parallel state at 4032.

    (The full 4096-step recurrence is run by tests/test_runtime.py, against this parallel form.)
    """
    net = rwkv(seed=6)
    obs = torch.randn(1, 4096, OBS, generator=torch.Generator().manual_seed(7))
    q_par, s_par = net.forward_sequence(obs, net.initial_state(1))
    assert torch.isfinite(q_par).all() and torch.isfinite(s_par).all()
    _, s_head = net.forward_sequence(obs[:, :4032], net.initial_state(1))
    q_tail, s_seq = run_steps(net, obs[:, 4032:], s_head)
    torch.testing.assert_close(q_par[:, 4032:], q_tail, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s_par, s_seq, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_gradients_finite(scale):
    net = rwkv(scale=scale, seed=8).train()
    with torch.no_grad():  # start from a reached (non-empty) state as well as the empty one
        _, reached = net.forward_sequence(torch.randn(1, 20, OBS), net.initial_state(1))
    state = torch.cat([net.initial_state(1), reached])
    q, s = net.forward_sequence(torch.randn(2, 100, OBS) * 3, state)
    (q.square().mean() + s[:, :, 1].mean()).backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_reference_init_and_state_layout():
    net = RwkvQNetwork(ARCH)
    state = net.initial_state(4)
    assert state.shape == (4, ARCH.n_layers, 5, ARCH.d) == (4, *ARCH.state_shape)
    assert (state[:, :, 3] == PP_EMPTY).all() and (state[:, :, [0, 1, 2, 4]] == 0).all()
    for block in net.blocks:
        for lin in (block.att.output, block.ffn.value, block.ffn.receptance):
            assert (lin.weight == 0).all()
    decay = net.blocks[0].att.time_decay
    assert decay[0].item() == pytest.approx(-5) and decay[-1].item() == pytest.approx(3)
    # a fresh network is trainable: the loss reaches every block through the zeroed projections' grads
    q, _ = net.forward_sequence(torch.randn(2, 8, OBS), state[:2])
    q.square().mean().backward()
    assert net.blocks[1].att.output.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_dueling_head_mean_over_bins_is_the_value():
    net = rwkv(seed=9)
    x = torch.randn(5, ARCH.d)
    q = net.head(x)
    assert q.shape == (5, N_ACT, N_BINS)
    torch.testing.assert_close(q.mean(-1), net.head.value(x).expand(5, N_ACT))


@pytest.mark.parametrize("kind", ["gru", "mlp"])
@torch.no_grad()
def test_baselines_sequence_matches_step(kind):
    arch = ArchConfig(kind, OBS, N_ACT, N_BINS, history=4)
    net = randomize_parameters(build_network(arch), 0.5, seed=10).eval()
    gen = torch.Generator().manual_seed(11)
    state = torch.randn(2, *arch.state_shape, generator=gen)
    obs = torch.randn(2, 30, OBS, generator=gen)
    q_par, s_par = net.forward_sequence(obs, state)
    q_seq, s_seq = run_steps(net, obs, state)
    assert q_par.shape == (2, 30, N_ACT, N_BINS) and s_par.shape == (2, *arch.state_shape)
    torch.testing.assert_close(q_par, q_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_par, s_seq, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("start", ["empty", "carried"])
def test_compiled_scan_matches_the_autograd_forms(start):
    """The learner's WKV (one numba scan, hand-derived backward) against autograd of the chunked
    parallel form: outputs, end state and the gradients of time_decay, time_first, k and v."""
    from policies.rwkv import wkv_parallel
    from policies.wkv_kernel import wkv_scan

    gen = torch.Generator().manual_seed(3)
    b, t, d = 3, 29, 16
    time_decay = (torch.randn(d, generator=gen) * 2).requires_grad_()
    u = torch.randn(d, generator=gen).requires_grad_()
    k = (torch.randn(b, t, d, generator=gen) * 5).requires_grad_()  # large keys: the log scales must hold
    v = torch.randn(b, t, d, generator=gen).requires_grad_()
    if start == "empty":
        state = (torch.zeros(b, d), torch.zeros(b, d), torch.full((b, d), PP_EMPTY))
    else:
        state = (torch.randn(b, d, generator=gen), torch.rand(b, d, generator=gen) + 0.1, torch.randn(b, d, generator=gen))
    g = torch.randn(b, t, d, generator=gen)
    results = []
    for fn in (wkv_parallel, wkv_scan):
        y, end = fn(-torch.exp(time_decay), u, k, v, state)
        results.append((y, end, torch.autograd.grad((y * g).sum(), (time_decay, u, k, v))))
    (y_ref, end_ref, grads_ref), (y, end, grads) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, a_ref in zip(end, end_ref):
        torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-5)
    for name, grad, grad_ref in zip(("time_decay", "time_first", "k", "v"), grads, grads_ref):
        scale = grad_ref.abs().max()
        assert (grad - grad_ref).abs().max() <= 1e-5 * scale + 1e-6, name


def test_a_start_state_that_requires_grad_gets_its_gradient():
    """The scan treats the start state as a constant; a caller training through it gets the autograd form."""
    net = rwkv(0.5)
    state = net.initial_state(2)
    state[:, :, 1:4] = torch.rand(2, ARCH.n_layers, 3, ARCH.d)  # aa, bb > 0 and a finite pp: a carried state
    state.requires_grad_()
    q, _ = net.forward_sequence(torch.randn(2, 5, OBS), state)
    (grad,) = torch.autograd.grad(q.sum(), state)
    assert grad[:, :, 1].abs().sum() > 0


@pytest.mark.parametrize("kind", ["rwkv4", "gru", "mlp"])
def test_observation_normalisation_folds_into_the_checkpoint_weights(kind):
    """A network with the learner's normaliser and the same network rebuilt from its checkpoint
    weights (normaliser folded into the input layer) compute the same Q and state."""
    from policies.networks import network_from_weights, numpy_weights

    arch = ArchConfig(kind, 7, 3, 5, d=16, n_layers=2, history=4)
    net = randomize_parameters(build_network(arch), 0.5, seed=1)
    gen = torch.Generator().manual_seed(2)
    net.set_obs_normalization(torch.randn(7, generator=gen), torch.rand(7, generator=gen) + 0.5)
    obs = torch.randn(2, 9, 7, generator=gen)
    q, state = net.forward_sequence(obs, net.initial_state(2))
    folded = network_from_weights(arch, numpy_weights(net))
    q_folded, state_folded = folded.forward_sequence(obs, folded.initial_state(2))
    torch.testing.assert_close(q_folded, q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state_folded, state, rtol=1e-5, atol=1e-5)
    raw, _ = randomize_parameters(build_network(arch), 0.5, seed=1).forward_sequence(obs, net.initial_state(2))
    assert not torch.allclose(raw, q)  # the normaliser changed the function: the test can fail

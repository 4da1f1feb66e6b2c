"""RWKV-4 Q-network over continuous observations, trained in parallel over time, run step by step.

Network (``ArchConfig(kind="rwkv4")``, defaults d=64, 2 layers, channel-mix hidden 4*d)::

    x = ln0(emb(obs))                                  emb: Linear(obs_dim -> d), ln0 in blocks.0
    for each block:  x += TimeMix(ln1(x));  x += ChannelMix(ln2(x))
    q = DuelingQHead(ln_out(x))                        q: [..., n_actions, n_bins]

The parameter names and shapes are BlinkDL's RWKV-4 ones (``blocks.{i}.att.time_mix_k`` of shape
(1, 1, d), ``time_decay``/``time_first`` of shape (d,), bias-free ``key``/``value``/``receptance``/
``output``; ``blocks.{i}.ffn.{time_mix_k,time_mix_r,key,value,receptance}``; ``blocks.0.ln0``,
``ln1``, ``ln2``, ``ln_out``), so weights can be checked against a reference implementation. Only
the token embedding (a Linear over observations, ``emb``) and the head (``head.value``,
``head.advantage``) differ.

Recurrent state, one fixed-size tensor so a learner can keep it in replay: ``[B, n_layers, 5, d]``
with rows (``STATE_ROWS``) ``x_att`` (last ln1 output, for the time-mix token shift), ``aa``, ``bb``
(numerator/denominator of the WKV average, scaled by exp(-pp)), ``pp`` (log scale, -1e38 = empty)
and ``x_ffn`` (last ln2 output, for the channel-mix token shift).

Two forward modes that compute the same function: :meth:`RwkvQNetwork.forward_sequence` evaluates
a whole [B, T] batch in parallel over T (for training), :meth:`RwkvQNetwork.forward_step` applies
the one-step recurrence (acting, ONNX export, and the semantics ``policies.runtime`` mirrors).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from policies.checkpoint import ArchConfig
from policies.wkv_kernel import wkv_scan

STATE_ROWS = ("x_att", "aa", "bb", "pp", "x_ffn")
PP_EMPTY = -1e38  # log-scale of an empty WKV sum: exp(PP_EMPTY - anything finite) == 0
WKV_CHUNK = 8  # T x T work per chunk in the parallel form; memory B * chunk^2 * d floats
# time_decay is clamped here before w = -exp(time_decay): the per-step decay exp(w) is already
# exactly 0 in float32 for time_decay > ~4.7, and an infinite w would make 0 * w = NaN in the
# parallel form. policies.runtime applies the same clamp.
TIME_DECAY_MAX = 30.0

WkvState = tuple[Tensor, Tensor, Tensor]  # aa, bb, pp, each [B, d]
WkvFn = Callable[[Tensor, Tensor, Tensor, Tensor, WkvState], tuple[Tensor, WkvState]]


class DuelingQHead(nn.Module):
    """Branching dueling head: Q[j, b] = V + A[j, b] - mean_b A[j, b], one branch per joint.

    The shared value V and per-joint advantages give Branching Dueling Q (Tavakoli et al. 2018);
    averaging Q over joints gives a DecQN-style joint value (Seyde et al. 2023). Subtracting the
    mean advantage makes V identifiable; the greedy action per joint is argmax_b Q[j, b].
    """

    def __init__(self, d: int, n_actions: int, n_bins: int):
        super().__init__()
        self.n_actions, self.n_bins = n_actions, n_bins
        self.value = nn.Linear(d, 1)
        self.advantage = nn.Linear(d, n_actions * n_bins)

    def forward(self, x: Tensor) -> Tensor:
        a = self.advantage(x).unflatten(-1, (self.n_actions, self.n_bins))
        return self.value(x).unsqueeze(-1) + a - a.mean(-1, keepdim=True)


class QNetwork(nn.Module):
    """The interface every Q-network kind (rwkv4, gru, mlp) offers to the learner.

    ``state`` is one float32 tensor ``[B, *arch.state_shape]``, returned updated by both modes.
    """

    arch: ArchConfig
    #: (weight, bias) of the layer that first sees the observation (``input_repeats`` observations side by side).
    input_layer: tuple[str, str]
    input_repeats: int = 1

    def __init__(self) -> None:
        super().__init__()
        # Observation normalisation, (obs - shift) * scale before the input layer; the learner sets
        # it from its replay when learning starts. Not in state_dict: a checkpoint holds it folded
        # into the input layer (folded_state_dict), so every runtime applies it by construction.
        self.register_buffer("obs_shift", torch.zeros(0), persistent=False)
        self.register_buffer("obs_scale", torch.zeros(0), persistent=False)

    def set_obs_normalization(self, shift: Tensor, scale: Tensor) -> None:
        self.obs_shift, self.obs_scale = shift.float().clone(), scale.float().clone()

    def normalize(self, x: Tensor) -> Tensor:
        """The input layer's input, normalised (``x``: ``input_repeats`` observations concatenated)."""
        if not self.obs_shift.numel():
            return x
        return (x - self.obs_shift.repeat(self.input_repeats)) * self.obs_scale.repeat(self.input_repeats)

    def folded_state_dict(self) -> dict[str, Tensor]:
        """The state_dict of the same function with the normalisation folded into the input layer:
        W ((x - m) s) + b = (W s) x + (b - W s m)."""
        sd = {name: t.detach() for name, t in self.state_dict().items()}  # the folded pair is computed anew
        if self.obs_shift.numel():
            scale, shift = self.obs_scale.repeat(self.input_repeats), self.obs_shift.repeat(self.input_repeats)
            w_name, b_name = self.input_layer
            w = sd[w_name] * scale
            sd[w_name], sd[b_name] = w, sd[b_name] - w @ shift
        return sd

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.zeros((batch_size, *self.arch.state_shape), device=device)

    def forward_sequence(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, T, obs_dim], state -> (q [B, T, n_actions, n_bins], state after step T)."""
        raise NotImplementedError

    def forward_step(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """obs [B, obs_dim], state -> (q [B, n_actions, n_bins], next state)."""
        q, state = self.forward_sequence(obs.unsqueeze(1), state)
        return q.squeeze(1), state


def wkv_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WkvState) -> tuple[Tensor, WkvState]:
    """The reference one-step WKV recurrence (k, v: [B, 1, d]); w = -exp(time_decay), u = time_first."""
    aa, bb, pp = state
    k, v = k[:, 0], v[:, 0]
    q = torch.maximum(pp, u + k)
    e1, e2 = torch.exp(pp - q), torch.exp(u + k - q)
    wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
    q = torch.maximum(pp + w, k)
    e1, e2 = torch.exp(pp + w - q), torch.exp(k - q)
    return wkv.unsqueeze(1), (e1 * aa + e2 * v, e1 * bb + e2, q)


def wkv_parallel(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WkvState) -> tuple[Tensor, WkvState]:
    """WKV for k, v [B, T, d] from any state, in chunks of WKV_CHUNK steps (masked T x T, log space).

    Within a chunk of length C starting from (aa, bb, pp), step t averages v with log-weights
    ``(t-1-i)*w + k_i`` for i < t, ``u + k_t`` for i = t, and ``pp + t*w`` for the carried state
    (value aa, weight bb). Every exponent is shifted by its row maximum, so nothing overflows
    whatever the keys. The state after the chunk is the same sum with the bonus u dropped; its
    pp is the same maximum the step recurrence keeps, so both forms carry identical states.
    The maxima are detached: they only rescale numerator and denominator together.
    """
    outs = []
    for start in range(0, k.shape[1], WKV_CHUNK):
        out, state = _wkv_chunk(w, u, k[:, start : start + WKV_CHUNK], v[:, start : start + WKV_CHUNK], state)
        outs.append(out)
    return torch.cat(outs, 1), state


def _wkv_chunk(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WkvState) -> tuple[Tensor, WkvState]:
    aa, bb, pp = state
    n = k.shape[1]
    t = torch.arange(n, device=k.device, dtype=k.dtype)
    lag = (t[:, None] - 1 - t[None, :])[..., None] * w  # [C(t), C(i), d]: decay of token i seen at t
    lag = torch.where(torch.eye(n, dtype=torch.bool, device=k.device)[..., None], u, lag)
    logw = (lag + k[:, None]).masked_fill(~torch.ones(n, n, dtype=torch.bool, device=k.device).tril()[..., None],
                                          float("-inf"))  # [B, t, i, d]
    log_state = pp[:, None] + t[:, None] * w  # [B, t, d]
    m = torch.maximum(logw.amax(2), log_state).detach()
    e = torch.exp(logw - m[:, :, None])
    e_state = torch.exp(log_state - m)
    wkv = (torch.einsum("btid,bid->btd", e, v) + e_state * aa[:, None]) / (e.sum(2) + e_state * bb[:, None])

    log_end = (n - 1 - t)[:, None] * w + k  # [B, i, d]: weight of token i in the state after the chunk
    log_state_end = pp + n * w
    pp_new = torch.maximum(log_end.amax(1), log_state_end).detach()
    e_end = torch.exp(log_end - pp_new[:, None])
    e_state_end = torch.exp(log_state_end - pp_new)
    aa_new = (e_end * v).sum(1) + e_state_end * aa
    bb_new = e_end.sum(1) + e_state_end * bb
    return wkv, (aa_new, bb_new, pp_new)


def _shift(x: Tensor, x_prev: Tensor) -> Tensor:
    """Token shift: the previous step's input at every t ([B, T, d]; x_prev [B, d] precedes t=0)."""
    return torch.cat([x_prev.unsqueeze(1), x[:, :-1]], 1)


def _mix(x: Tensor, xx: Tensor, mu: Tensor) -> Tensor:
    return x * mu + xx * (1 - mu)


class TimeMix(nn.Module):
    """RWKV-4 attention replacement: a per-channel exponentially decaying average of values."""

    def __init__(self, d: int, layer_id: int, n_layers: int):
        super().__init__()
        # The reference init schedule: lower layers mix in more of the previous token and have a
        # spread of decay speeds from fast (-5) to slow (+3) across channels.
        ratio_0_to_1 = layer_id / max(n_layers - 1, 1)
        ratio_1_to_almost0 = 1.0 - layer_id / n_layers
        ddd = (torch.arange(d, dtype=torch.float32) / d).reshape(1, 1, d)
        h = torch.arange(d, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (h / (d - 1)) ** (0.7 + 1.3 * ratio_0_to_1))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(torch.full((d,), math.log(0.3)) + zigzag)
        self.time_mix_k = nn.Parameter(ddd**ratio_1_to_almost0)
        self.time_mix_v = nn.Parameter(ddd**ratio_1_to_almost0 + 0.3 * ratio_0_to_1)
        self.time_mix_r = nn.Parameter(ddd ** (0.5 * ratio_1_to_almost0))
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.output = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, state: Tensor, wkv_fn: WkvFn) -> tuple[Tensor, Tensor]:
        """x [B, T, d] (ln1 output), state [B, 4, d] = (x_att, aa, bb, pp) -> (out, new state)."""
        xx = _shift(x, state[:, 0])
        k = self.key(_mix(x, xx, self.time_mix_k))
        v = self.value(_mix(x, xx, self.time_mix_v))
        r = torch.sigmoid(self.receptance(_mix(x, xx, self.time_mix_r)))
        w = -torch.exp(self.time_decay.clamp(max=TIME_DECAY_MAX))
        wkv, (aa, bb, pp) = wkv_fn(w, self.time_first, k, v,
                                   (state[:, 1], state[:, 2], state[:, 3]))
        return self.output(r * wkv), torch.stack([x[:, -1], aa, bb, pp], 1)


class ChannelMix(nn.Module):
    """RWKV-4 feed-forward with token shift: sigmoid(Wr xr) * Wv relu(Wk xk)^2."""

    def __init__(self, d: int, hidden: int, layer_id: int, n_layers: int):
        super().__init__()
        ratio_1_to_almost0 = 1.0 - layer_id / n_layers
        ddd = (torch.arange(d, dtype=torch.float32) / d).reshape(1, 1, d)
        self.time_mix_k = nn.Parameter(ddd**ratio_1_to_almost0)
        self.time_mix_r = nn.Parameter(ddd**ratio_1_to_almost0)
        self.key = nn.Linear(d, hidden, bias=False)
        self.receptance = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(hidden, d, bias=False)

    def forward(self, x: Tensor, x_prev: Tensor) -> Tensor:
        xx = _shift(x, x_prev)
        k = torch.relu(self.key(_mix(x, xx, self.time_mix_k))) ** 2
        return torch.sigmoid(self.receptance(_mix(x, xx, self.time_mix_r))) * self.value(k)


class Block(nn.Module):
    """Pre-LayerNorm residual block; block 0 also owns ln0, applied to the embedded input."""

    def __init__(self, d: int, hidden: int, layer_id: int, n_layers: int):
        super().__init__()
        self.layer_id = layer_id
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(d)
        self.ln1 = nn.LayerNorm(d)
        self.ln2 = nn.LayerNorm(d)
        self.att = TimeMix(d, layer_id, n_layers)
        self.ffn = ChannelMix(d, hidden, layer_id, n_layers)

    def forward(self, x: Tensor, state: Tensor, wkv_fn: WkvFn) -> tuple[Tensor, Tensor]:
        """x [B, T, d], state [B, 5, d] -> (x, new state)."""
        if self.layer_id == 0:
            x = self.ln0(x)
        xa = self.ln1(x)
        out, att_state = self.att(xa, state[:, :4], wkv_fn)
        x = x + out
        xf = self.ln2(x)
        x = x + self.ffn(xf, state[:, 4])
        return x, torch.cat([att_state, xf[:, -1:]], 1)


class RwkvQNetwork(QNetwork):
    """RWKV-4 trunk + branching dueling Q head; see the module docstring for layout and modes."""

    def __init__(self, arch: ArchConfig):
        super().__init__()
        if arch.kind != "rwkv4":
            raise ValueError(f"RwkvQNetwork needs kind 'rwkv4', got {arch.kind!r}")
        self.arch = arch
        self.input_layer = ("emb.weight", "emb.bias")
        self.emb = nn.Linear(arch.obs_dim, arch.d)
        self.blocks = nn.ModuleList(Block(arch.d, arch.ffn_hidden, i, arch.n_layers) for i in range(arch.n_layers))
        self.ln_out = nn.LayerNorm(arch.d)
        self.head = DuelingQHead(arch.d, arch.n_actions, arch.n_bins)
        self._reference_init()

    @torch.no_grad()
    def _reference_init(self) -> None:
        """BlinkDL's init: zero output-side projections so every block starts as the identity.

        att.key/receptance/output and ffn.receptance/value start at zero, att.value and ffn.key
        orthogonal, the input embedding tiny (ln0 rescales it), the head orthogonal (gain 0.5 as
        the reference head uses) with zero bias.
        """
        nn.init.uniform_(self.emb.weight, -1e-4, 1e-4)
        nn.init.zeros_(self.emb.bias)
        for block in self.blocks:
            for lin in (block.att.key, block.att.receptance, block.att.output, block.ffn.receptance, block.ffn.value):
                nn.init.zeros_(lin.weight)
            for lin in (block.att.value, block.ffn.key):
                rows, cols = lin.weight.shape
                nn.init.orthogonal_(lin.weight, gain=math.sqrt(rows / cols) if rows > cols else 1.0)
        for lin in (self.head.value, self.head.advantage):
            nn.init.orthogonal_(lin.weight, gain=0.5)
            nn.init.zeros_(lin.bias)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        state = super().initial_state(batch_size, device)
        state[:, :, STATE_ROWS.index("pp")] = PP_EMPTY
        return state

    def _forward(self, obs: Tensor, state: Tensor, wkv_fn: WkvFn) -> tuple[Tensor, Tensor]:
        x = self.emb(self.normalize(obs))
        new_state = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, state[:, i], wkv_fn)
            new_state.append(s)
        return self.head(self.ln_out(x)), torch.stack(new_state, 1)

    def forward_sequence(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """The whole sequence at once, exact from any state, zero or replayed.

        The WKV runs as one compiled scan (:func:`policies.wkv_kernel.wkv_scan`), whose backward
        treats the start state as a constant, as the learner's stored and burned-in states are;
        a start state that requires grad takes the autograd form (:func:`wkv_parallel`).
        """
        return self._forward(obs, state, wkv_parallel if state.requires_grad else wkv_scan)

    def forward_step(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One step of the reference recurrence."""
        q, state = self._forward(obs.unsqueeze(1), state, wkv_step)
        return q.squeeze(1), state


@torch.no_grad()
def randomize_parameters(net: nn.Module, scale: float = 1.0, seed: int = 0) -> nn.Module:
    """Overwrite every parameter with N(0, scale^2 / fan_in)-style noise (time_decay ~ N(0, 1)).

    The reference init zeroes the output projections, which would make tests and benchmarks
    trivially pass; this gives every path (and the WKV recurrence) real, non-zero work.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        fan_in = p.shape[-1] if p.dim() >= 2 and not name.endswith(("time_mix_k", "time_mix_v", "time_mix_r")) else 1
        p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in))
    return net

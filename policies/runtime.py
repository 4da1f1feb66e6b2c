"""The daemon's policy step runtime: checkpoint -> Q-values -> action, numpy + numba, never torch.

At d=64 and 2 layers an RWKV step is ~0.1 M multiply-adds, a few microseconds of arithmetic;
what torch eager (~1-2 ms per step here) and numpy (~250-350 us) spend is per-operation overhead.
The RWKV step is therefore one fused ``numba`` function over preallocated buffers (``backend="numba"``, the
default); ``backend="numpy"`` is the same step in vectorised numpy, kept as the no-JIT fallback
and the cross-check. See docs/policies.md for the measurements behind the choice.

The dueling head is linear, so it is folded at load time into one matrix:
Q[j, b] = (w_V + W_A[j, b] - mean_b' W_A[j, b']) . x + (same for the biases).

GRU and MLP checkpoints run in plain numpy (``GruRuntime``, ``MlpRuntime``): they exist for
comparisons, not for speed. :func:`load_runtime` picks the class from the checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from policies.checkpoint import CheckpointError, CheckpointMeta, check_contract, load_checkpoint
from sim.observation import DecisionHold, ObservationSpec

LN_EPS = 1e-5  # torch.nn.LayerNorm's default
# Same as policies.rwkv.PP_EMPTY / TIME_DECAY_MAX (not imported: that module needs torch).
PP_EMPTY = np.float32(-1e38)
TIME_DECAY_MAX = 30.0
# Rows of the per-layer vector table RwkvWeights.vec.
LN1_W, LN1_B, LN2_W, LN2_B, ATT_MIX_K, ATT_MIX_V, ATT_MIX_R, ATT_W, ATT_U, FFN_MIX_K, FFN_MIX_R = range(11)
# Matrices of RwkvWeights.att.
KEY, VALUE, RECEPTANCE, OUTPUT = range(4)


class StepRuntime:
    """One checkpoint's network, stepped one observation at a time on a float32 state array."""

    def __init__(self, weights: dict[str, np.ndarray], meta: CheckpointMeta, identity: str = "in-memory"):
        self.meta = meta
        self.arch = meta.architecture
        self.identity = identity
        self._levels = np.asarray(meta.action_bins, dtype=np.float32)  # bin -> action level
        self._weights = weights

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "StepRuntime":
        weights, meta = load_checkpoint(path)
        if cls is not StepRuntime and RUNTIMES[meta.architecture.kind] is not cls:
            raise CheckpointError(f"{path}: a {meta.architecture.kind!r} checkpoint, not for {cls.__name__}")
        try:
            return RUNTIMES[meta.architecture.kind](weights, meta, identity=checkpoint_identity(path), **kwargs)
        except CheckpointError as e:  # a missing or misshapen tensor: name the file it is missing from
            raise CheckpointError(f"{path}: {e}") from None

    def _w(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A weight by parameter name with exactly the torch module's shape, float32, C-contiguous.

        Raises CheckpointError if it is missing or shaped differently (a transposed matrix of
        the same size included).
        """
        try:
            w = self._weights[name]
        except KeyError:
            raise CheckpointError(f"checkpoint lacks tensor {name!r} for a {self.arch.kind} network") from None
        if w.shape != shape:
            raise CheckpointError(f"tensor {name!r} has shape {w.shape}, architecture needs {shape}")
        return np.ascontiguousarray(w, dtype=np.float32)

    def _folded_head(self) -> tuple[np.ndarray, np.ndarray]:
        """The dueling head as one affine map d -> n_actions * n_bins (exact: the head is linear)."""
        a = self.arch
        n_q = a.n_actions * a.n_bins
        wv = self._w("head.value.weight", (1, a.d)).astype(np.float64)
        bv = self._w("head.value.bias", (1,)).astype(np.float64)
        wa = self._w("head.advantage.weight", (n_q, a.d)).astype(np.float64).reshape(a.n_actions, a.n_bins, a.d)
        ba = self._w("head.advantage.bias", (n_q,)).astype(np.float64).reshape(a.n_actions, a.n_bins)
        w = wv + wa - wa.mean(1, keepdims=True)
        b = bv + ba - ba.mean(1, keepdims=True)
        return (np.ascontiguousarray(w.reshape(-1, a.d), dtype=np.float32),
                np.ascontiguousarray(b.reshape(-1), dtype=np.float32))

    def initial_state(self) -> np.ndarray:
        return np.zeros(self.arch.state_shape, dtype=np.float32)

    def step(self, obs: np.ndarray, state: np.ndarray, out_state: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """q [n_actions, n_bins] and the next state for one observation.

        The next state goes to ``out_state`` if given (it may be ``state`` itself: updating in
        place is safe), else to a new array; ``state`` is never modified unless passed as both.
        """
        raise NotImplementedError

    def greedy_action(self, q: np.ndarray) -> np.ndarray:
        """The best bin per joint as an action in [-1, 1] (ObservationSpec.discrete_to_action)."""
        return self._levels[np.argmax(q, axis=-1)]


def checkpoint_identity(path: str | Path) -> str:
    """File name plus the first 12 hex digits of its sha256: what logs record as the policy."""
    path = Path(path)
    return f"{path.name}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# RWKV-4


@dataclass(frozen=True)
class RwkvWeights:
    """The RWKV weights regrouped for one fused step (few arguments, contiguous float32).

    ``vec[l]`` rows are indexed by LN1_W..FFN_MIX_R, with ATT_W holding w = -exp(time_decay).
    """

    emb_w: np.ndarray  # [d, obs_dim]
    emb_b: np.ndarray  # [d]
    ln: np.ndarray  # [4, d]: ln0 weight, ln0 bias, ln_out weight, ln_out bias
    vec: np.ndarray  # [L, 11, d]
    att: np.ndarray  # [L, 4, d, d]: key, value, receptance, output
    ffn_key: np.ndarray  # [L, hidden, d]
    ffn_receptance: np.ndarray  # [L, d, d]
    ffn_value: np.ndarray  # [L, d, hidden]
    head_w: np.ndarray  # [n_actions * n_bins, d], dueling head folded
    head_b: np.ndarray  # [n_actions * n_bins]


class RwkvRuntime(StepRuntime):
    """RWKV-4 step: state [n_layers, 5, d] (x_att, aa, bb, pp, x_ffn) as in ``policies.rwkv``."""

    def __init__(self, weights: dict[str, np.ndarray], meta: CheckpointMeta, identity: str = "in-memory",
                 backend: str = "numba"):
        super().__init__(weights, meta, identity)
        if self.arch.kind != "rwkv4":
            raise CheckpointError(f"RwkvRuntime needs an rwkv4 checkpoint, got {self.arch.kind!r}")
        if backend not in ("numba", "numpy"):
            raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")
        self.backend = backend
        self.w = self._pack()
        self._step_fn = _rwkv_step_numba if backend == "numba" else _rwkv_step_numpy
        self._scratch = np.zeros((8, max(self.arch.d, self.arch.ffn_hidden)), dtype=np.float32)
        # Compile (or load from numba's cache) now, not on the control loop's first tick.
        self.step(np.zeros(self.arch.obs_dim, np.float32), self.initial_state())

    def _pack(self) -> RwkvWeights:
        a = self.arch
        d, h = a.d, a.ffn_hidden

        def layer(i: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
            return self._w(f"blocks.{i}.{name}", shape)

        def mix(i: int, name: str) -> np.ndarray:  # time_mix_* are stored (1, 1, d) as in the reference
            return layer(i, name, (1, 1, d)).reshape(d)

        vec = np.stack([np.stack([
            layer(i, "ln1.weight", (d,)), layer(i, "ln1.bias", (d,)),
            layer(i, "ln2.weight", (d,)), layer(i, "ln2.bias", (d,)),
            mix(i, "att.time_mix_k"), mix(i, "att.time_mix_v"), mix(i, "att.time_mix_r"),
            -np.exp(np.minimum(layer(i, "att.time_decay", (d,)), TIME_DECAY_MAX)), layer(i, "att.time_first", (d,)),
            mix(i, "ffn.time_mix_k"), mix(i, "ffn.time_mix_r"),
        ]) for i in range(a.n_layers)])
        att = np.stack([np.stack([layer(i, f"att.{m}.weight", (d, d))
                                  for m in ("key", "value", "receptance", "output")]) for i in range(a.n_layers)])
        head_w, head_b = self._folded_head()
        return RwkvWeights(
            emb_w=self._w("emb.weight", (d, a.obs_dim)),
            emb_b=self._w("emb.bias", (d,)),
            ln=np.stack([self._w("blocks.0.ln0.weight", (d,)), self._w("blocks.0.ln0.bias", (d,)),
                         self._w("ln_out.weight", (d,)), self._w("ln_out.bias", (d,))]),
            vec=np.ascontiguousarray(vec, dtype=np.float32),
            att=np.ascontiguousarray(att),
            ffn_key=np.stack([layer(i, "ffn.key.weight", (h, d)) for i in range(a.n_layers)]),
            ffn_receptance=np.stack([layer(i, "ffn.receptance.weight", (d, d)) for i in range(a.n_layers)]),
            ffn_value=np.stack([layer(i, "ffn.value.weight", (d, h)) for i in range(a.n_layers)]),
            head_w=head_w,
            head_b=head_b,
        )

    def initial_state(self) -> np.ndarray:
        state = super().initial_state()
        state[:, 3] = PP_EMPTY
        return state

    def step(self, obs: np.ndarray, state: np.ndarray, out_state: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        if out_state is None:
            out_state = np.empty_like(state)
        q = np.empty((self.arch.n_actions, self.arch.n_bins), dtype=np.float32)
        w = self.w
        self._step_fn(np.ascontiguousarray(obs, dtype=np.float32), state, out_state, q, w.emb_w, w.emb_b, w.ln,
                      w.vec, w.att, w.ffn_key, w.ffn_receptance, w.ffn_value, w.head_w, w.head_b, self._scratch)
        return q, out_state


@njit(cache=True, fastmath={"contract", "reassoc", "nsz"})
def _matvec(w, x, out):
    """out = w @ x, row by row (contiguous rows: the reduction vectorises)."""
    for j in range(w.shape[0]):
        acc = np.float32(0.0)
        for i in range(w.shape[1]):
            acc += w[j, i] * x[i]
        out[j] = acc


@njit(cache=True)
def _layer_norm(x, weight, bias, out):
    n = x.shape[0]
    mean = np.float32(0.0)
    for i in range(n):
        mean += x[i]
    mean /= n
    var = np.float32(0.0)
    for i in range(n):
        var += (x[i] - mean) * (x[i] - mean)
    inv = np.float32(1.0) / np.sqrt(var / n + np.float32(LN_EPS))
    for i in range(n):
        out[i] = (x[i] - mean) * inv * weight[i] + bias[i]


@njit(cache=True)
def _sigmoid(x):
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


@njit(cache=True)
def _rwkv_step_numba(obs, state, out_state, q, emb_w, emb_b, ln, vec, att, ffn_key, ffn_receptance, ffn_value,
                     head_w, head_b, scratch):
    """One fused RWKV-4 step; reads every state entry before writing it, so out_state may be state."""
    d = emb_b.shape[0]
    x, xn, xk, xv, xr, k, v, hidden = (scratch[0, :d], scratch[1, :d], scratch[2, :d], scratch[3, :d],
                                       scratch[4, :d], scratch[5, :d], scratch[6, :d], scratch[7])
    _matvec(emb_w, obs, x)
    for c in range(d):
        x[c] += emb_b[c]
    _layer_norm(x, ln[0], ln[1], x)
    for layer in range(vec.shape[0]):
        p = vec[layer]
        # time mix
        _layer_norm(x, p[LN1_W], p[LN1_B], xn)
        for c in range(d):
            prev = state[layer, 0, c]
            xk[c] = xn[c] * p[ATT_MIX_K, c] + prev * (1 - p[ATT_MIX_K, c])
            xv[c] = xn[c] * p[ATT_MIX_V, c] + prev * (1 - p[ATT_MIX_V, c])
            xr[c] = xn[c] * p[ATT_MIX_R, c] + prev * (1 - p[ATT_MIX_R, c])
            out_state[layer, 0, c] = xn[c]
        _matvec(att[layer, KEY], xk, k)
        _matvec(att[layer, VALUE], xv, v)
        _matvec(att[layer, RECEPTANCE], xr, xk)  # xk is free again: it now holds the receptance
        for c in range(d):
            aa, bb, pp = state[layer, 1, c], state[layer, 2, c], state[layer, 3, c]
            ww = p[ATT_U, c] + k[c]
            m = max(pp, ww)
            e1, e2 = np.exp(pp - m), np.exp(ww - m)
            wkv = (e1 * aa + e2 * v[c]) / (e1 * bb + e2)
            ww = pp + p[ATT_W, c]
            m = max(ww, k[c])
            e1, e2 = np.exp(ww - m), np.exp(k[c] - m)
            out_state[layer, 1, c] = e1 * aa + e2 * v[c]
            out_state[layer, 2, c] = e1 * bb + e2
            out_state[layer, 3, c] = m
            xv[c] = _sigmoid(xk[c]) * wkv
        _matvec(att[layer, OUTPUT], xv, k)
        for c in range(d):
            x[c] += k[c]
        # channel mix
        _layer_norm(x, p[LN2_W], p[LN2_B], xn)
        for c in range(d):
            prev = state[layer, 4, c]
            xk[c] = xn[c] * p[FFN_MIX_K, c] + prev * (1 - p[FFN_MIX_K, c])
            xr[c] = xn[c] * p[FFN_MIX_R, c] + prev * (1 - p[FFN_MIX_R, c])
            out_state[layer, 4, c] = xn[c]
        _matvec(ffn_key[layer], xk, hidden)
        for i in range(hidden.shape[0]):
            hidden[i] = max(hidden[i], np.float32(0.0)) ** 2
        _matvec(ffn_value[layer], hidden, v)
        _matvec(ffn_receptance[layer], xr, k)
        for c in range(d):
            x[c] += _sigmoid(k[c]) * v[c]
    _layer_norm(x, ln[2], ln[3], xn)
    qf = q.reshape(-1)
    _matvec(head_w, xn, qf)
    for j in range(qf.shape[0]):
        qf[j] += head_b[j]


def _layer_norm_np(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + np.float32(LN_EPS)) * weight + bias


def _sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _rwkv_step_numpy(obs, state, out_state, q, emb_w, emb_b, ln, vec, att, ffn_key, ffn_receptance, ffn_value,
                     head_w, head_b, scratch):
    """The same step as _rwkv_step_numba, vectorised numpy per layer (same signature)."""
    x = _layer_norm_np(emb_w @ obs + emb_b, ln[0], ln[1])
    for layer, p in enumerate(vec):
        x_att, aa, bb, pp, x_ffn = state[layer].copy()  # copy: out_state may alias state
        xn = _layer_norm_np(x, p[LN1_W], p[LN1_B])
        mixed = xn * p[ATT_MIX_K:ATT_MIX_R + 1] + x_att * (1 - p[ATT_MIX_K:ATT_MIX_R + 1])  # [3, d]: k, v, r
        k, v, r = (att[layer, i] @ mixed[i] for i in (KEY, VALUE, RECEPTANCE))
        ww = p[ATT_U] + k
        m = np.maximum(pp, ww)
        e1, e2 = np.exp(pp - m), np.exp(ww - m)
        wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
        ww = pp + p[ATT_W]
        m = np.maximum(ww, k)
        e1, e2 = np.exp(ww - m), np.exp(k - m)
        out_state[layer, :4] = xn, e1 * aa + e2 * v, e1 * bb + e2, m
        x = x + att[layer, OUTPUT] @ (_sigmoid_np(r) * wkv)
        xn = _layer_norm_np(x, p[LN2_W], p[LN2_B])
        xk = xn * p[FFN_MIX_K] + x_ffn * (1 - p[FFN_MIX_K])
        xr = xn * p[FFN_MIX_R] + x_ffn * (1 - p[FFN_MIX_R])
        out_state[layer, 4] = xn
        x = x + _sigmoid_np(ffn_receptance[layer] @ xr) * (ffn_value[layer] @ np.maximum(ffn_key[layer] @ xk, 0) ** 2)
    q.reshape(-1)[:] = head_w @ _layer_norm_np(x, ln[2], ln[3]) + head_b


# ---------------------------------------------------------------------------------------------
# Baselines (plain numpy)


class GruRuntime(StepRuntime):
    """torch.nn.GRU's equations (gate order r, z, n) per layer; state [n_layers, d]."""

    def __init__(self, weights: dict[str, np.ndarray], meta: CheckpointMeta, identity: str = "in-memory"):
        super().__init__(weights, meta, identity)
        a = self.arch
        self.layers = [
            tuple(self._w(f"gru.{name}_l{i}", shape) for name, shape in (
                ("weight_ih", (3 * a.d, a.obs_dim if i == 0 else a.d)), ("weight_hh", (3 * a.d, a.d)),
                ("bias_ih", (3 * a.d,)), ("bias_hh", (3 * a.d,))))
            for i in range(a.n_layers)
        ]
        self.ln_out = (self._w("ln_out.weight", (a.d,)), self._w("ln_out.bias", (a.d,)))
        self.head_w, self.head_b = self._folded_head()

    def step(self, obs: np.ndarray, state: np.ndarray, out_state: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(obs, dtype=np.float32)
        new = np.empty_like(state)
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            gi = np.split(w_ih @ x + b_ih, 3)
            gh = np.split(w_hh @ state[i] + b_hh, 3)
            r, z = _sigmoid_np(gi[0] + gh[0]), _sigmoid_np(gi[1] + gh[1])
            n = np.tanh(gi[2] + r * gh[2])
            new[i] = x = (1 - z) * n + z * state[i]
        q = (self.head_w @ _layer_norm_np(x, *self.ln_out) + self.head_b).reshape(self.arch.n_actions, -1)
        return q, _store(new, out_state)


class MlpRuntime(StepRuntime):
    """MLP over the last ``history`` observations; state [history, obs_dim], oldest first."""

    def __init__(self, weights: dict[str, np.ndarray], meta: CheckpointMeta, identity: str = "in-memory"):
        super().__init__(weights, meta, identity)
        a = self.arch
        widths = [a.history * a.obs_dim] + [a.d] * a.n_layers
        self.layers = [(self._w(f"layers.{i}.weight", (n_out, n_in)), self._w(f"layers.{i}.bias", (n_out,)))
                       for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:]))]
        self.ln_out = (self._w("ln_out.weight", (a.d,)), self._w("ln_out.bias", (a.d,)))
        self.head_w, self.head_b = self._folded_head()

    def step(self, obs: np.ndarray, state: np.ndarray, out_state: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        new = np.concatenate([state[1:], np.asarray(obs, dtype=np.float32)[None]])
        x = new.reshape(-1)
        for w, b in self.layers:
            x = np.maximum(w @ x + b, 0)
        q = (self.head_w @ _layer_norm_np(x, *self.ln_out) + self.head_b).reshape(self.arch.n_actions, -1)
        return q, _store(new, out_state)


def _store(new: np.ndarray, out_state: np.ndarray | None) -> np.ndarray:
    if out_state is None:
        return new
    out_state[...] = new
    return out_state


RUNTIMES: dict[str, type[StepRuntime]] = {"rwkv4": RwkvRuntime, "gru": GruRuntime, "mlp": MlpRuntime}


def load_runtime(path: str | Path) -> StepRuntime:
    """The runtime for any checkpoint kind (rwkv4 -> RwkvRuntime with numba, gru, mlp)."""
    return StepRuntime.from_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Policy adapter for the daemon


class CheckpointPolicy:
    """A checkpoint's greedy Q-policy behind the daemon's Policy interface (rwkv4, gru or mlp).

    Keeps the recurrent state between ``act`` calls (updated in place, no allocation besides the
    small q array); ``reset`` starts a new episode. With ``spec.decision_ticks = k`` the network
    steps on the first call after a reset and on every k-th call after it; the calls in between
    return the same action (:class:`sim.observation.DecisionHold`, the learner's actors' rule too). The constructor
    checks the checkpoint against the observation contract (and the calibration, if given) and
    raises CheckpointError on any mismatch, so a policy that does not fit is never run.
    """

    def __init__(self, runtime: StepRuntime, spec: ObservationSpec, calibration_identity: str | None = None):
        check_contract(runtime.meta, spec, calibration_identity)
        self.runtime = runtime
        self.spec = spec
        self.name = runtime.arch.kind
        self.identity = runtime.identity
        self._state = runtime.initial_state()
        self._hold = DecisionHold(spec.decision_ticks)
        self._action: np.ndarray | None = None

    def reset(self) -> None:
        self._state = self.runtime.initial_state()
        self._hold.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The greedy action; all NaN when any Q-value is not finite.

        argmax would turn a NaN Q-value into a real bin (the NaN's own, as if it were the
        best), so a network that overflowed would drive the servos; a NaN action is held by
        the daemon's NaN guard instead.
        """
        if self._hold.due:
            q, _ = self.runtime.step(obs, self._state, out_state=self._state)
            self._action = (self.runtime.greedy_action(q) if np.all(np.isfinite(q))
                            else np.full(self.runtime.arch.n_actions, np.nan, dtype=np.float32))
        self._hold.advance()
        return self._action


def load_policy_checkpoint(path: str | Path, calibration_identity: str | None) -> CheckpointPolicy:
    """The daemon's entry point: a checkpoint file -> a contract-checked policy."""
    runtime = load_runtime(path)
    return CheckpointPolicy(runtime, runtime.meta.spec, calibration_identity)

"""The RWKV-4 WKV recurrence over a whole sequence as one compiled scan, forward and backward.

Why: in training the WKV was three quarters of a learner update's time (the chunked masked
T x T form of :func:`policies.rwkv.wkv_parallel` runs ~40 small torch ops per chunk, per layer,
per pass, and its T x T work grows with the chunk). The recurrence itself is a few flops per
step and channel, so one numba scan over ``[B, T, d]`` forward and one backward (gradients
derived by hand below, checked against autograd of the reference forms in tests/test_rwkv.py)
replace it; see docs/performance.md for the measured update rate.

Per channel, with the state as an absolute numerator ``P`` and denominator ``Q`` (the network
stores them as ``aa = P e^-pp``, ``bb = Q e^-pp``) and ``D_t = Q_t + e^(u + k_t)``::

    y_t     = (P_t + e^(u + k_t) v_t) / D_t
    P_t+1   = e^w P_t + e^k_t v_t            Q_t+1 = e^w Q_t + e^k_t

    dL/du   = sum_t g_t e^(u + k_t) (v_t - y_t) / D_t
    dL/dw   = sum_t g_t (P'_t - y_t Q'_t) / D_t,     P'_t+1 = e^w (P_t + P'_t)   (P' = dP/dw; Q' alike)
    dL/dv_i = g_i e^(u + k_i) / D_i + e^k_i Gp_i
    dL/dk_i = g_i e^(u + k_i) (v_i - y_i) / D_i + e^k_i (v_i Gp_i + Gq_i)
    Gp_i    = sum_(t > i) g_t e^((t-1-i) w) / D_t          Gp_i-1 = g_i / D_i + e^w Gp_i
    Gq_i    = -sum_(t > i) g_t y_t e^((t-1-i) w) / D_t     Gq_i-1 = -g_i y_i / D_i + e^w Gq_i

Every running sum is kept with a log scale of its own (``o`` forward, ``r`` backward), shifted by
the running maximum as the step recurrence does, so nothing overflows whatever the keys.
Arithmetic is float64 inside, float32 in and out.

The state the sequence starts from is a constant here (no gradient): the learner starts every
sequence from a stored state or from a burn-in run without gradient. A caller that needs the
gradient through the start state uses the autograd reference (:mod:`policies.rwkv` does so
when the state requires grad).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit
from torch import Tensor


@njit(cache=True, fastmath=False)
def _wkv_forward(w, u, k, v, aa, bb, pp, y, aa_out, bb_out, pp_out, iden, log_den):
    """Forward scan; also keeps 1/D_t's mantissa (``iden``) and log scale (``log_den``) for backward."""
    n_b, n_t, n_c = k.shape
    for b in range(n_b):
        for c in range(n_c):
            ww, uu = float(w[c]), float(u[c])
            p, q, o = float(aa[b, c]), float(bb[b, c]), float(pp[b, c])
            for t in range(n_t):
                kt, vt = float(k[b, t, c]), float(v[b, t, c])
                no = max(o, uu + kt)
                a1, a2 = np.exp(o - no), np.exp(uu + kt - no)
                inv = 1.0 / (a1 * q + a2)
                y[b, t, c] = (a1 * p + a2 * vt) * inv
                iden[b, t, c] = inv
                log_den[b, t, c] = no
                no = max(ww + o, kt)
                a1, a2 = np.exp(ww + o - no), np.exp(kt - no)
                p, q, o = a1 * p + a2 * vt, a1 * q + a2, no
            aa_out[b, c], bb_out[b, c], pp_out[b, c] = p, q, o


@njit(cache=True, fastmath=False)
def _wkv_backward(w, u, k, v, aa, bb, pp, y, iden, log_den, gy, gw, gu, gk, gv):
    """Gradients of sum(gy * y) with respect to w, u (summed over batch), k and v (module docstring)."""
    n_b, n_t, n_c = k.shape
    for b in range(n_b):
        for c in range(n_c):
            ww, uu = float(w[c]), float(u[c])
            # forward again for dL/dw and dL/du: P, Q, P', Q' share the log scale o
            p, q, o = float(aa[b, c]), float(bb[b, c]), float(pp[b, c])
            dp, dq = 0.0, 0.0
            sw, su = 0.0, 0.0
            for t in range(n_t):
                kt, vt, g, yt = float(k[b, t, c]), float(v[b, t, c]), float(gy[b, t, c]), float(y[b, t, c])
                no = float(log_den[b, t, c])
                inv = float(iden[b, t, c])
                a1, a2 = np.exp(o - no), np.exp(uu + kt - no)
                sw += g * (dp - yt * dq) * a1 * inv
                su += g * (vt - yt) * a2 * inv
                no = max(ww + o, kt)
                a1, a2 = np.exp(ww + o - no), np.exp(kt - no)
                dp, dq = a1 * (p + dp), a1 * (q + dq)
                p, q, o = a1 * p + a2 * vt, a1 * q + a2, no
            gw[c] += sw
            gu[c] += su
            # backward scan for dL/dk and dL/dv: Gp, Gq share the log scale r
            gp, gq, r = 0.0, 0.0, -1e300
            for t in range(n_t - 1, -1, -1):
                kt, vt, g, yt = float(k[b, t, c]), float(v[b, t, c]), float(gy[b, t, c]), float(y[b, t, c])
                no = float(log_den[b, t, c])
                inv = float(iden[b, t, c])
                own = g * np.exp(uu + kt - no) * inv
                later = np.exp(kt + r)
                gk[b, t, c] = own * (vt - yt) + later * (vt * gp + gq)
                gv[b, t, c] = own + later * gp
                nr = max(ww + r, -no)
                a1, a2 = np.exp(ww + r - nr), g * inv * np.exp(-no - nr)
                gp, gq, r = a1 * gp + a2, a1 * gq - a2 * yt, nr


class WkvScan(torch.autograd.Function):
    """Autograd wrapper: (w [d], u [d], k [B,T,d], v [B,T,d], aa, bb, pp [B,d]) -> (y, aa', bb', pp')."""

    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor):
        arrays = [t.detach().cpu().contiguous().numpy() for t in (w, u, k, v, aa, bb, pp)]
        n_b, n_t, n_c = arrays[2].shape
        y = np.empty((n_b, n_t, n_c), dtype=np.float32)
        iden = np.empty((n_b, n_t, n_c), dtype=np.float64)
        log_den = np.empty((n_b, n_t, n_c), dtype=np.float64)
        state = [np.empty((n_b, n_c), dtype=np.float32) for _ in range(3)]
        _wkv_forward(*arrays, y, *state, iden, log_den)
        ctx.saved = (arrays, y, iden, log_den)
        dev = k.device
        state_out = [torch.from_numpy(s).to(dev) for s in state]
        ctx.mark_non_differentiable(*state_out)
        return (torch.from_numpy(y).to(dev), *state_out)

    @staticmethod
    def backward(ctx, gy: Tensor, *_state_grads: Tensor):
        arrays, y, iden, log_den = ctx.saved
        w, u, k, v = arrays[:4]
        gw, gu = np.zeros(w.shape, np.float64), np.zeros(u.shape, np.float64)
        gk, gv = np.empty(k.shape, np.float32), np.empty(v.shape, np.float32)
        _wkv_backward(*arrays, y, iden, log_den, gy.detach().cpu().contiguous().numpy(), gw, gu, gk, gv)
        dev = gy.device
        return (torch.from_numpy(gw.astype(np.float32)).to(dev), torch.from_numpy(gu.astype(np.float32)).to(dev),
                torch.from_numpy(gk).to(dev), torch.from_numpy(gv).to(dev), None, None, None)


def wkv_scan(w: Tensor, u: Tensor, k: Tensor, v: Tensor,
             state: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """The :data:`policies.rwkv.WkvFn` interface over :class:`WkvScan` (the start state is a constant)."""
    y, aa, bb, pp = WkvScan.apply(w, u, k, v, *state)
    return y, (aa, bb, pp)

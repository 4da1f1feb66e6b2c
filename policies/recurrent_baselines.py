"""GRU and MLP-over-history Q-networks: the controls for "does the recurrent RWKV help?".

Both have the RWKV network's interface (:class:`policies.rwkv.QNetwork`: ``initial_state``,
``forward_sequence``, ``forward_step``, one fixed-size state tensor) and its branching dueling
head, so the learner, the checkpoint format and the runtime treat all kinds alike.

* ``gru``: ``GRU(obs_dim -> d, n_layers) -> ln_out -> head``; state [B, n_layers, d].
* ``mlp``: the last ``history`` observations (current one included, oldest first) flattened,
  ``n_layers`` Linear+ReLU layers of width d, ``ln_out``, head; state [B, history, obs_dim] is
  that observation window, so it has no memory beyond ``history`` steps (plus the action history
  the observation itself carries).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policies.checkpoint import ArchConfig
from policies.rwkv import DuelingQHead, QNetwork


class GruQNetwork(QNetwork):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        self.input_layer = ("gru.weight_ih_l0", "gru.bias_ih_l0")
        self.gru = nn.GRU(arch.obs_dim, arch.d, arch.n_layers, batch_first=True)
        self.ln_out = nn.LayerNorm(arch.d)
        self.head = DuelingQHead(arch.d, arch.n_actions, arch.n_bins)

    def forward_sequence(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        x, h = self.gru(self.normalize(obs), state.transpose(0, 1).contiguous())
        return self.head(self.ln_out(x)), h.transpose(0, 1)


class MlpQNetwork(QNetwork):
    def __init__(self, arch: ArchConfig):
        super().__init__()
        self.arch = arch
        self.input_layer, self.input_repeats = ("layers.0.weight", "layers.0.bias"), arch.history
        widths = [arch.history * arch.obs_dim] + [arch.d] * arch.n_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.ln_out = nn.LayerNorm(arch.d)
        self.head = DuelingQHead(arch.d, arch.n_actions, arch.n_bins)

    def forward_sequence(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        history = self.arch.history
        seq = torch.cat([state, obs], 1)  # [B, history + T, obs_dim]
        # window t = observations t+1 .. t+history of seq (i.e. ending at obs[:, t]), oldest first
        x = self.normalize(seq.unfold(1, history, 1)[:, 1:].transpose(2, 3).flatten(2))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(self.ln_out(x)), seq[:, -history:]

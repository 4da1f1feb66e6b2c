"""Export a checkpoint's step function to ONNX: (obs [B, obs_dim], state) -> (q, next state).

For running a policy outside Python or on an accelerator runtime; the daemon itself uses
``policies.runtime``. Uses torch's legacy TorchScript-based exporter (``dynamo=False``, deprecated
since torch 2.9 but present in 2.13): the step has no data-dependent control flow, and unlike the
torch.export-based exporter it needs no ``onnxscript``. ``onnx`` and
``onnxruntime`` are optional dependencies (``pip install robotd[onnx]``); the checkpoint metadata
is copied into the model's ``metadata_props`` under ``"robotd"`` so the file stays self-describing.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from policies.checkpoint import METADATA_KEY, CheckpointError, load_checkpoint
from policies.networks import network_from_weights
from policies.rwkv import QNetwork

INPUT_NAMES = ["obs", "state"]
OUTPUT_NAMES = ["q", "next_state"]


class _Step(nn.Module):
    """forward_step as ``forward``, which is what the exporter traces."""

    def __init__(self, net: QNetwork):
        super().__init__()
        self.net = net

    def forward(self, obs: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.net.forward_step(obs, state)


def export_onnx(checkpoint_path: str | Path, out_path: str | Path, opset: int = 17) -> Path:
    """Write the ONNX step model for a checkpoint (any kind); the batch axis is dynamic."""
    import onnx  # optional dependency, needed only here

    weights, meta = load_checkpoint(checkpoint_path)
    net = network_from_weights(meta.architecture, weights).eval()
    obs = torch.zeros(1, meta.architecture.obs_dim)
    state = net.initial_state(1)
    out_path = Path(out_path)
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose (module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _Step(net), (obs, state), str(out_path), input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES},
            opset_version=opset, dynamo=False,
        )
    model = onnx.load(str(out_path))
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta.to_dict())})
    onnx.save(model, str(out_path))
    return out_path

"""Export a checkpoint's step function to ONNX: (obs [B, obs_dim], state) -> (q, next state).

For running a policy outside Python or on an accelerator runtime; the daemon itself uses
``policies.runtime``. Uses torch's legacy TorchScript-based exporter (``dynamo=False``, deprecated
since torch 2.9 but present in 2.13): the step has no data-dependent control flow, and unlike the
torch.export-based exporter it needs no ``onnxscript``. ``onnx`` and
``onnxruntime`` are optional dependencies (``pip install robotd[onnx]``); the checkpoint metadata
is copied into the model's ``metadata_props`` under ``"robotd"`` so the file stays self-describing.
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    """``robotd export CHECKPOINT --onnx [OUT]``: OUT defaults to the checkpoint name with .onnx."""
    parser = argparse.ArgumentParser(prog="robotd export",
                                     description="Export a policy checkpoint's step function (ONNX).")
    parser.add_argument("checkpoint", type=Path, help="the policy checkpoint (.safetensors) to export")
    parser.add_argument("--onnx", nargs="?", const="", metavar="OUT", required=True,
                        help="write the step function as ONNX (default: CHECKPOINT with suffix .onnx)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version to target (default 17)")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT")
    args = parser.parse_args(argv)
    out = Path(args.onnx) if args.onnx else args.checkpoint.with_suffix(".onnx")
    from robotd.cli import existing_output

    refused = existing_output(out, "--onnx", args.force)
    if refused:
        print(f"robotd export: {refused}", file=sys.stderr)
        return 2
    try:
        export_onnx(args.checkpoint, out, opset=args.opset)
    except ImportError as e:
        print(f"robotd export: ONNX export needs the optional onnx package ({e}); pip install robotd[onnx]",
              file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"robotd export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0

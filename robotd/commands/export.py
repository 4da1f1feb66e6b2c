"""``robotd export CHECKPOINT --onnx [OUT]``: the command around :func:`policies.onnx_export.export_onnx`.

Argument parsing and the refusal of an existing output live here, with the other commands, so
that ``policies`` never imports from ``robotd`` (the layers point one way).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robotd.cli import existing_output


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
    refused = existing_output(out, "--onnx", args.force)
    if refused:
        print(f"robotd export: {refused}", file=sys.stderr)
        return 2
    from policies.checkpoint import CheckpointError
    from policies.onnx_export import export_onnx

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

"""``avdp-export CHECKPOINT --out BUNDLE``: a policy checkpoint -> ONNX model bundle.

Writes one ONNX graph per stage and manifest.json (shapes, normalisers, control dt, horizon,
steps, SHA-256 of every file, versions); each graph passes onnx.checker (full) and uses only
operators TensorRT 10 parses. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avdp-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="avdp-train-idm / avdp-train-baseline checkpoint (or its run directory)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--video-mode", choices=("kv", "recompute"), default="kv",
                   help="video graphs: per-frame step with an explicit KV cache (default), or "
                        "whole-sequence recompute per step")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; TensorRT 10 parses <= 20)")
    p.add_argument("--no-decoder", action="store_true", help="skip the tokenizer decoder (no predicted frames)")
    p.add_argument("--no-parity", action="store_true", help="skip the onnxruntime-vs-torch check of each graph")
    p.add_argument("--threads", type=int, default=1, help="torch threads while exporting (default %(default)s)")
    a = p.parse_args(argv)

    import torch

    from avdp_ros.deploy.export import OPSET, ExportError, export_bundle
    from avdp_ros.model.checkpoint import CheckpointError

    torch.set_num_threads(a.threads)
    print(f"avdp-export: {a.checkpoint} -> {a.out}")
    try:
        bundle = export_bundle(a.checkpoint, a.out, video_mode=a.video_mode, opset=a.opset or OPSET,
                               with_decoder=not a.no_decoder, parity=not a.no_parity)
    except (ExportError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"avdp-export: {err}", file=sys.stderr)
        return 1
    m = bundle.manifest
    print(f"wrote {bundle.path}/manifest.json: {m['kind']} policy, stages {bundle.stages}, "
          f"horizon {m['control']['horizon']} at {m['control']['obs_hz']:g} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Checkpoint -> model bundle: one ONNX graph per stage (`stages.py`) plus `manifest.json`.

    from avdp_ros.deploy.export import export_bundle
    export_bundle("models/avdp_default", "runs/deploy/avdp_default")

Each graph is exported with the TorchScript exporter (`torch.onnx.export(dynamo=False)`) at
opset 17 with static shapes at batch 1, checked with `onnx.checker.check_model(full_check=True)`,
checked against `TRT10_OPS` (operators the TensorRT 10 ONNX parser implements) and, when
onnxruntime is installed, run once against torch on random inputs; the per-stage max abs
differences are recorded in the manifest (`parity`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

import avdp_ros
from avdp_ros.deploy.backends import checkpoint_dir
from avdp_ros.deploy.bundle import FORMAT, VERSION, Bundle, write_manifest
from avdp_ros.deploy.stages import VIDEO_MODES, build_stages, example_inputs
from avdp_ros.model.checkpoint import load_checkpoint
from avdp_ros.model.kinds import kind_spec
from avdp_ros.model.policy import Policy

OPSET = 17  # LayerNormalization is a single op from 17; TensorRT 10 parses opsets 9-20

# ONNX operators the TensorRT 10 parser supports (onnx-tensorrt docs/operators.md), restricted to
# what transformer / conv-VAE graphs plausibly contain. A graph with anything else fails export:
# better here than on the Jetson.
TRT10_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
Conv ConvTranspose Cos CumSum Div Einsum Equal Erf Exp Expand Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool Greater GreaterOrEqual GroupNormalization Identity
InstanceNormalization IsNaN LayerNormalization Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mul
Neg Not Or Pad Pow Range Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ScatterElements ScatterND Shape Sigmoid Sign Sin Size Slice Softmax
Split Sqrt Squeeze Sub Sum Tanh Tile Transpose Trilu Unsqueeze Where
""".split())


class ExportError(RuntimeError):
    """A stage could not be exported or failed a check (the message names the stage)."""


def graph_ops(model) -> set[str]:
    """Operator types of an ONNX model, subgraphs included."""
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return ops


def _pin_output_shapes(path: Path, outputs) -> None:
    """The TorchScript exporter leaves some output dims symbolic; every stage is static, so
    write the declared shapes in (full_check's strict shape inference then verifies them)."""
    import onnx

    model = onnx.load(str(path))
    for value, spec in zip(model.graph.output, outputs):
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for n in spec.shape:
            dims.add().dim_value = n
    onnx.save(model, str(path))


def check_graph(path: Path, stage: str, inputs, outputs) -> None:
    """onnx.checker (full), TensorRT-10 operator set and the declared static I/O."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise ExportError(f"stage '{stage}': {path.name} fails onnx.checker ({err})") from err
    model = onnx.load(str(path))
    unsupported = graph_ops(model) - TRT10_OPS
    if unsupported:
        raise ExportError(f"stage '{stage}': {path.name} uses operators outside the TensorRT 10 set: "
                          f"{sorted(unsupported)}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > 20:
        raise ExportError(f"stage '{stage}': opset {opset} > 20, beyond what TensorRT 10 parses")

    def io(values):
        return [(v.name, tuple(d.dim_value for d in v.type.tensor_type.shape.dim)) for v in values]

    declared_in = [(s.name, s.shape) for s in inputs]
    declared_out = [(s.name, s.shape) for s in outputs]
    if io(model.graph.input) != declared_in or io(model.graph.output) != declared_out:
        raise ExportError(f"stage '{stage}': graph I/O {io(model.graph.input)} -> {io(model.graph.output)} "
                          f"does not match the declared {declared_in} -> {declared_out}")


def _stage_parity(path: Path, module: torch.nn.Module, args: tuple, inputs, outputs) -> float | None:
    """Max abs difference of onnxruntime (CPU) against torch on `args`; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run([s.name for s in outputs], {s.name: a.numpy() for s, a in zip(inputs, args)})
    with torch.no_grad():
        ref = module(*args)
    ref = ref if isinstance(ref, tuple) else (ref,)
    return float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))


def _norm(n) -> dict:
    return {"mean": n.mean.detach().cpu().tolist(), "std": n.std.detach().cpu().tolist()}


def export_bundle(checkpoint: str | Path, out: str | Path, video_mode: str = "kv", opset: int = OPSET,
                  with_decoder: bool = True, parity: bool = True, log=print) -> Bundle:
    """Export a policy checkpoint to a bundle directory and return it (validated).

    Args:
        checkpoint: an avdp-train-idm / -baseline checkpoint (or a run with latest/).
        out: bundle directory (created; existing graphs are overwritten).
        video_mode: "kv" (per-frame graph with an explicit padded KV cache, default) or
            "recompute" (one graph over the whole frame sequence per step).
        with_decoder: also export the tokenizer decoder (needed for `return_frames=True`).
        parity: run each graph once in onnxruntime against torch and record the difference.
    """
    import onnx

    if video_mode not in VIDEO_MODES:
        raise ValueError(f"video_mode '{video_mode}': expected one of {VIDEO_MODES}")
    checkpoint, out = Path(checkpoint), Path(out)
    checkpoint = checkpoint_dir(checkpoint) or checkpoint  # a run directory means its latest/
    policy = Policy.from_checkpoint(checkpoint, "cpu")
    _, meta = load_checkpoint(checkpoint, verify=False)
    cfg = policy.cfg
    dims, stages = build_stages(policy, video_mode)
    if not with_decoder:
        stages.pop("decoder", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted export leaves no valid bundle
    g = torch.Generator().manual_seed(0)
    entries, diffs = {}, {}
    for name, (module, inputs, outputs) in stages.items():
        t0 = time.perf_counter()
        args = example_inputs(inputs, cfg, g)
        path = out / f"{name}.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter about asserts / shape inference
            try:
                torch.onnx.export(module, args, str(path), input_names=[s.name for s in inputs],
                                  output_names=[s.name for s in outputs], opset_version=opset,
                                  do_constant_folding=True, dynamo=False)
            except Exception as err:  # noqa: BLE001 - the exporter raises many types
                raise ExportError(f"stage '{name}': torch.onnx.export failed ({err})") from err
        _pin_output_shapes(path, outputs)
        check_graph(path, name, inputs, outputs)
        if parity:
            diffs[name] = _stage_parity(path, module, args, inputs, outputs)
        entries[name] = {"file": path.name, "inputs": [s.to_dict() for s in inputs],
                         "outputs": [s.to_dict() for s in outputs]}
        log(f"  {name:15s} {path.stat().st_size / 1e6:7.2f} MB  {time.perf_counter() - t0:5.1f} s"
            + (f"  ort-vs-torch max|diff| {diffs[name]:.2e}" if diffs.get(name) is not None else ""))
    norms = {"state": _norm(policy.actor.state_norm), "action": _norm(policy.actor.action_norm)}
    if policy.video_state_norm is not None:
        norms["video_state"] = _norm(policy.video_state_norm)
    try:
        import onnxruntime as ort
        ort_version = ort.__version__
    except ImportError:
        ort_version = None
    has_video = kind_spec(policy.kind).has_video
    manifest = {
        "format": FORMAT, "version": VERSION, "kind": policy.kind,
        "config": cfg.to_dict(),
        "control": {"obs_hz": cfg.obs_hz, "dt": 1.0 / cfg.obs_hz, "horizon": cfg.horizon,
                    "context_frames": cfg.context_frames, "future_frames": cfg.future_frames,
                    "past_frames": cfg.idm.past_frames, "video_steps": cfg.video_steps,
                    "action_steps": cfg.action_steps, "relative_actions": cfg.relative_actions,
                    "cameras": list(cfg.cameras), "instructions": list(cfg.instructions)},
        "tokenizer": {"image_size": dims.S, "latent_scale": float(policy.tokenizer.config.latent_scale),
                      "latent_shape": list(cfg.latent_shape),
                      "crops": {cam: list(box) for cam, box in policy.tokenizer.config.crops.items()}},
        "normalizers": norms,
        "video_mode": video_mode if has_video else None,
        "kv_cache": {"max_len": dims.kv_len, "tokens_per_frame": dims.T, "masked_bias": -1.0e4}
        if has_video and video_mode == "kv" else None,
        "stages": entries,
        "files": {},
        "source": {"checkpoint": str(checkpoint.resolve()), "tensors_sha256": meta.get("tensors_sha256")},
        "versions": {"avdp_ros": avdp_ros.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                     "opset": opset, "onnxruntime": ort_version},
        "parity": {"what": "max |onnxruntime CPU - torch| per stage on random inputs, fp32", "max_abs_diff": diffs},
        "created_unix": time.time(),
    }
    write_manifest(out, manifest)
    return Bundle(out)

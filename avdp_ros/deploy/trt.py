"""Native TensorRT (10.x Python API): build engines from a bundle's ONNX graphs, cache them, run
them with pre-allocated device buffers.

Engine cache (default `<bundle>/engines/`), one pair of files per stage and target::

    <stage>.<key>.engine    serialized engine
    <stage>.<key>.json      {stage, gpu, compute_capability, trt_version, onnx_sha256, precision, built_unix}
    timing.cache            TensorRT timing cache shared by every build (rebuilds take seconds)

`key` = SHA-256 of (GPU name, TensorRT version, ONNX SHA-256, precision), so an engine is only
ever loaded on the GPU model and TensorRT version it was built with, for the exact graph it was
built from. When the cache holds engines of a stage for another GPU / TensorRT version and none
for this one, `on_mismatch` decides: "rebuild" (default) builds one for this target next to them,
"refuse" raises `EngineMismatchError` naming both targets (deployments that must never build on
the robot). `build_missing=False` refuses to build at load time at all (use `avdp-build-engine`
ahead of time).

Device buffers are torch CUDA tensors (torch is on every JetPack and GPU image that has
TensorRT); inputs are copied into them, `execute_async_v3` runs on torch's current stream, and
the outputs are the engine's own buffers (valid until the stage runs again).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avdp_ros.deploy.bundle import Bundle, BundleError, ShapeMismatchError, check_feeds

ENGINE_DIR = "engines"
TIMING_CACHE = "timing.cache"
ON_MISMATCH = ("rebuild", "refuse")
PRECISIONS = ("fp16", "fp32")


class EngineMismatchError(BundleError):
    """Cached engines were built for another GPU model or TensorRT version (message names both)."""


class EngineMissingError(BundleError):
    """No engine for this target and building at load time was not allowed."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph (message carries the parser / builder errors)."""


def import_trt():
    """`tensorrt`, or an ImportError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as err:
        raise ImportError("the tensorrt backend needs NVIDIA TensorRT 10 with its Python bindings (JetPack 6 ships "
                          "it; on x86 use NVIDIA's pip index or container). PyPI's tensorrt packages only "
                          "download from NVIDIA's index") from err
    return trt


@dataclass(frozen=True)
class EngineTarget:
    """What an engine is bound to."""

    gpu: str            # torch.cuda.get_device_name
    trt_version: str
    precision: str      # "fp16" | "fp32"
    compute_capability: str = ""

    def describe(self) -> str:
        return f"{self.gpu} (sm {self.compute_capability or '?'}) / TensorRT {self.trt_version} / {self.precision}"


def current_target(device: str = "cuda", precision: str = "fp16") -> EngineTarget:
    import torch

    trt = import_trt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}': expected one of {PRECISIONS}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"TensorRT engines are built and run on a CUDA device; torch {torch.__version__} sees none")
    dev = torch.device(device)
    major, minor = torch.cuda.get_device_capability(dev)
    return EngineTarget(torch.cuda.get_device_name(dev), trt.__version__, precision, f"{major}.{minor}")


def engine_key(target: EngineTarget, onnx_sha256: str) -> str:
    text = "|".join((target.gpu, target.trt_version, onnx_sha256, target.precision))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_engine(engine_dir: str | os.PathLike, stage: str, onnx_sha256: str, target: EngineTarget,
                   on_mismatch: str = "rebuild") -> tuple[Path, str]:
    """Where the engine of `stage` for `target` is and whether it must be built.

    Returns:
        (engine path, "load" | "build").
    Raises:
        EngineMismatchError: with on_mismatch="refuse", when only engines for other GPUs /
            TensorRT versions / graphs exist for this stage.
    """
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch '{on_mismatch}': expected one of {ON_MISMATCH}")
    engine_dir = Path(engine_dir)
    key = engine_key(target, onnx_sha256)
    engine, meta = engine_dir / f"{stage}.{key}.engine", engine_dir / f"{stage}.{key}.json"
    if engine.is_file() and meta.is_file():
        m = json.loads(meta.read_text())
        if (m.get("gpu"), m.get("trt_version"), m.get("onnx_sha256"), m.get("precision")) == \
                (target.gpu, target.trt_version, onnx_sha256, target.precision):
            return engine, "load"
    others = []
    for p in sorted(engine_dir.glob(f"{stage}.*.json")):
        if p == meta:
            continue
        try:
            others.append(json.loads(p.read_text()))
        except json.JSONDecodeError:
            continue
    if others and on_mismatch == "refuse":
        built = "; ".join(f"{o.get('gpu')} / TensorRT {o.get('trt_version')} / {o.get('precision')} / onnx "
                          f"{str(o.get('onnx_sha256'))[:12]}" for o in others)
        raise EngineMismatchError(
            f"stage '{stage}': the engines in {engine_dir} were built for [{built}], not for this "
            f"{target.describe()} / onnx {onnx_sha256[:12]}; build one here with `avdp-build-engine BUNDLE` "
            f"or load with on_mismatch='rebuild'")
    return engine, "build"


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, target: EngineTarget,
                 onnx_sha256: str, stage: str, timing_cache: str | os.PathLike | None = None,
                 workspace_gb: float = 2.0, log=print) -> Path:
    """Parse `onnx_path`, build a serialized engine for `target` (fp16 flag when asked), write it
    and its JSON sidecar atomically; the timing cache is read and updated when given."""
    trt = import_trt()
    engine_path = Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"stage '{stage}': TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if target.precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise EngineBuildError(f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (strongly typed networks "
                                   "only): build with precision='fp32'")
        config.set_flag(trt.BuilderFlag.FP16)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"stage '{stage}': TensorRT failed to build an engine from {onnx_path} "
                               "(see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    if cache_path:
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, cache_path)
    meta = {"stage": stage, "gpu": target.gpu, "compute_capability": target.compute_capability,
            "trt_version": target.trt_version, "onnx_sha256": onnx_sha256, "precision": target.precision,
            "onnx": Path(onnx_path).name, "built_unix": time.time()}
    engine_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    log(f"  built {engine_path.name} ({target.describe()}) in {time.perf_counter() - t0:.1f} s")
    return engine_path


def ensure_engines(bundle: Bundle, target: EngineTarget, engine_dir: str | os.PathLike | None = None,
                   on_mismatch: str = "rebuild", build_missing: bool = True, workspace_gb: float = 2.0,
                   force: bool = False, log=print) -> dict[str, Path]:
    """An engine per stage of `bundle` for `target`, built where missing (or all, with `force`)."""
    engine_dir = Path(engine_dir) if engine_dir else bundle.path / ENGINE_DIR
    out = {}
    for stage in bundle.stages:
        sha = bundle.file_sha256(stage)
        path, action = resolve_engine(engine_dir, stage, sha, target, on_mismatch)
        if action == "build" or force:
            if not build_missing and not force:
                raise EngineMissingError(f"stage '{stage}': no engine for {target.describe()} in {engine_dir} and "
                                         "build_missing=False; run `avdp-build-engine BUNDLE` on this machine")
            build_engine(bundle.graph(stage), path, target, sha, stage, engine_dir / TIMING_CACHE, workspace_gb, log)
        out[stage] = path
    return out


class TrtRunner:
    """TensorRT engines of every stage of a bundle, with pre-allocated device buffers.

    Args:
        device: CUDA device.
        precision: "fp16" (default) or "fp32" engines.
        engine_dir, on_mismatch, build_missing, workspace_gb: see `ensure_engines`.
    """

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp16",
                 engine_dir: str | os.PathLike | None = None, on_mismatch: str = "rebuild",
                 build_missing: bool = True, workspace_gb: float = 2.0, check_shapes: bool = True, log=print):
        import torch

        from avdp_ros.deploy.torch_runner import TorchArrays

        trt = import_trt()
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA device; torch sees none")
        self._arrays = TorchArrays(device)
        self.device = self._arrays.device
        self.bundle = bundle
        self.check_shapes = check_shapes
        self.target = current_target(str(self.device), precision)
        engines = ensure_engines(bundle, self.target, engine_dir, on_mismatch, build_missing, workspace_gb, log=log)
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                  trt.int64: torch.int64, trt.bool: torch.bool}
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engines, self.contexts, self.buffers, self.inputs, self.outputs = {}, {}, {}, {}, {}
        for stage, path in engines.items():
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineMismatchError(f"stage '{stage}': TensorRT {trt.__version__} cannot deserialize {path} "
                                          "(built by another TensorRT version or GPU?); rebuild it with "
                                          "`avdp-build-engine BUNDLE --force`")
            ctx = engine.create_execution_context()
            buffers = {}
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                shape = tuple(engine.get_tensor_shape(name))
                buf = torch.empty(shape, dtype=dtypes[engine.get_tensor_dtype(name)], device=self.device)
                ctx.set_tensor_address(name, buf.data_ptr())
                buffers[name] = buf
            for spec in bundle.inputs(stage) + bundle.outputs(stage):
                got = tuple(buffers[spec.name].shape) if spec.name in buffers else None
                if got != spec.shape:
                    raise ShapeMismatchError(f"stage '{stage}': engine {path.name} tensor '{spec.name}' has shape "
                                             f"{got}, the manifest says {spec.shape}")
            self.engines[stage], self.contexts[stage], self.buffers[stage] = engine, ctx, buffers
            self.inputs[stage] = bundle.inputs(stage)
            self.outputs[stage] = [s.name for s in bundle.outputs(stage)]

    # array helpers: device tensors
    def asarray(self, x):
        return self._arrays.asarray(x)

    def numpy(self, x):
        return self._arrays.numpy(x)

    def zeros(self, shape):
        return self._arrays.zeros(shape)

    def cat(self, xs, axis):
        return self._arrays.cat(xs, axis)

    def copy(self, x):
        return self._arrays.copy(x)

    def sync(self) -> None:
        self._arrays.sync()

    def run(self, stage: str, feeds: dict[str, Any]) -> dict[str, Any]:
        import torch

        if self.check_shapes:
            check_feeds(stage, self.inputs[stage], feeds)
        buffers = self.buffers[stage]
        for name, x in feeds.items():
            buffers[name].copy_(x)  # same stream as the engine: ordered, no host sync
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.contexts[stage].execute_async_v3(stream):
            raise RuntimeError(f"stage '{stage}': TensorRT execute_async_v3 failed")
        return {name: buffers[name] for name in self.outputs[stage]}

"""onnxruntime runner: one `InferenceSession` per stage of a bundle, numpy in and out.

Execution providers are asked for by short name, in priority order: "cpu", "cuda", "tensorrt"
(onnxruntime's TensorRT EP, with its engine + timing cache in `engine_cache`). CPU is always
appended last, so nodes a GPU provider rejects still run. A provider that this onnxruntime build
lacks (or that fails to initialise, e.g. missing CUDA libraries) is an error naming it and
listing the available ones, unless `allow_fallback=True`, which drops it with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.deploy.bundle import Bundle, BundleError, ShapeMismatchError, check_feeds
from avdp_ros.deploy.runtime import NumpyArrays

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


class ProviderError(RuntimeError):
    """A requested onnxruntime execution provider is not available (message names it)."""


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
                          "(onnxruntime-gpu for the CUDA / TensorRT execution providers)") from err
    return ort


def parse_providers(providers: str | list[str] | tuple[str, ...]) -> list[str]:
    """"cuda,cpu" / ["tensorrt", "cuda"] -> short names, validated, CPU last."""
    names = [p.strip().lower() for p in (providers.split(",") if isinstance(providers, str) else providers)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"onnxruntime providers {unknown}: expected names from {list(PROVIDERS)}")
    return [n for n in names if n != "cpu"] + ["cpu"]


def resolve_providers(names: list[str], available: list[str], allow_fallback: bool) -> list[str]:
    """Short names -> available onnxruntime provider names; a missing one raises ProviderError
    (or is dropped with a warning when `allow_fallback`)."""
    out = []
    for n in names:
        full = PROVIDERS[n]
        if full in available:
            out.append(n)
            continue
        msg = (f"onnxruntime execution provider {full} (requested as '{n}') is not available in this onnxruntime "
               f"build; available: {available}")
        if not allow_fallback:
            raise ProviderError(msg + ". Install onnxruntime-gpu (CUDA / TensorRT EPs) or pass allow_fallback=True "
                                      "to run on the remaining providers")
        warnings.warn(msg + "; falling back (allow_fallback=True)", RuntimeWarning, stacklevel=3)
    return out


class OrtRunner(NumpyArrays):
    """Sessions for every stage of `bundle`.

    Args:
        providers: short provider names in priority order (see module docstring).
        allow_fallback: drop unavailable providers with a warning instead of raising.
        threads: intra-op threads per session (0 = onnxruntime's default, all cores).
        device_id: GPU index for the CUDA / TensorRT providers.
        engine_cache: TensorRT EP engine + timing cache directory (default <bundle>/engines/ort_trt).
        fp16: let the TensorRT EP build fp16 engines.
        check_shapes: validate every feed against the manifest before running.
    """

    def __init__(self, bundle: Bundle, providers=("cpu",), allow_fallback: bool = False, threads: int = 0,
                 device_id: int = 0, engine_cache: str | os.PathLike | None = None, fp16: bool = True,
                 check_shapes: bool = True):
        ort = _import_ort()
        self.bundle = bundle
        self.check_shapes = check_shapes
        names = resolve_providers(parse_providers(providers), ort.get_available_providers(), allow_fallback)
        cache = Path(engine_cache) if engine_cache else bundle.path / "engines" / "ort_trt"
        options = {
            "cpu": {},
            "cuda": {"device_id": device_id},
            "tensorrt": {"device_id": device_id, "trt_fp16_enable": bool(fp16), "trt_engine_cache_enable": True,
                         "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
                         "trt_timing_cache_path": str(cache)},
        }
        if "tensorrt" in names:
            cache.mkdir(parents=True, exist_ok=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        provider_list = [(PROVIDERS[n], options[n]) for n in names]
        self.sessions, self.outputs = {}, {}
        self.inputs = {stage: bundle.inputs(stage) for stage in bundle.stages}
        for stage in bundle.stages:
            sess = ort.InferenceSession(str(bundle.graph(stage)), so, providers=provider_list)
            got = sess.get_providers()
            for n in names:  # a provider listed as available can still fail to load its libraries
                if PROVIDERS[n] not in got:
                    msg = (f"onnxruntime execution provider {PROVIDERS[n]} (requested as '{n}') failed to initialise "
                           f"for stage '{stage}' (session providers {got}; check the CUDA / TensorRT libraries)")
                    if not allow_fallback:
                        raise ProviderError(msg)
                    warnings.warn(msg + "; falling back (allow_fallback=True)", RuntimeWarning, stacklevel=2)
            self._check_session(stage, sess)
            self.sessions[stage] = sess
            self.outputs[stage] = [s.name for s in bundle.outputs(stage)]
        self.providers = self.sessions[bundle.stages[0]].get_providers()

    def _check_session(self, stage: str, sess) -> None:
        """The graph's I/O must be what the manifest declares (the manifest is the contract)."""
        declared = {s.name: s.shape for s in self.bundle.inputs(stage)}
        actual = {i.name: tuple(i.shape) for i in sess.get_inputs()}
        if set(declared) != set(actual):
            raise BundleError(f"bundle {self.bundle.path}: stage '{stage}' graph inputs {sorted(actual)} "
                              f"!= manifest {sorted(declared)}")
        for name, shape in declared.items():
            if actual[name] != shape:
                raise ShapeMismatchError(f"bundle {self.bundle.path}: stage '{stage}' input '{name}' has shape "
                                         f"{actual[name]} in the graph but {shape} in the manifest")

    def run(self, stage: str, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        if self.check_shapes:
            check_feeds(stage, self.inputs[stage], feeds)
        outs = self.sessions[stage].run(self.outputs[stage], feeds)
        return dict(zip(self.outputs[stage], outs))

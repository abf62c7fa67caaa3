"""Torch runners: device-tensor array helpers (shared with the TensorRT runner) and the torch stage
runner, which runs the same static-shape stage modules the exporter exports, optionally under
autocast (fp16 / bf16) and with one CUDA graph captured per stage.

Why stages for CUDA graphs: a graph needs fixed shapes and addresses. `Policy.infer` grows its
KV cache frame by frame; the stages take the cache padded to its final size, so each stage is
one graph captured once and replayed for every step of every call.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from avdp_ros.deploy.bundle import Spec, check_feeds
from avdp_ros.deploy.runtime import PolicyMeta
from avdp_ros.deploy.stages import build_stages
from avdp_ros.model.kinds import kind_spec
from avdp_ros.model.policy import Policy

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchArrays:
    """Array helpers for runners whose arrays are torch tensors on `device`."""

    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)

    def asarray(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy()

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.zeros(shape, device=self.device)

    def cat(self, xs: list, axis: int) -> torch.Tensor:
        return torch.cat(xs, dim=axis)

    def copy(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def _specs(specs) -> list[Spec]:
    return [Spec(s.name, s.shape, np.dtype(s.dtype)) for s in specs]


def meta_from_policy(policy: Policy, video_mode: str = "kv") -> PolicyMeta:
    """The driver's metadata taken from a torch policy instead of a manifest."""
    def norm(n):
        return n.mean.detach().cpu().numpy().astype(np.float32), n.std.detach().cpu().numpy().astype(np.float32)

    norms = {"state": norm(policy.actor.state_norm), "action": norm(policy.actor.action_norm)}
    if policy.video_state_norm is not None:
        norms["video_state"] = norm(policy.video_state_norm)
    _, stages = build_stages(policy, video_mode)
    specs = {name: (_specs(ins), _specs(outs)) for name, (_, ins, outs) in stages.items()}
    has_video = kind_spec(policy.kind).has_video
    return PolicyMeta(policy.cfg, policy.kind, video_mode if has_video else None, norms, specs)


class TorchStageRunner(TorchArrays):
    """Runs the stage modules of a torch `Policy` (on its device).

    Args:
        dtype: "fp32", or "fp16" / "bf16" autocast (CUDA only; outputs are returned as fp32).
        cuda_graphs: capture each stage once as a CUDA graph (after a warm-up) and replay it.
        video_mode: "kv" or "recompute" (see stages.py).
    """

    def __init__(self, policy: Policy, dtype: str = "fp32", cuda_graphs: bool = False, video_mode: str = "kv",
                 check_shapes: bool = True):
        super().__init__(policy.device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype '{dtype}': expected one of {list(DTYPES)}")
        if (dtype != "fp32" or cuda_graphs) and self.device.type != "cuda":
            raise ValueError(f"dtype={dtype}, cuda_graphs={cuda_graphs} need a CUDA device, the policy is on "
                             f"'{self.device}' (on CPU use dtype='fp32', cuda_graphs=False)")
        _, stages = build_stages(policy, video_mode)
        self.modules = {name: m for name, (m, _, _) in stages.items()}
        self.inputs = {name: _specs(ins) for name, (_, ins, _) in stages.items()}
        self.outputs = {name: [s.name for s in outs] for name, (_, _, outs) in stages.items()}
        self.dtype = DTYPES[dtype]
        self.cuda_graphs = cuda_graphs
        self.check_shapes = check_shapes
        self.graphs: dict[str, tuple[Any, dict, dict]] = {}

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        # no autocast weight cache: a CUDA graph must not capture a cache filled outside it
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=False)

    def _call(self, stage: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad(), self._autocast():
            outs = self.modules[stage](*(feeds[s.name] for s in self.inputs[stage]))
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {name: o.float() for name, o in zip(self.outputs[stage], outs)}

    def _capture(self, stage: str, feeds: dict[str, torch.Tensor]) -> None:
        static_in = {name: x.clone() for name, x in feeds.items()}
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up off the capture: cuBLAS handles, lazy inits
                self._call(stage, static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._call(stage, static_in)
        self.graphs[stage] = (graph, static_in, static_out)

    def run(self, stage: str, feeds: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.check_shapes:
            check_feeds(stage, self.inputs[stage], feeds)
        if not self.cuda_graphs:
            return self._call(stage, feeds)
        if stage not in self.graphs:
            self._capture(stage, feeds)
        graph, static_in, static_out = self.graphs[stage]
        for name, x in feeds.items():
            static_in[name].copy_(x)
        graph.replay()
        return static_out  # reused by the next replay; the driver copies what it keeps

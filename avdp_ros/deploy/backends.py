"""One loader for every inference backend; what it returns has `Policy`'s interface.

    policy = load_policy("onnxruntime", "runs/deploy/avdp_default")
    out = policy.infer(obs)            # {"actions" (H, 8), "timings": {...}[, "predicted_frames"]}

| backend       | path                    | options (defaults)                                                   |
| ------------- | ----------------------- | -------------------------------------------------------------------- |
| `torch`       | checkpoint directory    | dtype fp32/fp16/bf16, cuda_graphs False, staged False, video_mode kv |
| `onnxruntime` | bundle (`avdp-export`)  | providers (cpu; cuda on a cuda device), allow_fallback False,        |
|               |                         | threads 0, engine_cache, fp16 True, seed, verify True                |
| `tensorrt`    | bundle                  | precision fp16, engine_dir, on_mismatch rebuild, build_missing True, |
|               |                         | workspace_gb 2, seed, verify True                                    |

`torch` with defaults returns the plain `Policy` (eager, exactly what the training code runs).
fp16 / bf16 wrap it in CUDA autocast; `cuda_graphs=True` (or `staged=True`) runs the exported
stage modules through `StagedPolicy` instead (static shapes, one CUDA graph per stage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from avdp_ros.deploy.bundle import Bundle, BundleError, is_bundle
from avdp_ros.deploy.runtime import PolicyMeta, StagedPolicy

BACKENDS = ("torch", "onnxruntime", "tensorrt")
OPTIONS = {
    "torch": {"dtype", "cuda_graphs", "staged", "video_mode", "seed"},
    "onnxruntime": {"providers", "allow_fallback", "threads", "engine_cache", "fp16", "seed", "verify",
                    "check_shapes"},
    "tensorrt": {"precision", "engine_dir", "on_mismatch", "build_missing", "workspace_gb", "seed", "verify",
                 "check_shapes"},
}


class AutocastPolicy:
    """A torch `Policy` run under CUDA autocast (fp16 / bf16); same interface."""

    supports_prefix = True

    def __init__(self, policy, dtype):
        self.policy, self.dtype = policy, dtype
        self.cfg = policy.cfg

    @property
    def obs_hz(self) -> float:
        return self.policy.obs_hz

    @property
    def kind(self) -> str:
        return self.policy.kind

    def reset(self) -> None:
        self.policy.reset()

    def _autocast(self):
        import torch

        return torch.autocast(device_type=self.policy.device.type, dtype=self.dtype)

    def observe(self, obs: dict) -> float:
        with self._autocast():
            return self.policy.observe(obs)

    def infer(self, obs: dict, noise: dict | None = None, return_frames: bool = False, prefix=None) -> dict:
        with self._autocast():
            return self.policy.infer(obs, noise=noise, return_frames=return_frames, prefix=prefix)


def _bundle(path: Path, backend: str, verify: bool) -> Bundle:
    if (path / "checkpoint.json").exists() or (path / "latest" / "checkpoint.json").exists():
        raise BundleError(f"model {path} is a torch checkpoint; the {backend} backend runs an exported bundle: "
                          f"avdp-export {path} --out BUNDLE_DIR, then point the model at BUNDLE_DIR")
    return Bundle(path, verify=verify)


def _load_torch(path: Path, device: str, video_steps, action_steps, dtype: str = "fp32", cuda_graphs: bool = False,
                staged: bool = False, video_mode: str = "kv", seed: int | None = None):
    import torch

    from avdp_ros.deploy.torch_runner import DTYPES, TorchStageRunner, meta_from_policy
    from avdp_ros.model.policy import Policy

    if dtype not in DTYPES:
        raise ValueError(f"torch backend dtype '{dtype}': expected one of {list(DTYPES)}")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}': torch {torch.__version__} sees no CUDA device")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs a CUDA device, got device '{device}'")
    if dtype != "fp32" and dev.type != "cuda":
        raise ValueError(f"dtype '{dtype}' (autocast) is for CUDA devices, got device '{device}'; use fp32 on CPU")
    if seed is not None and not (cuda_graphs or staged):
        raise ValueError("seed: the eager torch Policy draws noise from torch's global generator "
                         "(torch.manual_seed, or pass noise= to infer); seed applies to staged / cuda_graphs runs")
    if is_bundle(path):
        raise BundleError(f"model {path} is an exported bundle; the torch backend loads the checkpoint it came "
                          f"from ({Bundle(path, verify=False).manifest.get('source', {}).get('checkpoint', '?')}) "
                          "or use backend onnxruntime / tensorrt for the bundle")
    policy = Policy.from_checkpoint(path, dev, video_steps=video_steps, action_steps=action_steps)
    if cuda_graphs or staged:
        runner = TorchStageRunner(policy, dtype, cuda_graphs, video_mode)
        label = f"torch-staged[{dev}, {dtype}{', cuda graphs' if cuda_graphs else ''}]"
        return StagedPolicy(meta_from_policy(policy, video_mode), runner, video_steps, action_steps, seed, label)
    if dtype != "fp32":
        return AutocastPolicy(policy, DTYPES[dtype])
    return policy


def load_policy(backend: str, path: str | os.PathLike, device: str = "cpu", video_steps: int | None = None,
                action_steps: int | None = None, **options: Any):
    """The policy behind the one interface (`infer`, `observe`, `reset`, `obs_hz`, `cfg`, `kind`).

    Args:
        backend: "torch", "onnxruntime" or "tensorrt".
        path: checkpoint directory (torch) or bundle directory (onnxruntime, tensorrt).
        device: "cpu", "cuda", "cuda:N". onnxruntime defaults its providers from it.
        video_steps, action_steps: Euler steps (None: the checkpoint's / manifest's).
        options: backend options (module docstring); unknown ones raise TypeError.
    Raises:
        ValueError: unknown backend or bad option values; BundleError for bad bundles.
        FileNotFoundError: nothing at `path`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")
    unknown = set(options) - OPTIONS[backend]
    if unknown:
        raise TypeError(f"backend '{backend}': unknown options {sorted(unknown)}; accepted: {sorted(OPTIONS[backend])}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if backend == "torch":
        return _load_torch(path, device, video_steps, action_steps, **options)
    seed = options.pop("seed", None)
    bundle = _bundle(path, backend, options.pop("verify", True))
    meta = PolicyMeta.from_bundle(bundle)
    if backend == "onnxruntime":
        from avdp_ros.deploy.ort import OrtRunner

        dev = str(device or "cpu")
        options.setdefault("providers", ("cuda",) if dev.startswith("cuda") else ("cpu",))
        if dev.startswith("cuda:"):
            options.setdefault("device_id", int(dev.split(":", 1)[1]))
        runner = OrtRunner(bundle, **options)
        label = f"onnxruntime[{','.join(runner.providers)}]"
    else:
        from avdp_ros.deploy.trt import TrtRunner

        if not str(device).startswith("cuda"):
            raise ValueError(f"the tensorrt backend runs on a CUDA device, got device '{device}'")
        runner = TrtRunner(bundle, device=device, **options)
        label = f"tensorrt[{runner.target.describe()}]"
    return StagedPolicy(meta, runner, video_steps, action_steps, seed, label)

"""One loader for every inference backend; what it returns has `Policy`'s interface.

    policy = load_policy("onnxruntime", "runs/deploy/avdp_default")
    out = policy.infer(obs)            # {"actions" (H, 8), "timings": {...}[, "predicted_frames"]}

| backend       | path                   | options (defaults)                                           |
| ------------- | ---------------------- | ------------------------------------------------------------ |
| `torch`       | checkpoint directory   | dtype fp32/fp16/bf16, cuda_graphs False, staged False,       |
|               |                        | video_mode kv                                                |
| `onnxruntime` | bundle (`avdp-export`) | providers (cpu; cuda on a cuda device), allow_fallback False, |
|               |                        | threads 0, engine_cache, fp16 True, seed, verify True        |
| `tensorrt`    | bundle                 | precision fp16, engine_dir, on_mismatch rebuild,             |
|               |                        | build_missing True, workspace_gb 2, seed, verify True        |

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
DEFAULT_MODEL = "avdp_default"  # models/<this>: the policy the ROS node runs when given no model
_SIDECAR = "checkpoint.json"  # = model.checkpoint.SIDECAR, which cannot be imported without torch
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


class NotABundleError(BundleError, FileNotFoundError):
    """A bundle backend pointed at a directory without manifest.json (often the torch checkpoint)."""


def default_model_path() -> Path:
    """models/avdp_default from the source tree, else from the installed share/ directory."""
    here = Path(__file__).resolve().parents[2] / "models" / DEFAULT_MODEL
    if here.exists():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("avdp_ros")) / "models" / DEFAULT_MODEL
        if installed.exists():
            return installed
    except Exception:  # noqa: BLE001 - not installed: the source-tree path is named in the error
        pass
    return here


def find_model(model: str | os.PathLike, how_to_set: str = "the model") -> Path:
    """The directory a `model` setting names ('' = the default model).

    Args:
        how_to_set: how the caller's user names another model, for the error.
    Raises:
        FileNotFoundError: nothing there; the message says how to train the default model.
    """
    path = Path(model).expanduser() if str(model) else default_model_path()
    if not path.exists():
        raise FileNotFoundError(
            f"model checkpoint {path} does not exist: set {how_to_set} to an avdp-train-idm or "
            "avdp-train-baseline run, or train the default action-only policy with `EXPORT=baseline "
            "scripts/train_default.sh` (it copies runs/default/baseline_targeted/latest to "
            f"models/{DEFAULT_MODEL}; see models/README.md)")
    return path


def checkpoint_dir(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory `path` names: itself or a training run's latest/; None if neither."""
    path = Path(path)
    for candidate in (path, path / "latest"):
        if (candidate / _SIDECAR).exists():
            return candidate
    return None


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend '{backend}': expected one of {', '.join(BACKENDS)}")


def check_model_dir(backend: str, path: Path) -> None:
    """Refuse an existing `path` that `backend` cannot load: torch loads a checkpoint (or a run
    with one in latest/), onnxruntime and tensorrt an exported bundle.

    Raises:
        FileNotFoundError: no checkpoint in `path` for torch.
        BundleError: a bundle given to torch; `NotABundleError` (also a FileNotFoundError) when a
            bundle backend finds no manifest.json.
    """
    if backend == "torch":
        if is_bundle(path):
            source = Bundle(path, verify=False).manifest.get("source", {}).get("checkpoint", "?")
            raise BundleError(f"model {path} is an exported bundle; the torch backend loads the checkpoint "
                              f"it came from ({source}) or use backend onnxruntime / tensorrt for the bundle")
        if checkpoint_dir(path) is None:
            raise FileNotFoundError(f"model {path}: no checkpoint.json in it or in its latest/: expected a "
                                    "checkpoint directory written by avdp-train-idm or avdp-train-baseline")
    elif not is_bundle(path):
        if checkpoint_dir(path) is not None:
            raise NotABundleError(
                f"model {path} is a torch checkpoint; the {backend} backend runs an exported bundle and "
                f"finds no manifest.json: the {backend} backend runs a bundle written by `avdp-export {path} "
                "--out BUNDLE_DIR`; point the model at BUNDLE_DIR (see docs/deployment.md)")
        raise NotABundleError(f"model {path}: no manifest.json: the {backend} backend runs a bundle exported "
                              f"with `avdp-export CHECKPOINT --out DIR` (see docs/deployment.md)")


def _load_torch(path: Path, device: str, video_steps, action_steps, dtype: str = "fp32",
                cuda_graphs: bool = False, staged: bool = False, video_mode: str = "kv",
                seed: int | None = None):
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
        raise ValueError(f"dtype '{dtype}' (autocast) is for CUDA devices, got device '{device}'; "
                         "use fp32 on CPU")
    if seed is not None and not (cuda_graphs or staged):
        raise ValueError("seed: the eager torch Policy draws noise from torch's global generator "
                         "(torch.manual_seed, or pass noise= to infer); seed applies to staged / "
                         "cuda_graphs runs")
    check_model_dir("torch", path)
    policy = Policy.from_checkpoint(path, dev, video_steps=video_steps, action_steps=action_steps)
    if cuda_graphs or staged:
        runner = TorchStageRunner(policy, dtype, cuda_graphs, video_mode)
        label = f"torch-staged[{dev}, {dtype}{', cuda graphs' if cuda_graphs else ''}]"
        meta = meta_from_policy(policy, video_mode)
        return StagedPolicy(meta, runner, video_steps, action_steps, seed, label)
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
        ValueError: unknown backend or bad option values; BundleError for bad bundles and for a
            checkpoint / bundle given to the wrong backend (`check_model_dir`).
        FileNotFoundError: nothing at `path`, or nothing `backend` loads in it.
    """
    check_backend(backend)
    unknown = set(options) - OPTIONS[backend]
    if unknown:
        raise TypeError(f"backend '{backend}': unknown options {sorted(unknown)}; "
                        f"accepted: {sorted(OPTIONS[backend])}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if backend == "torch":
        return _load_torch(path, device, video_steps, action_steps, **options)
    seed = options.pop("seed", None)
    check_model_dir(backend, path)
    bundle = Bundle(path, verify=options.pop("verify", True))
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

"""Deployment: export a policy checkpoint to an ONNX bundle and run it through one inference
interface with torch, onnxruntime or TensorRT backends (docs/deployment.md).

    from avdp_ros.deploy import load_policy
    policy = load_policy("onnxruntime", "runs/deploy/avdp_default")   # or "torch", CHECKPOINT
    out = policy.infer(obs)

Modules: `bundle` (manifest, hashes, shape checks), `stages` (the static-shape stage modules),
`export` (torch -> ONNX), `runtime` (`StagedPolicy`, the sampling loops in numpy), `npops`
(numpy pre/post-processing), `ort`, `trt`, `torch_runner` (runners), `backends` (`load_policy`).
Importing this package imports neither torch nor onnxruntime.
"""

from avdp_ros.deploy.backends import BACKENDS, load_policy
from avdp_ros.deploy.bundle import Bundle, BundleError, HashMismatchError, ShapeMismatchError

__all__ = ["BACKENDS", "Bundle", "BundleError", "HashMismatchError", "ShapeMismatchError", "load_policy"]

"""The numpy half of an exported policy: pre- and post-processing around the graphs.

Everything the torch `Policy` does outside its networks is mirrored here in float32 numpy, so
the onnxruntime and TensorRT backends need no torch (a Jetson user installs onnxruntime or
TensorRT and numpy, nothing else):

- image preprocessing: uint8 (H, W, 3) -> float (3, S, S) in [0, 1] with the same antialiased
  bilinear resize as `tokenizer.to_float_images` (torch's `interpolate(antialias=True)`, written
  as two weight matrices),
- proprio: pose (7,) + gripper -> state (10,) = x y z rot6d width,
- actions: unnormalise, undo relative actions, rot6d -> quaternion,
- the Euler time grid of `flow.timesteps` (torch's float32 `linspace`, bit for bit).

Each function names its torch twin; test/test_deploy.py checks them against each other.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from avdp_ros.images import crop_box

F32 = np.float32


# ---- images ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _aa_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float32 weights of torch's antialiased bilinear resize along one axis
    (aten `_compute_indices_min_size_weights_aa`, align_corners=False): a triangle filter
    stretched by the scale when shrinking, plain bilinear when enlarging."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    w = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax)
        row = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = row.sum()
        w[i, xmin:xmax] = row / total if total > 0 else row
    return w.astype(F32)


def images_to_float(images: np.ndarray, size: int, crop=None) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, size, size) in [0, 1], cut to the optional crop
    fractions first (twin of `to_float_images`)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] != 3:
        raise ValueError(f"images: {x.dtype} {x.shape}, expected uint8 (N, H, W, 3) RGB")
    if crop is not None:
        y0, y1, x0, x1 = crop_box(x.shape[1], x.shape[2], crop)
        x = x[:, y0:y1, x0:x1]
    x = x.transpose(0, 3, 1, 2).astype(F32) / F32(255.0)  # (N, 3, H, W)
    H, W = x.shape[-2:]
    if (H, W) != (size, size):
        wh, ww = _aa_bilinear_weights(H, size), _aa_bilinear_weights(W, size)
        x = wh @ x @ ww.T  # (N, 3, size, size): rows then columns, separable like torch
    return np.clip(x, 0.0, 1.0).astype(F32, copy=False)


# ---- rotations (twins of avdp_ros.model.rotation, float32) -------------------------------------


def _normalize(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """torch.nn.functional.normalize: v / max(|v|, eps)."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), F32(eps))


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) (x, y, z, w) -> (..., 3, 3)."""
    x, y, z, w = np.moveaxis(_normalize(q), -1, 0)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]
    return np.stack(rows, axis=-1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 4) unit quaternion (x, y, z, w), w >= 0 (Shepperd, as in torch)."""
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    four_sq = np.stack([1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                        1 - m00 - m11 + m22, 1 + m00 + m11 + m22], axis=-1)
    candidates = np.stack([
        np.stack([four_sq[..., 0], m01 + m10, m02 + m20, m21 - m12], axis=-1),
        np.stack([m01 + m10, four_sq[..., 1], m12 + m21, m02 - m20], axis=-1),
        np.stack([m02 + m20, m12 + m21, four_sq[..., 2], m10 - m01], axis=-1),
        np.stack([m21 - m12, m02 - m20, m10 - m01, four_sq[..., 3]], axis=-1),
    ], axis=-2)  # (..., 4, 4)
    best = four_sq.argmax(axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = _normalize(q)
    return np.where(q[..., 3:4] < 0, -q, q)


def matrix_to_rot6d(m: np.ndarray) -> np.ndarray:
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def rot6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = _normalize(a1)
    b2 = _normalize(a2 - (b1 * a2).sum(-1, keepdims=True) * b1)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def pose_to_state10(ee_pose: np.ndarray, gripper: float) -> np.ndarray:
    """(7,) pose + width -> (10,) float32 x y z rot6d width (twin of `model.rotation.pose_to_state10`)."""
    pose = np.asarray(ee_pose, F32)
    rot6d = matrix_to_rot6d(quat_to_matrix(pose[3:7]))
    return np.concatenate([pose[:3], rot6d, np.asarray([gripper], F32)]).astype(F32)


def pose7_to_pose9(pose: np.ndarray) -> np.ndarray:
    """(..., 7) x y z qx qy qz qw -> (..., 9) x y z rot6d (twin of `rotation.pose7_to_pose9`)."""
    return np.concatenate([pose[..., :3], matrix_to_rot6d(quat_to_matrix(pose[..., 3:7]))], axis=-1)


def actions_to_relative(actions: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(..., H, 10) absolute + (..., 10) state -> relative (twin of `rotation.actions_to_relative`)."""
    s = state[..., None, :]
    r_rel = np.swapaxes(rot6d_to_matrix(s[..., 3:9]), -1, -2) @ rot6d_to_matrix(actions[..., 3:9])
    return np.concatenate([actions[..., :3] - s[..., :3], matrix_to_rot6d(r_rel), actions[..., 9:10]], axis=-1)


def actions_from_relative(rel: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(..., H, 10) relative + (..., 10) state -> absolute (twin of `rotation.actions_from_relative`)."""
    s = state[..., None, :]
    r_abs = rot6d_to_matrix(s[..., 3:9]) @ rot6d_to_matrix(rel[..., 3:9])
    return np.concatenate([rel[..., :3] + s[..., :3], matrix_to_rot6d(r_abs), rel[..., 9:10]], axis=-1)


def actions_to_pose8(actions10: np.ndarray) -> np.ndarray:
    """(H, 10) x y z rot6d width -> (H, 8) float64 pose7 + width (as `Policy.infer` returns)."""
    quat = matrix_to_quat(rot6d_to_matrix(actions10[:, 3:9]))
    return np.concatenate([actions10[:, :3], quat, actions10[:, 9:10]], axis=-1).astype(np.float64)


# ---- flow sampling ---------------------------------------------------------------------------


def euler_grid(steps: int) -> np.ndarray:
    """(steps + 1,) float32 times 1 -> 0, equal to `torch.linspace(1, 0, steps + 1)` (float32)."""
    if steps < 1:
        raise ValueError(f"sampling steps = {steps}: expected >= 1")
    n = steps + 1
    step = F32((F32(0.0) - F32(1.0)) / F32(n - 1))
    i = np.arange(n)
    half = n // 2
    # torch fills the first half from the start and the second half from the end
    return np.where(i < half, F32(1.0) + step * i.astype(F32), F32(0.0) - step * (n - 1 - i).astype(F32)).astype(F32)

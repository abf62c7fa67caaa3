"""Rotations in torch: quaternion (x, y, z, w) <-> matrix <-> 6D (first two columns of R).

The 6D form (Zhou et al. 2019) is continuous, which is why actions and proprio use it; mapping a
network's raw 6D output back to a rotation uses Gram-Schmidt. Quaternions come out with w >= 0,
the same sign convention as `avdp_ros.geometry`. Also pose helpers between the 7-vector pose
(x, y, z, qx, qy, qz, qw) and the 9-vector (x, y, z, rot6d).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) quaternion (x, y, z, w), normalised here -> (..., 3, 3) rotation matrix."""
    q = F.normalize(q, dim=-1)
    x, y, z, w = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))  # (..., 3, 3)


def matrix_to_quat(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrix -> (..., 4) unit quaternion (x, y, z, w) with w >= 0.

    Each of the four candidate formulas divides by the largest of (4w^2, 4x^2, 4y^2, 4z^2), which
    keeps it well conditioned for every rotation (Shepperd's method), then the best one is picked.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    four_sq = torch.stack([1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                           1 - m00 - m11 + m22, 1 + m00 + m11 + m22], dim=-1)  # (..., 4): 4x^2 4y^2 4z^2 4w^2
    candidates = torch.stack([
        torch.stack([four_sq[..., 0], m01 + m10, m02 + m20, m21 - m12], dim=-1),  # each = 4x * q
        torch.stack([m01 + m10, four_sq[..., 1], m12 + m21, m02 - m20], dim=-1),  # 4y * q
        torch.stack([m02 + m20, m12 + m21, four_sq[..., 2], m10 - m01], dim=-1),  # 4z * q
        torch.stack([m21 - m12, m02 - m20, m10 - m01, four_sq[..., 3]], dim=-1),  # 4w * q
    ], dim=-2)  # (..., 4, 4)
    best = four_sq.argmax(dim=-1)  # (...)
    q = torch.gather(candidates, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = F.normalize(q, dim=-1)
    return torch.where(q[..., 3:4] < 0, -q, q)


def matrix_to_rot6d(m: Tensor) -> Tensor:
    """(..., 3, 3) -> (..., 6): first column then second column of R."""
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def rot6d_to_matrix(d6: Tensor) -> Tensor:
    """(..., 6) (any two non-parallel vectors) -> (..., 3, 3) rotation via Gram-Schmidt."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns b1, b2, b3


def quat_to_rot6d(q: Tensor) -> Tensor:
    """(..., 4) (x, y, z, w) -> (..., 6)."""
    return matrix_to_rot6d(quat_to_matrix(q))


def rot6d_to_quat(d6: Tensor) -> Tensor:
    """(..., 6) -> (..., 4) (x, y, z, w), w >= 0."""
    return matrix_to_quat(rot6d_to_matrix(d6))


def pose7_to_pose9(pose: Tensor) -> Tensor:
    """(..., 7) (x, y, z, qx, qy, qz, qw) -> (..., 9) (x, y, z, rot6d)."""
    return torch.cat([pose[..., :3], quat_to_rot6d(pose[..., 3:7])], dim=-1)


def pose9_to_pose7(pose: Tensor) -> Tensor:
    """(..., 9) (x, y, z, rot6d) -> (..., 7) (x, y, z, qx, qy, qz, qw)."""
    return torch.cat([pose[..., :3], rot6d_to_quat(pose[..., 3:9])], dim=-1)


def actions_to_relative(actions: Tensor, state: Tensor) -> Tensor:
    """Express (..., H, 10) absolute actions (x y z rot6d width) relative to the (..., 10) state
    they were planned from: position as an offset from the state's position (base frame), rotation
    as R_state^T R_action in 6D, gripper width unchanged.

    Why: in absolute coordinates most of an action is "where the arm already is", which the
    network must copy exactly from its state input; relative to the state, a chunk is the motion
    itself (UMI, openpi's delta actions), so errors in the copy cannot move the arm.
    """
    s = state[..., None, :]  # (..., 1, 10)
    r_s = rot6d_to_matrix(s[..., 3:9])
    r_rel = r_s.transpose(-1, -2) @ rot6d_to_matrix(actions[..., 3:9])
    return torch.cat([actions[..., :3] - s[..., :3], matrix_to_rot6d(r_rel), actions[..., 9:10]], dim=-1)


def actions_from_relative(rel: Tensor, state: Tensor) -> Tensor:
    """Inverse of `actions_to_relative`: (..., H, 10) relative + (..., 10) state -> absolute."""
    s = state[..., None, :]
    r_abs = rot6d_to_matrix(s[..., 3:9]) @ rot6d_to_matrix(rel[..., 3:9])
    return torch.cat([rel[..., :3] + s[..., :3], matrix_to_rot6d(r_abs), rel[..., 9:10]], dim=-1)


def pose_to_state10(ee_pose: np.ndarray, gripper: np.ndarray) -> np.ndarray:
    """(N, 7) pose x y z qx qy qz qw + (N,) width -> (N, 10) x y z rot6d width float32: the state
    (and absolute action) layout of config.STATE_DIM / ACTION_DIM."""
    pose = torch.from_numpy(np.array(ee_pose, dtype=np.float32))  # copy: mmap is read-only
    rot6d = quat_to_rot6d(pose[:, 3:7])  # (N, 6)
    width = torch.from_numpy(np.array(gripper, dtype=np.float32)).reshape(-1, 1)
    return torch.cat([pose[:, :3], rot6d, width], dim=1).numpy().astype(np.float32)

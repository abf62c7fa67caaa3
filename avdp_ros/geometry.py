"""Small SE(3) helpers shared by the sim, the converter and the nodes.

Quaternions are ROS order (x, y, z, w) everywhere in this package; MuJoCo's (w, x, y, z)
is converted at the MuJoCo boundary only (``quat_to_mj`` / ``quat_from_mj``).
Poses are 7-vectors (x, y, z, qx, qy, qz, qw).
"""

from __future__ import annotations

import numpy as np


def quat_normalize(q: np.ndarray) -> np.ndarray:
    """Unit quaternion with non-negative w (one sign per rotation makes averaging and tests sane)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n < 1e-12):
        raise ValueError(f"zero-norm quaternion {q!r}: expected a unit quaternion (x, y, z, w)")
    q = q / n
    return np.where(q[..., 3:4] < 0.0, -q, q)


def quat_to_mj(q_xyzw: np.ndarray) -> np.ndarray:
    q = np.asarray(q_xyzw, dtype=np.float64)
    return np.concatenate([q[..., 3:4], q[..., :3]], axis=-1)


def quat_from_mj(q_wxyz: np.ndarray) -> np.ndarray:
    q = np.asarray(q_wxyz, dtype=np.float64)
    return np.concatenate([q[..., 1:4], q[..., 0:1]], axis=-1)


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a*b of (x, y, z, w) quaternions (broadcasts)."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quat_conj(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:4]], axis=-1)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.moveaxis(quat_normalize(q), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) -> unit quaternion (x, y, z, w)."""
    m = np.asarray(m, dtype=np.float64)
    t = np.trace(m)
    if t > 0:
        s = np.sqrt(t + 1.0) * 2
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    return quat_normalize(np.array(q))


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, radians) of a (x, y, z, w) quaternion, angle in [0, pi]."""
    q = quat_normalize(q)
    v = q[..., :3]
    s = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(s, q[..., 3:4])
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-12), 2.0)
    return v * scale


def axis_angle_to_quat(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    angle = np.linalg.norm(r, axis=-1, keepdims=True)
    half = 0.5 * angle
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.where(angle > 1e-12, np.sin(half) / np.maximum(angle, 1e-12), 0.5)
    return quat_normalize(np.concatenate([r * k, np.cos(half)], axis=-1))


def quat_angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (radians) between two rotations."""
    d = np.abs(np.sum(quat_normalize(a) * quat_normalize(b), axis=-1))
    return 2.0 * np.arccos(np.clip(d, -1.0, 1.0))


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation between (x, y, z, w) quaternions a and b at fraction t (broadcasts)."""
    a = quat_normalize(a)
    b = quat_normalize(b)
    t = np.asarray(t, dtype=np.float64)[..., None]
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0.0, -b, b)  # shortest arc
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-6  # fall back to lerp where the arc is tiny
    with np.errstate(invalid="ignore", divide="ignore"):
        wa = np.where(near, 1.0 - t, np.sin((1.0 - t) * theta) / np.where(near, 1.0, sin_theta))
        wb = np.where(near, t, np.sin(t * theta) / np.where(near, 1.0, sin_theta))
    return quat_normalize(wa * a + wb * b)


def interpolate_poses(stamps: np.ndarray, poses: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Pose trajectory (N, 7) sampled at `stamps` (N,), evaluated at `query` (M,).

    Positions are interpolated linearly, rotations by slerp; queries outside the stamps are
    clamped to the end poses. Stamps must be strictly increasing.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    poses = np.asarray(poses, dtype=np.float64)
    query = np.asarray(query, dtype=np.float64)
    if stamps.ndim != 1 or poses.shape != (stamps.shape[0], 7) or stamps.shape[0] == 0:
        raise ValueError(f"expected stamps (N,) and poses (N, 7), got {stamps.shape} and {poses.shape}")
    if np.any(np.diff(stamps) <= 0):
        raise ValueError("pose stamps must be strictly increasing")
    if stamps.shape[0] == 1:
        return np.repeat(poses, query.shape[0], axis=0)
    q = np.clip(query, stamps[0], stamps[-1])
    hi = np.clip(np.searchsorted(stamps, q, side="right"), 1, stamps.shape[0] - 1)
    lo = hi - 1
    t = (q - stamps[lo]) / (stamps[hi] - stamps[lo])
    pos = poses[lo, :3] + t[:, None] * (poses[hi, :3] - poses[lo, :3])
    rot = slerp(poses[lo, 3:], poses[hi, 3:], t)
    return np.concatenate([pos, rot], axis=-1)

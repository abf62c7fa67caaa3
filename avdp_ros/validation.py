"""Input checks shared by every consumer of pose commands and observations (sim bridge, commander,
converter, every policy backend).

Each check returns None when the input is fine, or a message naming what was wrong and what was
expected, so callers can log it (throttled) and keep the last safe state.
"""

from __future__ import annotations

import numpy as np


def check_pose(pose7: np.ndarray, frame_id: str, expected_frame: str, what: str = "pose") -> str | None:
    """Validate a (x, y, z, qx, qy, qz, qw) pose and its frame.

    Args:
        pose7: the pose as a 7-vector.
        frame_id: the frame the sender stamped it in.
        expected_frame: the only frame we accept (we do not run tf here).
        what: name of the input for the message (e.g. the topic).
    """
    if frame_id != expected_frame:
        return f"{what}: frame_id '{frame_id}', expected '{expected_frame}'"
    pose7 = np.asarray(pose7, dtype=np.float64)
    if pose7.shape != (7,):
        return f"{what}: expected 7 values (x, y, z, qx, qy, qz, qw), got shape {pose7.shape}"
    if not np.all(np.isfinite(pose7)):
        return f"{what}: non-finite value in {np.array2string(pose7, precision=3)}, expected finite numbers"
    n = float(np.linalg.norm(pose7[3:]))
    if not 0.5 < n < 1.5:
        return f"{what}: quaternion norm {n:.3f}, expected a unit quaternion (norm 1)"
    return None


def check_width(width: float, lo: float, hi: float, what: str = "gripper command") -> str | None:
    if not np.isfinite(width):
        return f"{what}: non-finite width {width}, expected metres in [{lo}, {hi}]"
    return None


def check_observation(obs: dict, cameras: tuple[str, ...]) -> None:
    """The observation dict a policy takes (any backend): a uint8 (H, W, 3) RGB image per camera, a
    finite 7-vector ee pose and a finite gripper width. Raises ValueError naming the bad key."""
    for cam in cameras:
        img = obs.get(cam)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = "missing" if img is None else f"{getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
            raise ValueError(f"observation '{cam}': {got}, expected a uint8 (H, W, 3) RGB image")
    pose = np.asarray(obs.get("ee_pose", ()), dtype=np.float64)
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ValueError(f"observation 'ee_pose': {np.array2string(pose, precision=3, max_line_width=200)}, "
                         "expected 7 finite numbers (x y z qx qy qz qw)")
    if not np.isfinite(float(obs.get("gripper", np.nan))):
        raise ValueError(f"observation 'gripper': {obs.get('gripper')!r}, expected a finite width in metres")

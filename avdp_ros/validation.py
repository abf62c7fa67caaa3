"""Input checks shared by every consumer of pose commands (sim bridge, commander, converter).

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

"""Putting recorded streams on one time grid: nearest frames, held commands, the command lead.

Stamps are int64 nanoseconds, sorted where a function says so. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def nearest_indices(stamps: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp for each query (stamps sorted) and the |difference| in ns."""
    hi = np.clip(np.searchsorted(stamps, query), 0, len(stamps) - 1)
    lo = np.clip(hi - 1, 0, len(stamps) - 1)
    pick = np.where(np.abs(stamps[lo] - query) <= np.abs(stamps[hi] - query), lo, hi)
    return pick, np.abs(stamps[pick] - query)


def zero_order_hold(stamps: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the latest stamp at or before each query; -1 where there is none (stamps sorted)."""
    return np.searchsorted(stamps, query, side="right") - 1


def command_lead_s(pose_t: np.ndarray, pose_xyz: np.ndarray, cmd_t: np.ndarray, cmd_xyz: np.ndarray,
                   max_lead_s: float = 0.5, step_s: float = 0.01, min_travel_m: float = 0.02) -> float | None:
    """How far the commanded target runs ahead of the measured pose, from their stamps: the shift d
    minimising |pose(t + d) - command(t)|. A tracking controller lags its target, so d > 0; d < 0
    means the command and state stamps come from clocks that disagree (unsynchronised machines, a
    simulator clock drifting from the wall), and every recorded action is stale by |d|.
    None if the arm barely moves (< `min_travel_m`), where the lead is not observable."""
    if len(cmd_t) < 2 or len(pose_t) < 2 or np.ptp(cmd_xyz, axis=0).max() < min_travel_m:
        return None
    t = (cmd_t - pose_t[0]) * 1e-9
    tp = (pose_t - pose_t[0]) * 1e-9
    leads = np.arange(-max_lead_s, max_lead_s + 1e-9, step_s)
    err = [np.mean(np.linalg.norm(np.stack([np.interp(t + d, tp, pose_xyz[:, k]) for k in range(3)], 1) - cmd_xyz,
                                  axis=1)) for d in leads]
    return float(leads[int(np.argmin(err))])


def sorted_unique(stamps: list[int], values: list) -> tuple[np.ndarray, np.ndarray]:
    """Sort by stamp, keep the last sample of duplicate stamps (interpolation needs strict order)."""
    st = np.asarray(stamps, dtype=np.int64)
    va = np.asarray(values, dtype=np.float64)
    order = np.argsort(st, kind="stable")
    st, va = st[order], va[order]
    keep = np.append(st[1:] != st[:-1], True)
    return st[keep], va[keep]

"""What avdp-eval-ros measures, from what its evaluator node recorded (pure: no ROS).

Times are seconds on the bridge's clock (header stamps), relative to the run's first
current_pose: `Episode` holds them so; `episode_metrics` turns them into seconds since the
episode's reset, and `summarize` pools the episodes of a run into the summary.json dict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from avdp_ros.evaluation.faults import RELAYED
from avdp_ros.evaluation.ros_config import EvalRosConfig

HOLD_EPS = 1e-4  # m/s (and rad/s): a command "moves" faster than this; held commands are bit-identical
LIMIT_SLACK = 1e-3  # relative: speeds are recomputed from ns stamps, the filter used float seconds


@dataclass
class Episode:
    """What the evaluator recorded for one episode; times in s relative to the run's origin
    (bridge clock)."""

    seed: int
    t_start: float
    t_end: float = math.nan
    success: bool = False
    duration_s: float = math.nan
    commands: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))  # (N, 9) arrival, stamp, pose7
    poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 8)))  # (M, 8) stamp, pose7
    chunks: list[dict] = field(default_factory=list)
    plans: list[np.ndarray] = field(default_factory=list)  # (K, 4) stamp, xyz per /avdp/plan
    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (stamp, both cameras side by side)
    fault_window: tuple[float, float] | None = None
    diag_before: dict = field(default_factory=dict)
    diag_after: dict = field(default_factory=dict)
    messages: list[tuple[float, str]] = field(default_factory=list)  # non-OK /diagnostics, policy warnings


def _numbers(values: dict) -> dict[str, float]:
    """The numeric entries of a /diagnostics key-value dict; text entries (estop "clear", reasons)
    are not counters and are left out."""
    out = {}
    for k, v in values.items():
        try:
            out[k] = float(v)
        except ValueError:
            continue  # a text value: nothing to count
    return out


# the policy's /diagnostics keys that count events (the rest are rates, latencies or text)
COUNTERS = ("safety.", "ingest.", "chunks_rejected", "inference_errors", "inference_overruns",
            "no_observation")


def counter_delta(before: dict, after: dict, prefixes=COUNTERS) -> dict[str, int]:
    """Counters of the policy's /diagnostics that rose between two snapshots."""
    b, a = _numbers(before), _numbers(after)
    rose = {k: a[k] - b.get(k, 0) for k in sorted(a) if k.startswith(prefixes)}
    return {k: int(n) for k, n in rose.items() if n > 0}


def percentiles(values, qs=(50, 99)) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, q)) if v.size else math.nan for q in qs]


def speeds(stamps: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linear (m/s) and angular (rad/s) speed of each step between successive commands (N-1,)."""
    from avdp_ros.geometry import quat_angle

    dt = np.diff(stamps)
    if dt.size == 0:
        return np.zeros(0), np.zeros(0)
    dt = np.where(dt > 0, dt, np.nan)  # a repeated stamp is no motion we can rate
    lin = np.linalg.norm(np.diff(poses[:, :3], axis=0), axis=1) / dt
    ang = quat_angle(poses[:-1, 3:], poses[1:, 3:]) / dt
    return np.nan_to_num(lin), np.nan_to_num(ang)


def chunk_ages_ms(cmd_stamps: np.ndarray, chunks: list[dict]) -> np.ndarray:
    """Age (ms) of the executing chunk's observation at each command: command stamp minus t_obs of
    the newest accepted chunk that had arrived, for commands inside that chunk's plan."""
    ok = sorted((c for c in chunks if not c["error"] and c["kept"] > 0), key=lambda c: c["arrival"])
    if not ok:
        return np.zeros(0)
    arrivals = np.array([c["arrival"] for c in ok])
    idx = np.searchsorted(arrivals, cmd_stamps, side="right") - 1
    ages = []
    for t, i in zip(cmd_stamps, idx):
        if i >= 0 and t <= ok[i]["plan_end"]:
            ages.append((t - ok[i]["t_obs"]) * 1e3)
    return np.asarray(ages)


def in_intervals(t: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    mask = np.zeros(t.shape, dtype=bool)
    for a, b in intervals:
        mask |= (t >= a) & (t <= b)
    return mask


def fault_outcome(window: tuple[float, float], stamps: np.ndarray, poses: np.ndarray, chunks: list[dict],
                  hold_s: float, period_s: float) -> dict:
    """What the commander did around a fault window [a, b) (times relative to the episode start).

    The commander may finish the plan it had when the fault began: it must hold from
    `hold_from` = (end of the last plan accepted before b) + hold_s on. Returns the predicted and
    the measured hold, the fastest command inside the hold (must be ~0), the fastest inside the
    whole window (within the limits anyway), and when motion resumed after b.
    """
    a, b = window
    lin, ang = speeds(stamps, poses)
    moving = (lin > HOLD_EPS) | (ang > HOLD_EPS)  # step k is stamps[k] -> stamps[k+1]
    before_b = [c for c in chunks if not c["error"] and c["kept"] > 0 and c["arrival"] < b]
    plan_end = max((c["plan_end"] for c in before_b), default=-math.inf)
    hold_from = max(a, plan_end + hold_s + period_s)  # one period: the tick that finds the plan stale
    steps_in_hold = (stamps[:-1] >= hold_from) & (stamps[1:] <= b)
    win = (stamps[:-1] >= a) & (stamps[1:] <= b)
    before = (stamps[:-1] >= a - 1.0) & (stamps[1:] <= a)  # was it moving at all? (else nothing to stop)
    moved_in_win = np.flatnonzero(win & moving)
    onset = float(stamps[moved_in_win[-1] + 1]) if moved_in_win.size else a  # last move ended here
    after = np.flatnonzero((stamps[:-1] >= b) & moving)
    accepted_after = [c for c in chunks if not c["error"] and c["kept"] > 0 and c["arrival"] >= b]
    return {
        "window_s": [round(a, 3), round(b, 3)],
        "last_plan_end_s": round(plan_end, 3) if math.isfinite(plan_end) else None,
        "hold_expected_from_s": round(hold_from, 3),
        "hold_expected_s": round(max(0.0, b - hold_from), 3),
        "commands_in_hold": int(steps_in_hold.sum()),
        "max_speed_in_hold": float(lin[steps_in_hold].max()) if steps_in_hold.any() else None,
        "max_angular_speed_in_hold": float(ang[steps_in_hold].max()) if steps_in_hold.any() else None,
        "held": bool(steps_in_hold.sum() >= 2 and not moving[steps_in_hold].any()),
        "measured_hold_from_s": round(onset, 3),
        "measured_hold_s": round(b - onset, 3),
        "reaction_s": round(onset - a, 3),
        "max_speed_in_window": float(lin[win].max()) if win.any() else None,
        "max_speed_1s_before": float(lin[before].max()) if before.any() else None,
        "chunks_rejected_in_window": sum(1 for c in chunks if c["error"] and a <= c["arrival"] < b + 0.5),
        "first_chunk_after_s": round(accepted_after[0]["arrival"] - b, 3) if accepted_after else None,
        "resumed_after_s": round(float(stamps[after[0] + 1]) - b, 3) if after.size else None,
        "recovered": bool(after.size),
    }


def _max(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return round(float(v.max()), 2) if v.size else math.nan


def _stats(prefix: str, values, qs=(50, 99), digits: int = 2) -> dict:
    return {f"{prefix}_p{q}": round(v, digits) for q, v in zip(qs, percentiles(values, qs))}


def running_from(ep: Episode) -> float:
    """Arrival of the episode's first accepted chunk (bridge clock): from then on the filter is
    anchored at the new episode's pose and the policy is running. Before it the commander only
    holds, after one jump from the previous episode's last command to the re-anchored pose."""
    return next((c["arrival"] for c in ep.chunks if not c["error"] and c["kept"] > 0), math.inf)


def episode_metrics(ep: Episode, params: dict) -> dict:
    """Per-episode numbers: latency, command timing, safety limits, the fault outcome. Times are
    seconds since the episode's reset from here on."""
    cmd = ep.commands
    stamps, poses = cmd[:, 1] - ep.t_start, cmd[:, 2:]
    chunks = [{**c, **{k: c[k] - ep.t_start for k in ("t_obs", "arrival", "plan_end")}} for c in ep.chunks]
    accepted = [c for c in chunks if not c["error"] and c["kept"] > 0]
    run = stamps >= running_from(ep) - ep.t_start
    lin, ang = speeds(stamps[run], poses[run])
    lo, hi = np.array(params["workspace_min"]), np.array(params["workspace_max"])
    period_s = 1.0 / float(params["command_rate_hz"])
    infer_windows = [(c["arrival"] - c["total_ms"] * 1e-3, c["arrival"]) for c in chunks
                     if math.isfinite(c["total_ms"])]
    st = stamps[run]
    if st.size > 1:
        during = in_intervals(st[1:], infer_windows) & in_intervals(st[:-1], infer_windows)
    else:
        during = st[:0]
    m = {
        "seed": ep.seed, "success": bool(ep.success), "duration_s": round(float(ep.duration_s), 2),
        "commands": int(len(cmd)), "chunks": len(ep.chunks), "chunks_accepted": len(accepted),
        "chunks_rejected": sum(1 for c in ep.chunks if c["error"]),
        "plans": len(ep.plans),
        "first_chunk_s": round(accepted[0]["arrival"], 3) if accepted else None,
        "max_linear_speed": float(lin.max()) if lin.size else 0.0,
        "max_angular_speed": float(ang.max()) if ang.size else 0.0,
        "inside_workspace": bool(np.all(poses[:, :3] >= lo - 1e-9) and np.all(poses[:, :3] <= hi + 1e-9)),
        "counters": counter_delta(ep.diag_before, ep.diag_after),
        "_periods_arrival_ms": np.diff(cmd[run, 0]) * 1e3,
        "_periods_stamp_ms": np.diff(st) * 1e3,
        "_periods_infer_ms": np.diff(st)[during] * 1e3 if st.size > 1 else np.zeros(0),
        "_ages_ms": chunk_ages_ms(st, chunks),
    }
    slack = 1 + LIMIT_SLACK
    m["within_limits"] = bool(m["inside_workspace"]
                              and m["max_linear_speed"] <= float(params["max_linear_speed"]) * slack
                              and m["max_angular_speed"] <= float(params["max_angular_speed"]) * slack)
    if ep.fault_window is not None:
        a, b = ep.fault_window[0] - ep.t_start, ep.fault_window[1] - ep.t_start
        nan_chunks = [c for c in chunks if "non-finite" in c["error"]]
        if nan_chunks:  # the wrapper's window is on observation stamps: measure it from the chunks
            after = [c for c in accepted if c["t_obs"] > nan_chunks[-1]["t_obs"]]
            a, b = nan_chunks[0]["t_obs"], after[0]["t_obs"] if after else ep.t_end - ep.t_start
        out = fault_outcome((a, b), stamps, poses, chunks, float(params["hold_s"]), period_s)
        # what named it: the policy's non-OK /diagnostics and warnings from the fault to 1 s after it
        out["messages"] = list(dict.fromkeys(text[:240] for t, text in ep.messages
                                             if a <= t - ep.t_start <= b + 1.0))
        m["fault"] = out
    return m


def summarize(episodes: list[Episode], cfg: EvalRosConfig, params: dict, baseline: dict, final: dict,
              relayed: dict) -> dict:
    per = [episode_metrics(ep, params) for ep in episodes]
    cat = lambda key: np.concatenate([m[key] for m in per] or [np.zeros(0)])  # noqa: E731
    chunks = [c for ep in episodes for c in ep.chunks]
    # first inference of each episode excluded (warm-up after the reset), as avdp-eval does
    infer = [c["total_ms"] for ep in episodes for c in ep.chunks[1:]]
    o2c = [c["obs_to_chunk_ms"] for c in chunks if not c["error"]]
    ok = [m["success"] for m in per]
    s = {
        "task": cfg.task, "episodes": len(per), "success_rate": float(np.mean(ok)) if ok else 0.0,
        "failed_seeds": [m["seed"] for m in per if not m["success"]],
        "mean_duration_s": round(float(np.mean([m["duration_s"] for m in per])), 3) if per else 0.0,
        **_stats("infer_ms", infer, digits=1), "infer_calls": len(infer),
        "via": "ros", "mode": "in-process" if cfg.in_process else "processes", "policy": str(cfg.policy),
        "seed": cfg.seed, "time_limit_s": cfg.time_limit, "settle_s": cfg.settle,
        "use_sim_time": cfg.use_sim_time, "real_time_factor": cfg.real_time_factor,
        "torch_threads": params.get("torch_threads"),
        "command_rate_hz": params.get("command_rate_hz"), "fault": asdict(cfg.fault),
        **_stats("obs_to_chunk_ms", o2c, (50, 95, 99), 1), "obs_to_chunk_samples": len(o2c),
        "chunks": len(chunks), "chunks_rejected": sum(1 for c in chunks if c["error"]),
        **_stats("command_period_ms", cat("_periods_arrival_ms")),
        "command_period_ms_max": _max(cat("_periods_arrival_ms")),
        **_stats("command_stamp_period_ms", cat("_periods_stamp_ms")),
        "command_stamp_period_ms_max": _max(cat("_periods_stamp_ms")),
        **_stats("command_period_during_inference_ms", cat("_periods_infer_ms")),
        "command_period_during_inference_ms_max": _max(cat("_periods_infer_ms")),
        "command_periods_during_inference": int(cat("_periods_infer_ms").size),
        **_stats("chunk_age_ms", cat("_ages_ms"), digits=1),
        "max_linear_speed": max((m["max_linear_speed"] for m in per), default=0.0),
        "max_angular_speed": max((m["max_angular_speed"] for m in per), default=0.0),
        "within_limits": all(m["within_limits"] for m in per),
        "limits": {k: params[k] for k in ("max_linear_speed", "max_angular_speed", "workspace_min",
                                          "workspace_max")},
    }
    run = counter_delta(baseline, final)
    s["interventions"] = {k.removeprefix("safety."): n for k, n in run.items() if k.startswith("safety.")}
    s["counters"] = {k: n for k, n in run.items() if not k.startswith("safety.")}
    s["node_latency_ms"] = {k.removeprefix("latency."): float(v) for k, v in final.items()
                            if k.startswith("latency.") and k.endswith((".p50", ".p99"))}
    if cfg.fault.kind in RELAYED:
        s["relay"] = dict(relayed)
    s["results"] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in per]
    return s

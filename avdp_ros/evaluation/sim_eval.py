"""Closed-loop evaluation without ROS (avdp-eval, avdp-dagger): the same MuJoCo task code the
bridge uses, driven by a policy through the openpi-style boundary (`reset()`,
`infer(obs) -> {"actions": (H, 8)}`).

Timing model (matches the recorded data): observations at `obs_hz` (the dataset rate); a chunk
of H targets, one per 1/obs_hz; the first `execute_steps` are executed (receding horizon), each
streamed to the controller at `stream_hz` with linear position / slerp rotation interpolation
from the previous target, as a teleop stream would be. The sim waits while the policy thinks
(latency is measured and reported, not simulated; the ROS path in the policy node handles it).

Success rule: the task's success test runs after every executed action (every 1/obs_hz of sim
time), and the episode ends, successful, the first time it passes; `duration` is the sim time
then. Nothing has to hold. avdp-eval-ros (`tools/eval_ros.py`) runs the same seeds with the same
time limit but ends an episode only once success has held for `--settle` s (0.5 by default) on
the bridge's clock, so a success that is touched and lost counts here and not there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from avdp_ros.geometry import slerp


class PolicyLike(Protocol):
    def reset(self) -> None: ...

    def infer(self, obs: dict) -> dict: ...


class Monitor(Protocol):
    """Watches an episode without acting on it (e.g. ``sim.dagger.ExpertLabeller``)."""

    def on_observation(self, sim, obs: dict) -> None: ...  # every 1/obs_hz, before the policy sees it

    def on_stream(self, sim) -> None: ...  # every 1/stream_hz, before the target is set


SEES = ("scene", "nominal", "nominal_camera", "nominal_wrist")  # EvalConfig.sees


@dataclass
class EvalConfig:
    task: str = "push"
    episodes: int = 50
    seed: int = 0  # episode i uses seed + i
    seeds: tuple[int, ...] = ()  # explicit episode seeds instead (then episodes = len(seeds))
    obs_hz: float = 10.0  # observation / action-chunk rate (the dataset's obs_hz)
    execute_steps: int = 4  # actions executed per chunk before replanning
    stream_hz: float = 50.0  # target interpolation rate inside one action period
    time_limit: float = 15.0  # sim seconds per episode
    image_size: tuple[int, int] = (128, 128)  # (H, W) rendered, as in the recorded dataset
    videos: int = 2  # episodes whose frames are kept for a video
    appearance: str = "nominal"  # scene look per episode (sim/appearance.py distribution)
    expert_start: float = 0.0  # diagnostic: the scripted expert drives the first seconds, then the
    #                            policy takes over (where does a policy fail: the start or later?)
    sees: str = "scene"  # diagnostic: "nominal" shows the policy the nominal scene's view of each state
    #                      (PandaSim.render_nominal) instead of the episode's look: a perfectly
    #                      appearance-invariant encoder, the most any encoder could give back;
    #                      "nominal_camera" / "nominal_wrist": that camera only (which one loses it?)

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.seeds:
            self.episodes = len(self.seeds)
        if not 0.0 <= self.expert_start < self.time_limit:
            raise ValueError(f"expert_start {self.expert_start}: expected in [0, time_limit "
                             f"{self.time_limit})")
        from avdp_ros.sim.appearance import distribution

        distribution(self.appearance)  # an unknown name is refused here, naming the known ones
        if self.sees not in SEES:
            raise ValueError(f"sees {self.sees!r}: expected one of {', '.join(SEES)}")
        if self.execute_steps < 1:
            raise ValueError(f"execute_steps {self.execute_steps}: expected >= 1")
        ratio = self.stream_hz / self.obs_hz
        if self.stream_hz < self.obs_hz or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"stream_hz {self.stream_hz} must be an integer multiple of obs_hz "
                             f"{self.obs_hz}")

    def episode_seeds(self) -> list[int]:
        """The seed of every episode, in order."""
        return list(self.seeds) if self.seeds else [self.seed + i for i in range(self.episodes)]


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    duration: float  # sim seconds until success (or the time limit)
    # Where a failure got stuck: never touched the cube (moved ~0), never lifted it (pick_place),
    # or moved it but not far enough (goal distance).
    goal_distance: float = float("nan")  # final cube-to-goal distance in the table plane (m)
    closest_goal: float = float("nan")  # the smallest cube-to-goal distance seen at an observation (m)
    cube_moved: float = float("nan")  # final cube displacement in the table plane (m)
    cube_max_z: float = float("nan")  # highest cube centre seen at an observation (m)
    infer_ms: list[float] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)


def observe(sim, instruction: str, sees: str = "scene") -> dict:
    """The observation dict a policy gets: what the robot's topics carry, nothing privileged (unless
    `sees` names nominal views: the diagnostic EvalConfig.sees)."""
    def render(cam: str) -> np.ndarray:
        return sim.render_nominal(cam) if sees in ("nominal", f"nominal_{cam}") else sim.render(cam)

    return {
        "camera": render("camera"),  # (H, W, 3) uint8
        "wrist": render("wrist"),
        "ee_pose": sim.ee_pose().astype(np.float32),  # (7,)
        "gripper": np.float32(sim.gripper_width()),
        "instruction": instruction,
    }


def run_episode(sim, policy: PolicyLike, seed: int, cfg: EvalConfig, keep_frames: bool = False,
                monitor: Monitor | None = None) -> EpisodeResult:
    """One seeded episode. Every 1/obs_hz the policy sees an observation: `infer` at the start of
    a chunk, `observe` (if the policy has it) in between, so its frame history is spaced as in
    training. Action i of a chunk is the target due i periods after the chunk's observation;
    actions 1..execute_steps are executed, each approached by interpolation over its period.
    `monitor`, if given, sees every observation and every stream tick (it must not act)."""
    info = sim.reset(seed)
    policy.reset()
    res = EpisodeResult(seed=seed, success=False, duration=cfg.time_limit)
    poses = sim.object_poses()
    cube0 = poses["cube"][:3]
    goal_xy = poses[sim.task.object_names[1]][:2]  # a mocap marker: it never moves in an episode
    res.cube_max_z, res.closest_goal = float(cube0[2]), sim.goal_distance()
    sub = int(round(cfg.stream_hz / cfg.obs_hz))
    steps_per_stream = max(1, int(round(1.0 / (cfg.stream_hz * sim.physics_dt))))
    target = sim.ee_pose()
    if cfg.expert_start > 0:
        target = _expert_lead_in(sim, policy, info["instruction"], cfg, sub, steps_per_stream, res,
                                 keep_frames, monitor)
    chunk, i, k = None, 0, 0
    while sim.time < cfg.time_limit - 1e-6:  # float sums of physics_dt land just below it
        obs = observe(sim, info["instruction"], cfg.sees)
        if monitor is not None:
            monitor.on_observation(sim, obs)
        if keep_frames:
            res.frames.append(np.concatenate([obs["camera"], obs["wrist"]], axis=1))
        cube = sim.object_poses()["cube"]
        res.cube_max_z = max(res.cube_max_z, float(cube[2]))
        res.closest_goal = min(res.closest_goal, float(np.linalg.norm(cube[:2] - goal_xy)))
        if k % cfg.execute_steps == 0:
            t0 = time.perf_counter()
            out = policy.infer(obs)
            res.infer_ms.append((time.perf_counter() - t0) * 1e3)
            chunk = np.asarray(out["actions"], dtype=np.float64)  # (H, 8) pose7 + gripper
            finite = bool(np.all(np.isfinite(chunk)))
            if chunk.ndim != 2 or chunk.shape[1] != 8 or not finite:
                raise ValueError(f"policy returned actions {chunk.shape} (finite: {finite}); "
                                 "expected finite (H, 8) = pose7 + gripper width")
            if chunk.shape[0] <= cfg.execute_steps:
                raise ValueError(f"policy horizon {chunk.shape[0]} must exceed execute_steps "
                                 f"{cfg.execute_steps}")
            i = 0
        elif hasattr(policy, "observe"):
            policy.observe(obs)
        i += 1
        a = chunk[i]
        start = target
        for j in range(1, sub + 1):
            f = j / sub
            if monitor is not None:
                monitor.on_stream(sim)
            sim.set_target(np.concatenate([start[:3] + f * (a[:3] - start[:3]), slerp(start[3:], a[3:7], f)]))
            sim.set_gripper(float(a[7]))
            sim.step(steps_per_stream)
        target = a[:7]
        k += 1
        if sim.success():
            res.success, res.duration = True, sim.time
            break
    res.goal_distance = sim.goal_distance()
    res.closest_goal = min(res.closest_goal, res.goal_distance)
    res.cube_moved = float(np.linalg.norm(sim.object_poses()["cube"][:2] - cube0[:2]))
    return res


def _expert_lead_in(sim, policy: PolicyLike, instruction: str, cfg: EvalConfig, sub: int,
                    steps_per_stream: int, res: EpisodeResult, keep_frames: bool,
                    monitor: Monitor | None) -> np.ndarray:
    """The scripted expert (privileged object poses) drives until `cfg.expert_start`; the policy
    sees every observation meanwhile, so its frame history is full at the handover. Returns the
    last target, where the policy's first action is interpolated from."""
    from avdp_ros.sim.expert import make_expert

    expert = make_expert(cfg.task)
    expert.reset()
    target = sim.ee_pose()
    while sim.time < cfg.expert_start - 1e-6:
        obs = observe(sim, instruction, cfg.sees)
        if monitor is not None:
            monitor.on_observation(sim, obs)
        if keep_frames:
            res.frames.append(np.concatenate([obs["camera"], obs["wrist"]], axis=1))
        if hasattr(policy, "observe"):
            policy.observe(obs)
        for _ in range(sub):
            if monitor is not None:
                monitor.on_stream(sim)
            target, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
            sim.set_target(target)
            sim.set_gripper(width)
            sim.step(steps_per_stream)
    return np.asarray(target[:7], dtype=np.float64)


def evaluate(policy: PolicyLike, cfg: EvalConfig, progress: bool = True, monitor: Monitor | None = None) -> dict:
    """Run `cfg.episodes` seeded episodes; returns success rate, lengths, latency percentiles.
    `monitor` sees every episode (`run_episode`)."""
    from tqdm import tqdm

    from avdp_ros.sim.env import PandaSim, SimConfig

    sim = PandaSim(SimConfig(task=cfg.task, image_height=cfg.image_size[0], image_width=cfg.image_size[1],
                             episode_time_limit=cfg.time_limit, appearance=cfg.appearance))
    results: list[EpisodeResult] = []
    try:
        for i, seed in enumerate(tqdm(cfg.episode_seeds(), desc=f"eval {cfg.task}", disable=not progress)):
            results.append(run_episode(sim, policy, seed, cfg, keep_frames=i < cfg.videos, monitor=monitor))
    finally:
        sim.close()
    return summarize(results, cfg)


def summarize(results: list[EpisodeResult], cfg: EvalConfig) -> dict:
    """Success rate, lengths, latency percentiles and kept frames of a list of episodes."""
    lat = np.concatenate([r.infer_ms[1:] for r in results if len(r.infer_ms) > 1] or [np.zeros(0)])
    ok = [r.success for r in results]
    return {
        "task": cfg.task,
        "episodes": len(results),
        "expert_start_s": cfg.expert_start,
        "sees": cfg.sees,
        "success_rate": float(np.mean(ok)) if ok else 0.0,
        "failed_seeds": [r.seed for r in results if not r.success],
        "per_episode": [{"seed": r.seed, "success": r.success, "duration_s": round(r.duration, 3),
                         "goal_distance_m": round(r.goal_distance, 4),
                         "closest_goal_m": round(r.closest_goal, 4),
                         "cube_moved_m": round(r.cube_moved, 4),
                         "cube_max_z_m": round(r.cube_max_z, 4)} for r in results],
        "mean_duration_s": float(np.mean([r.duration for r in results])) if results else 0.0,
        # first call of each episode excluded: warm-up (allocations, caches)
        "infer_ms_p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "infer_ms_p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "infer_calls": int(lat.size),
        "frames": [r.frames for r in results if r.frames],
    }


def describe_failures(summary: dict) -> str:
    """One line on where the failed episodes of a `summarize` result stopped."""
    from avdp_ros.sim.tasks import CUBE_HALF

    failed = [e for e in summary.get("per_episode", []) if not e["success"]]
    if not failed:
        return "no failures"
    untouched = [e for e in failed if e["cube_moved_m"] < 0.01]
    rest = [e for e in failed if e["cube_moved_m"] >= 0.01]
    parts = [f"{len(untouched)} never moved the cube"]
    if summary["task"] == "pick_place":
        unlifted = [e for e in rest if e["cube_max_z_m"] < CUBE_HALF + 0.02]
        rest = [e for e in rest if e["cube_max_z_m"] >= CUBE_HALF + 0.02]
        parts.append(f"{len(unlifted)} moved it without lifting it")
    if rest:
        d = np.array([e["goal_distance_m"] for e in rest]) * 100
        near = np.array([e.get("closest_goal_m", np.nan) for e in rest]) * 100
        parts.append(f"{len(rest)} ended {np.median(d):.1f} cm (median; {d.min():.1f}-{d.max():.1f}) "
                     f"from the goal's centre, having come within {np.median(near):.1f} cm (median)")
    return f"{len(failed)} failures: " + ", ".join(parts)

"""DAgger in process (no ROS): a policy drives MuJoCo episodes exactly as `avdp-eval` runs them,
while the scripted expert, label-only and leashed as the expert node is with `command: false`,
labels every observation with what it would command from the state the policy reached. The
episodes are written in the converter's dataset format (`data.dataset.write_episode`), so the
training CLIs take them like converted bags (`--include-failed`: most DAgger episodes that teach
something are ones the policy failed).

`avdp-collect --policy` does the same through the ROS graph (policy node, label-only expert node,
recorder, converter); that is the path for a real robot. This one runs ~6x faster on a 2-core CPU
(no DDS, no bag round trip, the sim waits while the policy thinks), which is what makes several
DAgger rounds of 100+ episodes affordable.

With no policy (`avdp-dagger --policy expert`) the expert drives itself, optionally DART-perturbed:
in-process expert demonstrations in the same format (`run_expert_episode`).
"""

from __future__ import annotations

import copy
import os

import numpy as np

from avdp_ros.sim.expert import make_expert


class ExpertLabeller:
    """`evaluation.sim_eval.Monitor` that records an episode and the expert's labels for it.

    Label of observation k = the expert's (re-synced, leashed) target and gripper width from its
    tick at the observation's time, as the converter takes the zero-order hold of the
    intended-target stream. The expert ticks at the stream rate (50 Hz, like the expert node)
    whatever the policy does.

    With `horizon` H > 1 every observation also gets the expert's own H-step chunk: from that
    state, in a what-if copy of the physics (`PandaSim.branch`), the expert drives for
    (H-1)/obs_hz seconds and its target at each observation period is a row. Why: the per-frame
    labels of later observations are taken along the *policy's* path. Where the policy hesitates,
    labels t+1..t+H-1 are each "2 cm ahead of wherever the TCP is then", so a chunk built from
    them says "creep 2 cm and stop"; trained on, that teaches hesitation. The expert's own chunk
    says where it would be over the next 0.8 s (the speed of its demonstrations).
    """

    def __init__(self, task: str, label_lead: float = 0.02, horizon: int = 0, obs_hz: float = 10.0,
                 stream_hz: float = 50.0, follow: bool = True, nominal_pairs: bool = False):
        if label_lead < 0:
            raise ValueError(f"label_lead {label_lead}: expected >= 0 (0 = no leash)")
        if horizon < 0:
            raise ValueError(f"horizon {horizon}: expected >= 0 (0 or 1 = per-frame labels only)")
        ticks = stream_hz / obs_hz
        if ticks < 1 or abs(ticks - round(ticks)) > 1e-9:
            raise ValueError(f"stream_hz {stream_hz} must be an integer multiple of obs_hz {obs_hz}")
        self.task = task
        self.follow = follow  # re-sync the phase with the state: False when the expert drives itself
        self.label_lead = label_lead
        self.horizon = horizon
        self.ticks_per_obs = int(round(ticks))
        self.stream_hz = stream_hz
        # also store every frame as the nominal scene shows the same state (PandaSim.render_nominal):
        # `<camera>_nominal.npy`, the targets of an appearance-invariant tokenizer
        self.nominal_pairs = nominal_pairs
        self.expert = make_expert(task)
        self.reset()

    def reset(self) -> None:
        self.expert.reset()
        self.frames: dict[str, list] = {"camera": [], "wrist": [], "ee_pose": [], "gripper": [], "stamps": []}
        if self.nominal_pairs:
            self.frames.update(camera_nominal=[], wrist_nominal=[])
        self.labels: list[np.ndarray] = []
        self.chunks: list[np.ndarray] = []  # (H, 8) per observation when horizon > 1
        self.instruction = ""
        self.leads: list[float] = []  # label-to-TCP distance (m) per observation, for the summary

    def on_observation(self, sim, obs: dict) -> None:
        if len(self.labels) != len(self.frames["stamps"]):
            raise RuntimeError("two observations without a stream tick between them: no label for the first")
        for name in ("camera", "wrist", "ee_pose"):
            self.frames[name].append(np.asarray(obs[name]))
        if self.nominal_pairs:
            for name in ("camera", "wrist"):
                self.frames[f"{name}_nominal"].append(sim.render_nominal(name))
        self.frames["gripper"].append(np.float32(obs["gripper"]))
        self.frames["stamps"].append(int(round(sim.time * 1e9)))
        self.instruction = obs["instruction"]

    def on_stream(self, sim) -> tuple[np.ndarray, float]:
        """One expert tick; returns its (target (7,), gripper width): what `run_expert_episode` executes."""
        ee, width, objects = sim.ee_pose(), sim.gripper_width(), sim.object_poses()
        if self.follow:
            self.expert.resync(sim.time, ee, width, objects)  # the phase the policy's state is in
        if self.label_lead > 0:
            self.expert.leash(ee, self.label_lead)  # before act, as the expert node does
        target, width = self.expert.act(sim.time, ee, width, objects)
        if len(self.labels) < len(self.frames["stamps"]):  # first tick at this observation's time
            self.labels.append(np.r_[target, width].astype(np.float32))
            self.leads.append(float(np.linalg.norm(target[:3] - ee[:3])))
            if self.horizon > 1:
                self.chunks.append(self._expert_chunk(sim, target, width))
        return target, width

    def _expert_chunk(self, sim, target: np.ndarray, width: float) -> np.ndarray:
        """(H, 8): row 0 = this tick's label, row h = the target the expert, driving from here in
        a branch of the physics, streams h observation periods later."""
        expert = copy.deepcopy(self.expert)  # its phase, stream and timers; the real one is untouched
        steps = max(1, int(round(1.0 / (self.stream_hz * sim.physics_dt))))
        rows = [np.r_[target, width]]
        with sim.branch():
            k = 0
            while len(rows) < self.horizon:
                sim.set_target(target)
                sim.set_gripper(width)
                sim.step(steps)
                k += 1
                target, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
                if k % self.ticks_per_obs == 0:
                    rows.append(np.r_[target, width])
        return np.stack(rows).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The episode in the dataset's dtypes and shapes (module docstring of data.convert)."""
        f = self.frames
        return {
            "camera": np.stack(f["camera"]).astype(np.uint8),
            "wrist": np.stack(f["wrist"]).astype(np.uint8),
            "ee_pose": np.stack(f["ee_pose"]).astype(np.float32),
            "gripper": np.asarray(f["gripper"], dtype=np.float32),
            "stamps": np.asarray(f["stamps"], dtype=np.int64),
            "action": np.stack(self.labels).astype(np.float32),
            **({"action_chunk": np.stack(self.chunks).astype(np.float32)} if self.chunks else {}),
            **{name: np.stack(f[name]).astype(np.uint8) for name in ("camera_nominal", "wrist_nominal")
               if name in f},
        }


def run_expert_episode(sim, labeller: ExpertLabeller, seed: int, cfg, perturb=None,
                       keep_frames: bool = False):
    """One episode the expert drives itself, as `avdp-collect` records it through ROS: every
    stream tick the labeller's expert (not re-synced, not leashed) gives its intended target,
    which is the label; the arm executes it offset by `perturb` (DART, reset with the seed), so
    the data holds the arm off the expert's path with the command that leads back. Observations
    every 1/obs_hz; the episode ends, successful, at the first observation period that passes the
    task's test (as `sim_eval.run_episode` ends one), else at the time limit. Returns an
    `EpisodeResult` (no inference timings)."""
    from avdp_ros.evaluation.sim_eval import EpisodeResult, observe

    info = sim.reset(seed)
    if perturb is not None:
        perturb.reset(seed)
    res = EpisodeResult(seed=seed, success=False, duration=cfg.time_limit)
    cube0 = sim.object_poses()["cube"][:3]
    res.cube_max_z, res.closest_goal = float(cube0[2]), sim.goal_distance()
    steps_per_stream = max(1, int(round(1.0 / (cfg.stream_hz * sim.physics_dt))))
    tick = 0
    while sim.time < cfg.time_limit - 1e-6:
        if tick % labeller.ticks_per_obs == 0:
            if tick and sim.success():
                res.success, res.duration = True, sim.time
                break
            obs = observe(sim, info["instruction"])
            labeller.on_observation(sim, obs)
            if keep_frames:
                res.frames.append(np.concatenate([obs["camera"], obs["wrist"]], axis=1))
            res.cube_max_z = max(res.cube_max_z, float(sim.object_poses()["cube"][2]))
            res.closest_goal = min(res.closest_goal, sim.goal_distance())
        target, width = labeller.on_stream(sim)
        sim.set_target(target if perturb is None else perturb.apply(target, sim.time))
        sim.set_gripper(width)
        sim.step(steps_per_stream)
        tick += 1
    res.goal_distance = sim.goal_distance()
    res.closest_goal = min(res.closest_goal, res.goal_distance)
    res.cube_moved = float(np.linalg.norm(sim.object_poses()["cube"][:2] - cube0[:2]))
    return res


def collect(policy, cfg, out: str | os.PathLike, label_lead: float = 0.02, horizon: int = 8,
            overwrite: bool = False, progress: bool = True, perturb=None, nominal_pairs: bool = False) -> dict:
    """Run `cfg.episodes` policy-driven episodes (`sim_eval.EvalConfig`), label them with the
    expert and write them as a dataset at `out` (manifest rewritten after every episode, so an
    interrupted run keeps what it finished). `horizon` > 1 also stores the expert's own chunk per
    observation (`action_chunk.npy`, see `ExpertLabeller`). `nominal_pairs` also stores each frame
    as the nominal scene shows the same state (`camera_nominal.npy`, `wrist_nominal.npy`).
    Returns `sim_eval.evaluate`'s summary plus the label lead percentiles.

    `policy` None: the expert drives itself (`run_expert_episode`, with `perturb`, a
    `sim.expert.PerturbConfig`, for DART episodes); then there is no leash and no chunk: the
    per-frame labels along the expert's own path already are its chunk."""
    from tqdm import tqdm

    from avdp_ros.data.convert import ConvertConfig
    from avdp_ros.data.dataset import prepare_output, write_episode, write_manifest
    from avdp_ros.evaluation.sim_eval import run_episode, summarize
    from avdp_ros.sim.env import PandaSim, SimConfig
    from avdp_ros.sim.expert import TargetPerturbation

    if policy is None:
        label_lead, horizon = 0.0, 0
    elif perturb is not None:
        raise ValueError("perturb bumps the expert's executed target; with a policy driving, the expert executes "
                         "nothing")
    out = prepare_output(out, overwrite)
    # The converter's defaults name the cameras and topics; one action per observation.
    ccfg = ConvertConfig(obs_hz=cfg.obs_hz, action_hz=cfg.obs_hz, image_size=tuple(cfg.image_size))
    labeller = ExpertLabeller(cfg.task, label_lead, horizon, obs_hz=cfg.obs_hz, stream_hz=cfg.stream_hz,
                              follow=policy is not None, nominal_pairs=nominal_pairs)
    bumps = TargetPerturbation(perturb) if perturb is not None and perturb.enabled else None
    driver = "policy" if policy is not None else ("expert (DART)" if bumps else "expert")
    sim = PandaSim(SimConfig(task=cfg.task, image_height=cfg.image_size[0], image_width=cfg.image_size[1],
                             episode_time_limit=cfg.time_limit, appearance=cfg.appearance))
    results, entries, leads = [], [], []
    try:
        seeds = cfg.episode_seeds()
        tool = "avdp-dagger" if policy is not None else "avdp-dagger --policy expert"
        source = f"{tool} ({cfg.task}, " + (f"seeds {cfg.seed}+)" if not cfg.seeds else
                                            f"{len(seeds)} listed seeds {min(seeds)}-{max(seeds)})")
        prefix = "dagger" if policy is not None else "expert"
        for i, seed in enumerate(tqdm(seeds, desc=f"{prefix} {cfg.task}", disable=not progress)):
            labeller.reset()
            if policy is None:
                res = run_expert_episode(sim, labeller, seed, cfg, bumps, keep_frames=i < cfg.videos)
            else:
                res = run_episode(sim, policy, seed, cfg, keep_frames=i < cfg.videos, monitor=labeller)
            results.append(res)
            leads += labeller.leads
            entry = {"source_bag": None, "length": len(labeller.labels), "has_actions": True,
                     "instruction": labeller.instruction, "task": cfg.task, "seed": seed, "success": res.success,
                     "truncated": False, "command_lead_ms": None, "action_topic": "expert label (in process)",
                     "gripper_action_topic": "expert label (in process)",
                     "chunk_horizon": horizon if horizon > 1 else None}
            meta = {"task": cfg.task, "seed": seed, "instruction": labeller.instruction, "success": res.success,
                    "driver": driver, "labeller": "expert", "label_lead_m": label_lead, "duration_s": res.duration,
                    "appearance": {"name": cfg.appearance, "params": sim.appearance.to_dict()}}
            if bumps is not None:
                meta["perturb"] = {"pos_m": perturb.pos_amplitude, "yaw_rad": perturb.yaw_amplitude}
            entries.append(write_episode(out / "episodes" / f"{prefix}_{cfg.task}_{seed:06d}", labeller.arrays(),
                                         entry, {"metadata": meta}))
            write_manifest(out, ccfg, entries, [], source=source)
    finally:
        sim.close()
    summary = summarize(results, cfg)
    lead = np.asarray(leads) * 1e3
    summary.update(label_lead_m=label_lead, label_to_tcp_mm_p50=float(np.percentile(lead, 50)) if lead.size else None,
                   label_to_tcp_mm_p90=float(np.percentile(lead, 90)) if lead.size else None)
    return summary

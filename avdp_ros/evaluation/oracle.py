"""The oracle future: what an IDM policy does when its future frames are the true ones.

Diagnostic of issue "video prediction that pays": the video + IDM policy can be no better than
its IDM reading a perfect future. `OracleFuture` wraps a video policy for `sim_eval.evaluate`
(as the policy and as the episode's monitor): before every plan, the scripted expert, re-synced
to the state the policy reached (as DAgger's labeller does), drives a what-if branch of the
physics (`PandaSim.branch`) for K observation periods, and the frames rendered at each period
are handed to `Policy.infer(future_images=...)` in place of the video model's prediction.
"""

from __future__ import annotations

import copy

import numpy as np

from avdp_ros.sim.dagger import ExpertLabeller


class OracleFuture:
    """A `PolicyLike` + `Monitor`: `policy` planning from the expert's true next K frames.

    Args:
        policy: a video policy (`Policy` with a video model; `infer` takes `future_images`).
        task: the sim task (its scripted expert drives the branches).
        obs_hz, stream_hz: observation and expert tick rates (as the evaluation's).
    """

    def __init__(self, policy, task: str, obs_hz: float = 10.0, stream_hz: float = 50.0):
        if getattr(policy, "video", None) is None:
            raise ValueError("the oracle future needs a video policy (an 'idm' checkpoint): an action-only "
                             "policy reads no future")
        self.policy = policy
        self.k = policy.cfg.future_frames
        self.obs_hz = obs_hz
        # follows the policy's state and ticks at the stream rate, as DAgger's labeller does
        self.labeller = ExpertLabeller(task, obs_hz=obs_hz, stream_hz=stream_hz)
        self._sim = None

    # -- the Monitor side: keep the expert's phase in step with the episode ----------------------
    def on_observation(self, sim, obs: dict) -> None:
        self._sim = sim
        self.labeller.on_observation(sim, obs)

    def on_stream(self, sim) -> None:
        self.labeller.on_stream(sim)

    # -- the PolicyLike side ---------------------------------------------------------------------
    def reset(self) -> None:
        self.policy.reset()
        self.labeller.reset()

    def observe(self, obs: dict) -> float:
        return self.policy.observe(obs)

    def infer(self, obs: dict) -> dict:
        if self._sim is None:
            raise RuntimeError("OracleFuture.infer before any observation: pass it to evaluate() as the monitor too")
        return self.policy.infer(obs, future_images=self.future(self._sim))

    def future(self, sim) -> dict[str, np.ndarray]:
        """{camera: (K, H, W, 3) uint8}: the frames at the next K observation times while the
        expert drives from the current state; the episode's own physics is untouched."""
        expert = copy.deepcopy(self.labeller.expert)  # its phase and timers; the real one is untouched
        steps = max(1, int(round(1.0 / (self.labeller.stream_hz * sim.physics_dt))))
        frames: dict[str, list[np.ndarray]] = {cam: [] for cam in self.policy.cfg.cameras}
        with sim.branch():
            for _ in range(self.k):
                for _ in range(self.labeller.ticks_per_obs):
                    target, width = expert.act(sim.time, sim.ee_pose(), sim.gripper_width(), sim.object_poses())
                    sim.set_target(target)
                    sim.set_gripper(width)
                    sim.step(steps)
                for cam in frames:
                    frames[cam].append(sim.render(cam))
        return {cam: np.stack(imgs) for cam, imgs in frames.items()}

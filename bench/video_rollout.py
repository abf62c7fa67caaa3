"""What does a video policy see coming? (a diagnostic, not a test)

Runs one seeded closed-loop episode with a video + IDM checkpoint exactly as `avdp-eval` does
(`evaluation.sim_eval.run_episode`) and keeps, at every chunk, the observation and the video model's
predicted frames. Writes a PNG, one row per chunk: the observed frame, then the K predicted
ones, scene camera above wrist camera (each at the tokenizer's input: cropped where it crops),
and prints per chunk where the arm is and where the chunk sends it.

    python bench/video_rollout.py --policy runs/idm/latest --task push --seed 100000 --out rollout.png

The first use: the video model predicting the arm straight down onto the cube instead of around
behind it, and the IDM following (see README "Does video prediction help?").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


class RecordingPolicy:
    """Wraps a Policy: the same chunks, plus (observation, predicted frames, chunk) per `infer`."""

    def __init__(self, policy) -> None:
        self.policy, self.calls = policy, []

    def reset(self) -> None:
        self.policy.reset()
        self.calls = []

    def observe(self, obs: dict) -> None:
        self.policy.observe(obs)

    def infer(self, obs: dict) -> dict:
        out = self.policy.infer(obs, return_frames=True)
        if "predicted_frames" not in out:
            raise SystemExit("this checkpoint predicts no frames: pass a video + IDM policy (avdp-train-idm)")
        self.calls.append((obs, out["predicted_frames"], np.asarray(out["actions"])))
        return out


def chunk_row(policy, obs: dict, predicted: np.ndarray) -> np.ndarray:
    """(2S, (K+1)S, 3) uint8: observed then predicted frames, cameras stacked."""
    seen = [(policy.tokenizer.camera_images(obs[c][None], c)[0].permute(1, 2, 0).numpy() * 255).round()
            .astype(np.uint8) for c in policy.cfg.cameras]  # each (S, S, 3), cropped as the model sees it
    cols = [np.concatenate(seen, axis=0)] + [np.concatenate(list(frame), axis=0) for frame in predicted]
    return np.concatenate(cols, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="video + IDM checkpoint directory")
    ap.add_argument("--task", default="push")
    ap.add_argument("--seed", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=12, help="chunks shown in the PNG (the first ones)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    a = ap.parse_args()
    import imageio.v3 as iio
    import torch

    from avdp_ros.evaluation.sim_eval import EvalConfig, run_episode
    from avdp_ros.model.policy import Policy
    from avdp_ros.sim.env import PandaSim, SimConfig

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)  # the video model's noise: the same command draws the same frames
    policy = Policy.from_checkpoint(a.policy)
    rec = RecordingPolicy(policy)
    cfg = EvalConfig(task=a.task, episodes=1, seed=a.seed, obs_hz=policy.obs_hz)  # as avdp-eval runs it
    sim = PandaSim(SimConfig(task=cfg.task, episode_time_limit=cfg.time_limit))
    try:
        res = run_episode(sim, rec, a.seed, cfg)
    finally:
        sim.close()
    for i, (obs, _, chunk) in enumerate(rec.calls):
        t = i * cfg.execute_steps / cfg.obs_hz
        print(f"chunk {i:3d} t={t:5.1f} s  arm {np.round(obs['ee_pose'][:3], 3)}  "
              f"-> step 1 {np.round(chunk[1, :3], 3)}, step {len(chunk) - 1} {np.round(chunk[-1, :3], 3)}, "
              f"gripper {chunk[-1, 7]:.3f}")
    print(f"{a.task} seed {a.seed}: {'solved' if res.success else 'failed'}, cube moved {res.cube_moved * 100:.1f} cm, "
          f"ended {res.goal_distance * 100:.1f} cm from the goal")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(a.out, np.concatenate([chunk_row(policy, o, p) for o, p, _ in rec.calls[:a.rows]], axis=0))
    print(f"wrote {a.out}: per row the observed frame, then {len(rec.calls[0][1])} predicted (scene above wrist)")


if __name__ == "__main__":
    main()

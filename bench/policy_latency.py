"""Latency of `Policy.infer` against sampling steps (a benchmark, not a test).

For each setting (video steps 1/2/4/8 with the action head at its default, then action steps
1/2/4/8 with the video model at its default) it feeds the frames of a recorded episode one call
per frame, as a controller replanning every observation would, and reports per-stage p50/p99.

    python bench/policy_latency.py --policy models/avdp_default --data runs/default/data_push/dataset
    python bench/policy_latency.py --policy DIR --data DS --threads 1 --out bench/latency.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from avdp_ros.data.dataset import EpisodeDataset
from avdp_ros.model.kinds import KINDS
from avdp_ros.model.policy import Policy

STEPS = (1, 2, 4, 8)
STAGES = ("tokenizer_ms", "video_ms", "idm_ms", "total_ms")


def observations(dataset: Path, frames: int) -> list[dict]:
    ds = EpisodeDataset(dataset, validate=False)
    obs = []
    for ep in ds:
        for t in range(len(ep["ee_pose"])):
            obs.append({cam: np.asarray(ep[cam][t]) for cam in ds.cameras}
                       | {"ee_pose": np.asarray(ep["ee_pose"][t]), "gripper": float(ep["gripper"][t]),
                          "instruction": ep["meta"].get("instruction", "")})
            if len(obs) >= frames:
                return obs
    return obs


def measure(policy: Policy, obs: list[dict], warmup: int = 3) -> dict[str, tuple[float, float]]:
    policy.reset()
    rows = [policy.infer(o)["timings"] for o in obs]
    rows = rows[warmup:]
    return {k: (float(np.percentile([r[k] for r in rows], 50)), float(np.percentile([r[k] for r in rows], 99)))
            for k in STAGES}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="policy checkpoint directory (idm or baseline)")
    ap.add_argument("--data", required=True, type=Path, help="a converted dataset whose frames are fed in")
    ap.add_argument("--calls", type=int, default=40, help="infer calls per setting (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    obs = observations(a.data, a.calls)
    base = Policy.from_checkpoint(a.policy, device=a.device)
    has_video = KINDS[base.kind].has_video
    settings = [(v, base.cfg.action_steps) for v in STEPS] if has_video else []
    settings += [(base.cfg.video_steps, s) for s in STEPS]
    lines = [f"`{a.policy}` ({base.kind}), {len(obs)} calls per row, {a.threads} thread(s), device {a.device}", "",
             "| video steps | action steps | " + " | ".join(f"{k[:-3]} p50 / p99 (ms)" for k in STAGES) + " |",
             "| --- | --- | " + " | ".join("---" for _ in STAGES) + " |"]
    for video_steps, action_steps in dict.fromkeys(settings):
        policy = Policy.from_checkpoint(a.policy, device=a.device, video_steps=video_steps, action_steps=action_steps)
        res = measure(policy, obs)
        vs = video_steps if has_video else "-"
        lines.append(f"| {vs} | {action_steps} | " + " | ".join(f"{res[k][0]:.1f} / {res[k][1]:.1f}" for k in STAGES)
                     + " |")
        print(lines[-1], file=sys.stderr)
    table = "\n".join(lines)
    print(table)
    if a.out:
        a.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

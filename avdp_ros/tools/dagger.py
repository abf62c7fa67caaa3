"""avdp-dagger: one DAgger round in the MuJoCo tasks without ROS. The policy drives (as in
avdp-eval), the scripted expert labels every step with what it would command (leashed to the TCP),
and the episodes become a dataset the training CLIs read like a converted one:

    avdp-dagger --policy models/avdp_default --task push --episodes 100 --seed 6000 --out runs/dagger_push
    avdp-train-baseline --data DATA... runs/dagger_push/dataset --include-failed --resume ...

OUT/dataset holds the episodes, OUT/summary.json the policy's success on them (and the label-to-TCP
lead), OUT/rollouts.mp4 the first episodes.

`--policy expert` records demonstrations the same way: the expert drives itself, `--perturb` adds
DART bumps to what it executes while the labels stay its intended targets (the episodes
`avdp-collect --perturb` records through ROS, many times faster):

    avdp-dagger --policy expert --task push --episodes 100 --seed 2000 --perturb 0.04 0.2 --out runs/dart_push

For a real robot or the full ROS graph use `avdp-collect --policy` instead (same labelling, through
the expert node's `command: false` mode).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.evaluation.sim_eval import EvalConfig, describe_failures
    from avdp_ros.tools.eval import add_appearance_arg, add_policy_args, add_seeds_arg, load_cli_policy, write_result

    ap = argparse.ArgumentParser(prog="avdp-dagger", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True,
                    help="policy checkpoint directory (or bundle, with --backend), or 'expert' (it drives itself)")
    ap.add_argument("--task", default="push")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=6000,
                    help="first seed; keep clear of training (1000+, 2000+) and evaluation (100000+) seeds")
    ap.add_argument("--out", type=Path, required=True, help="folder: dataset/, summary.json, rollouts.mp4")
    ap.add_argument("--label-lead", type=float, default=0.02, metavar="M",
                    help="leash: the expert's label stays within M metres of the TCP (the expert driving "
                         "itself leads by ~2 cm); 0 = no leash. Default %(default)s")
    ap.add_argument("--label-horizon", type=int, default=None, metavar="H",
                    help="also store the expert's own H-step chunk from every observation (a what-if rollout "
                         "in a copy of the physics; training prefers it to per-frame labels); default: the "
                         "policy's horizon; 0 = per-frame labels only")
    ap.add_argument("--execute-steps", "--exec-steps", type=int, default=EvalConfig.execute_steps,
                    help="actions executed per chunk (the policy node's execute_steps)")
    ap.add_argument("--time-limit", type=float, default=15.0)
    ap.add_argument("--perturb", type=float, nargs=2, default=None, metavar=("POS_M", "YAW_RAD"),
                    help="with --policy expert: DART-style bumps of the expert's executed target (e.g. 0.04 0.2)")
    ap.add_argument("--obs-hz", type=float, default=10.0,
                    help="with --policy expert: observation rate of the dataset (a policy's own otherwise)")
    ap.add_argument("--videos", type=int, default=2, help="episodes recorded into rollouts.mp4")
    ap.add_argument("--overwrite", action="store_true", help="replace a dataset already at OUT/dataset")
    ap.add_argument("--nominal-pairs", action="store_true",
                    help="also store every frame as the nominal scene shows the same state (camera_nominal.npy, "
                         "wrist_nominal.npy): the targets of avdp-train-tokenizer --target-look nominal")
    add_seeds_arg(ap)
    add_appearance_arg(ap)
    add_policy_args(ap)
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.label_lead < 0:
        ap.error(f"--label-lead {a.label_lead}: expected >= 0")
    if a.episodes < 1:
        ap.error(f"--episodes {a.episodes}: expected >= 1")

    from avdp_ros.sim.dagger import collect
    from avdp_ros.sim.expert import PerturbConfig

    if a.label_horizon is not None and a.label_horizon < 0:
        ap.error(f"--label-horizon {a.label_horizon}: expected >= 0")
    expert = a.policy == "expert"
    if a.perturb and not expert:
        ap.error("--perturb bumps the expert's executed target; it needs --policy expert")
    try:
        perturb = PerturbConfig(*a.perturb) if a.perturb else None
    except ValueError as err:
        ap.error(f"--perturb: {err}")
    policy = None if expert else load_cli_policy(a, seed=a.seed)
    horizon = 0 if expert else (a.label_horizon if a.label_horizon is not None
                                else int(getattr(policy.cfg, "horizon", 8)))
    try:
        cfg = EvalConfig(task=a.task, episodes=a.episodes, seed=a.seed, seeds=a.seeds,
                         execute_steps=a.execute_steps, time_limit=a.time_limit, videos=a.videos,
                         obs_hz=a.obs_hz if expert else policy.obs_hz, appearance=a.appearance)
        result = collect(policy, cfg, a.out / "dataset", label_lead=a.label_lead, horizon=horizon,
                         overwrite=a.overwrite, progress=not a.no_progress, perturb=perturb,
                         nominal_pairs=a.nominal_pairs)
    except (FileExistsError, ValueError) as err:
        ap.error(str(err))
    if not expert:
        result["action_temperature"] = policy.action_temperature
    result["appearance"] = a.appearance
    frames = result.pop("frames")
    lead = ("" if expert else f"; labels lead the TCP by {result['label_to_tcp_mm_p50']:.0f} mm (p50), "
            f"{result['label_to_tcp_mm_p90']:.0f} mm (p90)")
    print(f"{a.policy} drove {result['episodes']} {a.task} episodes ({a.appearance} scenes): "
          f"success {result['success_rate'] * 100:.0f}%{lead}; dataset: {a.out / 'dataset'}")
    print(describe_failures(result))
    write_result(a.out, result, frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())

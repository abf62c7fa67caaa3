"""avdp-eval: closed-loop success of a policy checkpoint (or the scripted expert) in the MuJoCo
tasks, without ROS. Reports success rate, mean episode length and per-call latency; writes a
summary JSON and a video of the first rollouts.

    avdp-eval --policy models/avdp_default --task push --episodes 50
    avdp-eval --policy expert --task pick_place --episodes 50
    avdp-eval --report runs/default          # table of every summary.json below a folder
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from avdp_ros.model.kinds import KINDS

os.environ.setdefault("MUJOCO_GL", "egl")


def _expert(cfg, progress: bool) -> dict:
    from tqdm import tqdm

    from avdp_ros.sim.env import PandaSim, SimConfig
    from avdp_ros.sim.expert import make_expert, run_episode

    sim = PandaSim(SimConfig(task=cfg.task, episode_time_limit=cfg.time_limit, appearance=cfg.appearance))
    try:
        expert = make_expert(cfg.task)
        seeds = cfg.episode_seeds()
        res = [run_episode(sim, expert, seed) for seed in tqdm(seeds, disable=not progress)]
    finally:
        sim.close()
    ok = [r["success"] for r in res]
    return {"task": cfg.task, "episodes": len(res), "success_rate": float(np.mean(ok)),
            "failed_seeds": [seed for seed, s in zip(seeds, ok) if not s],
            "mean_duration_s": float(np.mean([r["duration"] for r in res])), "frames": []}


def report(root: Path) -> str:
    """A Markdown table of every `summary.json` below `root` (one row per evaluation folder), then
    one of the real-time figures of those run through ROS (avdp-eval-ros), if any."""
    rows = ["| run | task | scenes | success (s.e.) | episodes | mean length (s) | infer p50 / p99 (ms) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    ros = ["| run (through ROS) | fault | obs->chunk p50 / p95 / p99 (ms) | "
           "command period p50 / p99 / max (ms) | chunk age p50 / p99 (ms) | within limits |",
           "| --- | --- | --- | --- | --- | --- |"]
    for path in sorted(root.rglob("summary.json")):
        try:
            s = json.loads(path.read_text())
            if not isinstance(s, dict) or "success_rate" not in s:
                continue  # another tool's summary (e.g. avdp-collect's)
            lat = (f"{s['infer_ms_p50']:.0f} / {s['infer_ms_p99']:.0f}" if "infer_ms_p50" in s else "-")
            p, n = s["success_rate"], s["episodes"]
            se = 100 * (p * (1 - p) / n) ** 0.5 if n else float("nan")  # binomial standard error
            sees = s.get("sees", "scene")
            scenes = s.get("appearance", "-") + ("" if sees == "scene" else f", seen as {sees.replace('_', ' ')}")
            rows.append(f"| {path.parent.relative_to(root)} | {s['task']} | {scenes} | "
                        f"{p * 100:.0f}% ({se:.1f}) | {n} | {s['mean_duration_s']:.1f} | {lat} |")
            if s.get("via") == "ros":
                ros.append(f"| {path.parent.relative_to(root)} | {s['fault']['kind']} | "
                           f"{s['obs_to_chunk_ms_p50']:.0f} / {s['obs_to_chunk_ms_p95']:.0f} / "
                           f"{s['obs_to_chunk_ms_p99']:.0f} | "
                           f"{s['command_period_ms_p50']:.1f} / {s['command_period_ms_p99']:.1f} / "
                           f"{s['command_period_ms_max']:.1f} | {s['chunk_age_ms_p50']:.0f} / "
                           f"{s['chunk_age_ms_p99']:.0f} | {'yes' if s['within_limits'] else 'NO'} |")
        except (KeyError, TypeError, ValueError) as err:
            rows.append(f"| {path.parent.relative_to(root)} | unreadable summary: "
                        f"{type(err).__name__}: {err} |")
    return "\n".join(rows + ([""] + ros if len(ros) > 2 else []))


def add_policy_args(ap: argparse.ArgumentParser) -> None:
    """Options that pick and tune the policy (shared with avdp-dagger)."""
    ap.add_argument("--video-steps", type=int, default=None, help="denoising steps per predicted frame")
    ap.add_argument("--action-steps", type=int, default=None, help="denoising steps of the action head")
    ap.add_argument("--action-temperature", type=float, default=None,
                    help="scale of the action sampler's noise (default: the checkpoint's action_temperature)")
    ap.add_argument("--future-t", type=float, default=None, metavar="T",
                    help="IDM heads that read a noised future (--head uwm): the flow time its predicted future "
                         "is re-noised to, 0 = trust it .. 1 = ignore it (no video rollout); default: the "
                         "checkpoint's idm.future_t")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="torch",
                    help="torch (checkpoint dir) | onnxruntime | tensorrt (bundle dir from avdp-export); "
                         "default %(default)s")
    ap.add_argument("--threads", type=int, default=None, help="torch / onnxruntime intra-op threads")


def load_cli_policy(a: argparse.Namespace, seed: int | None = None):
    """The policy `add_policy_args`' options describe. `seed` seeds the noise it draws (a video
    policy's frames always, the action head's at temperature > 0), so a run repeats its numbers."""
    from avdp_ros.deploy import load_policy

    if a.action_temperature is not None and not 0.0 <= a.action_temperature <= 2.0:
        raise SystemExit(f"--action-temperature {a.action_temperature}: expected in [0, 2]")
    options = {}
    if seed is not None and a.backend != "torch":
        options["seed"] = seed
    if a.threads and a.backend == "onnxruntime":
        options["threads"] = a.threads
    if a.backend == "torch":
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        if seed is not None:
            torch.manual_seed(seed)  # the eager Policy draws from torch's global generator
    policy = load_policy(a.backend, a.policy, device=a.device, video_steps=a.video_steps,
                         action_steps=a.action_steps, **options)
    if a.action_temperature is not None:
        policy.action_temperature = a.action_temperature
    if getattr(a, "future_t", None) is not None:
        if not 0.0 <= a.future_t <= 1.0:
            raise SystemExit(f"--future-t {a.future_t}: expected in [0, 1]")
        if policy.cfg.idm.future_noise != "independent" or not KINDS[policy.kind].has_video:
            raise SystemExit(f"--future-t: {a.policy} does not read a noised future (its idm.future_noise is "
                             f"'{policy.cfg.idm.future_noise}', kind {policy.kind}); train one with --head uwm")
        policy.future_t = a.future_t
    return policy


def add_appearance_arg(ap: argparse.ArgumentParser, default: str = "nominal") -> None:
    """--appearance, shared by every tool that runs sim episodes (names from sim/appearance.py)."""
    from avdp_ros.sim.appearance import DISTRIBUTIONS

    ap.add_argument("--appearance", default=default, metavar="NAME",
                    help="scene look per episode, drawn from the seed (docs/appearance.md): "
                         f"{' | '.join(DISTRIBUTIONS)} (default %(default)s)")


def add_seeds_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", type=int, nargs="+", default=(), metavar="SEED",
                    help="run exactly these seeds instead of --episodes from --seed (e.g. an evaluation's "
                         "failed_seeds, or layouts picked by `python bench/task_layouts.py`)")


def write_result(out: Path, result: dict, frames: list) -> None:
    """`out/summary.json` and, if episodes kept frames, `out/rollouts.mp4`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    if frames:
        import imageio.v2 as imageio

        video = out / "rollouts.mp4"
        imageio.mimwrite(video, [f for ep in frames for f in ep], fps=10, macro_block_size=1)
        print(f"video: {video}")


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.evaluation.sim_eval import SEES, EvalConfig, describe_failures, evaluate

    ap = argparse.ArgumentParser(prog="avdp-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", help="policy checkpoint directory, or 'expert'")
    ap.add_argument("--report", type=Path, default=None,
                    help="print a table of the evaluations below a folder")
    ap.add_argument("--task", default="push")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=100_000, help="first seed (held out from training seeds)")
    ap.add_argument("--execute-steps", "--exec-steps", type=int, default=EvalConfig.execute_steps,
                    help="actions executed per chunk (the policy node's execute_steps)")
    ap.add_argument("--time-limit", type=float, default=15.0)
    ap.add_argument("--videos", type=int, default=2, help="episodes recorded into rollouts.mp4")
    ap.add_argument("--expert-start", type=float, default=0.0, metavar="SECONDS",
                    help="diagnostic: the scripted expert drives the first SECONDS, then the policy takes "
                         "over; shows whether a policy fails at the start or later (default 0: policy only)")
    ap.add_argument("--future", choices=("model", "oracle", "noise"), default="model",
                    help="diagnostic, video policies (torch backend): what the IDM reads as its future: the video "
                         "model's prediction (default), the true frames of the expert driving on from each "
                         "state in a what-if branch of the sim (the upper bound), or pure noise latents")
    ap.add_argument("--sees", choices=SEES, default="scene",
                    help="diagnostic: 'nominal' shows the policy the nominal scene's view of each state instead "
                         "of the episode's look (a perfectly appearance-invariant encoder): how much of a suite's "
                         "loss is perception; nominal_camera / nominal_wrist: that camera only (default: scene, "
                         "what the cameras show)")
    add_seeds_arg(ap)
    add_appearance_arg(ap)
    add_policy_args(ap)
    ap.add_argument("--out", type=Path, default=None, help="folder for summary.json and rollouts.mp4")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.report is not None:
        print(report(a.report))
        return 0
    if not a.policy:
        ap.error("--policy is required (a checkpoint directory or 'expert'), or use --report FOLDER")

    try:
        cfg = EvalConfig(task=a.task, episodes=a.episodes, seed=a.seed, seeds=a.seeds,
                         execute_steps=a.execute_steps, time_limit=a.time_limit, videos=a.videos,
                         expert_start=a.expert_start, appearance=a.appearance, sees=a.sees)
    except ValueError as err:
        ap.error(str(err))
    if a.policy == "expert":
        result = _expert(cfg, not a.no_progress)
    else:
        policy = load_cli_policy(a, seed=a.seed)
        cfg.obs_hz = policy.obs_hz
        monitor = None
        if a.future != "model":
            if not KINDS[policy.kind].has_video or a.backend != "torch" or policy.cfg.idm.future_input != "frames":
                ap.error(f"--future {a.future}: needs a video policy ('idm' checkpoint) that reads future frames, "
                         f"on the torch backend; {a.policy} is a '{policy.kind}' policy reading "
                         f"{policy.cfg.idm.future_input} on {a.backend}")
            if a.future == "oracle":
                from avdp_ros.evaluation.oracle import OracleFuture

                policy = monitor = OracleFuture(policy, a.task, obs_hz=cfg.obs_hz, stream_hz=cfg.stream_hz)
            else:
                policy.future_source = "noise"
        result = evaluate(policy, cfg, progress=not a.no_progress, monitor=monitor)
        result["action_temperature"] = (monitor.policy if monitor else policy).action_temperature
        result["future"] = a.future
    frames = result.pop("frames")
    result["appearance"] = cfg.appearance
    print(f"{a.policy} on {a.task} ({cfg.appearance} scenes): success {result['success_rate'] * 100:.0f}% "
          f"over {result['episodes']} episodes, mean length {result['mean_duration_s']:.1f} s"
          + (f", infer p50 {result['infer_ms_p50']:.1f} ms p99 {result['infer_ms_p99']:.1f} ms"
             if "infer_ms_p50" in result else ""))
    if "per_episode" in result:
        print(describe_failures(result))
    if a.out:
        write_result(a.out, result, frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())

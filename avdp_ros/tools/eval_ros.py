"""avdp-eval-ros: closed-loop evaluation of a policy checkpoint *through ROS*: the MuJoCo bridge and
the policy node run as they do on the robot, and an evaluator node drives N seeded episodes over
topics and services only. Reports success, obs-to-chunk latency, command period jitter, chunk age,
safety interventions; with `--fault`, what the commander did when the fault was injected.

    avdp-eval-ros --policy models/avdp_default --task push --episodes 50 --out runs/eval_ros/push
    avdp-eval-ros --episodes 1 --fault camera_dropout --out runs/eval_ros/camera_dropout
    avdp-eval --report runs/eval_ros        # table of these summaries next to avdp-eval's

The stack is `avdp-run policy --robot sim --processes`: bridge and policy node from
config/policy.yaml, one process each like `ros2 launch`, so the commander's timing is the policy
node's own and not the evaluator's or the renderer's GIL (`--in-process`: one process, faster to
start; the tests use it). The evaluator node (nodes/eval_recorder.py):

- seeds episode i with seed + i: sets the bridge's `seed` parameter (SetParameters), calls
  /avdp/sim/reset; the policy node sees the new episode on /avdp/episode_info and drops its plan,
  frame history and filter anchor;
- ends it by the success rule below, on the bridge's clock (header stamps), so a slow CPU does not
  change the episode's length;
- records every target_frame command (stamps and arrival times), current_pose (achieved path),
  both cameras (video), /avdp/plan, /avdp/chunk_timing (one message per inference: obs-to-chunk
  latency), /diagnostics (safety and ingest counters) and the policy node's warnings on /rosout.

Success rule, not avdp-eval's: an episode ends once /avdp/episode_info has said success for
`--settle` s (0.5 by default) without a break, or when `--time-limit` s have passed since the
reset. A success that began before the limit still gets its settle time, and counts only if it
held; `duration_s` is the time from the reset to the start of that success. avdp-eval (no ROS)
runs the same seeds with the same time limit but ends an episode on the first success its task
test sees (after every executed action) and needs nothing to hold, so a success touched and lost
counts there and not here; the trajectories differ too (here the policy's latency is real).

Faults (`--fault`, evaluation/faults.py), injected on the real path during [--fault-start,
+ --fault-duration) s of every episode (bridge clock):

- camera_dropout: the policy's camera topics are remapped (its `camera_topics` parameter) to a
  relay in the evaluator, which stops forwarding the first (third-person) camera;
- stale_stamps: the relay forwards both cameras re-stamped STALE_OFFSET_S in the past;
- nan_actions: the loaded policy is wrapped (`NanActions`, nodes/nan_policy.py): the chunks of
  observations in the window come back all-NaN.

On a CPU too slow (or too busy) for the model at real time, `--use-sim-time --real-time-factor
0.25` slows the sim and every node's clock with it: the loop then behaves as on a fast machine,
and latencies are reported in sim time (model infer stays wall time).

Outputs in --out: summary.json, report.md, latency_hist.png, ee_path.png, rollout.mp4.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from avdp_ros.evaluation.faults import FAULTS, RELAY_TOPIC, RELAYED, FaultSpec
from avdp_ros.evaluation.report import report_markdown, write_outputs
from avdp_ros.evaluation.ros_config import EvalRosConfig
from avdp_ros.evaluation.ros_metrics import Episode, summarize
from avdp_ros.tools.eval import add_appearance_arg

os.environ.setdefault("MUJOCO_GL", "egl")


def _merged_params(config: Path, overrides: dict, node: str) -> dict:
    data = yaml.safe_load(config.read_text()) or {}
    return {**(data.get(node, {}) or {}).get("ros__parameters", {}), **overrides.get(node, {})}


class _Nodes:
    """The bridge + policy node, in this process (runner.Stack) or one process each (ProcessStack)."""

    def __init__(self, cfg: EvalRosConfig, config: Path, overrides: dict, context=None):
        from avdp_ros.nodes.runner import ProcessStack, Stack, ros_args

        self.stack = None
        use_sim_time = cfg.use_sim_time
        nan = cfg.fault.kind == "nan_actions"
        roles = ["sim_bridge"] if nan else ["sim_bridge", "policy"]
        policy_args = ros_args(config, {**overrides["avdp_policy"], "autostart": False}, use_sim_time)
        if cfg.in_process:
            # nan_actions: the wrapped policy node is made here, not by the Stack
            stack_overrides = {k: v for k, v in overrides.items() if k != "avdp_policy" or not nan}
            self.stack = Stack(roles, config, stack_overrides, use_sim_time=use_sim_time, context=context)
            if nan:
                from avdp_ros.nodes.nan_policy import make_nan_policy_node

                try:
                    node = make_nan_policy_node(cfg.fault, cli_args=policy_args, context=self.stack.context)
                except Exception:
                    self.stack.shutdown()
                    raise
                self.stack.nodes["policy"] = node
                self.stack.executor.add_node(node)
            self.alive = lambda: True
        else:
            self.stack = ProcessStack(roles, config, overrides, use_sim_time)
            if nan:
                self.stack.procs["policy"] = subprocess.Popen(
                    [sys.executable, "-m", "avdp_ros.nodes.nan_policy", str(cfg.fault.start_s),
                     str(cfg.fault.duration_s), *policy_args])
            self.alive = self.stack.alive

    def shutdown(self) -> None:
        if self.stack is not None:
            self.stack.shutdown()
            self.stack = None


def run_evaluation(cfg: EvalRosConfig, context=None, progress: bool = True) -> dict:
    """Start the stack, run the episodes, write the outputs; returns the summary dict."""
    from tqdm import tqdm

    from avdp_ros.nodes.episode_driver import ros_session
    from avdp_ros.nodes.eval_recorder import EvalRecorder
    from avdp_ros.nodes.runner import default_config, use_dds_profile

    config = cfg.config or default_config("policy")
    if not config.exists():
        raise FileNotFoundError(f"config file {config} does not exist")
    overrides = {k: dict(v) for k, v in cfg.overrides.items()}
    unknown = set(overrides) - {"avdp_sim_bridge", "avdp_policy"}
    if unknown:
        raise ValueError(f"--set for node(s) {sorted(unknown)}: expected avdp_sim_bridge or avdp_policy")
    bridge = overrides.setdefault("avdp_sim_bridge", {})
    bridge.update(task=cfg.task, seed=cfg.seed, appearance=cfg.appearance)
    if cfg.real_time_factor != 1.0:
        bridge["real_time_factor"] = cfg.real_time_factor
    pol = overrides.setdefault("avdp_policy", {})
    pol["model"] = str(Path(cfg.policy).expanduser().resolve())
    if cfg.threads is not None:
        pol["torch_threads"] = cfg.threads
    params = _merged_params(config, overrides, "avdp_policy")
    if not params.get("diagnostics_rate_hz", 1.0) > 0:
        raise ValueError("avdp_policy.diagnostics_rate_hz must be > 0: the evaluator reads /diagnostics and "
                         "/avdp/chunk_timing")
    cameras = list(params["camera_topics"])
    if cfg.fault.kind in RELAYED:
        pol["camera_topics"] = [RELAY_TOPIC.format(i) for i in range(len(cameras))]

    use_dds_profile()
    # in-process, the Stack initialises (and shuts down) the default context itself
    own = context is None and not cfg.in_process
    nodes = driver = None
    episodes: list[Episode] = []
    t_wall = time.monotonic()
    with ros_session() if own else contextlib.nullcontext():
        try:
            nodes = _Nodes(cfg, config, overrides, context)
            driver = EvalRecorder(cameras, cfg.fault, context)
            driver.wait_ready(cfg.startup_timeout, nodes.alive)
            baseline = driver.snapshot(driver.clock, 30.0, nodes.alive)
            for i in tqdm(range(cfg.episodes), desc=f"eval-ros {cfg.task}", disable=not progress):
                ep = driver.run_episode(cfg.seed + i, cfg.time_limit, cfg.settle, cfg.real_time_factor,
                                        film=i < cfg.videos, alive=nodes.alive)
                episodes.append(ep)
            final = episodes[-1].diag_after
        finally:
            if driver is not None:
                driver.close()
            if nodes is not None:
                nodes.shutdown()
    summary = summarize(episodes, cfg, params, baseline, final, driver.relayed)
    summary["wall_s"] = round(time.monotonic() - t_wall, 1)
    if cfg.out is not None:
        write_outputs(cfg.out, summary, episodes, cfg)
    return summary


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.nodes.runner import parse_sets

    c, f = EvalRosConfig, FaultSpec
    ap = argparse.ArgumentParser(prog="avdp-eval-ros", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", default=c.policy, help="checkpoint directory")
    ap.add_argument("--task", default=c.task, help="push | pick_place")
    add_appearance_arg(ap, c.appearance)
    ap.add_argument("--episodes", type=int, default=c.episodes)
    ap.add_argument("--seed", type=int, default=c.seed, help="first seed (episode i: seed + i, as avdp-eval)")
    ap.add_argument("--time-limit", type=float, default=c.time_limit, help="s per episode (bridge clock)")
    ap.add_argument("--settle", type=float, default=c.settle,
                    help="s success must hold before the episode ends")
    ap.add_argument("--out", type=Path, default=c.out,
                    help="output folder (default runs/eval_ros/<task>[_<fault>])")
    ap.add_argument("--config", type=Path, default=c.config,
                    help="parameter YAML (default config/policy.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE",
                    help="override a parameter, e.g. avdp_policy.execute_steps=4")
    ap.add_argument("--videos", type=int, default=c.videos, help="episodes recorded into rollout.mp4")
    ap.add_argument("--fault", default=f.kind, choices=FAULTS)
    ap.add_argument("--fault-start", type=float, default=f.start_s, help="s after each reset")
    ap.add_argument("--fault-duration", type=float, default=f.duration_s)
    ap.add_argument("--threads", type=int, default=c.threads, help="torch threads of the policy node")
    ap.add_argument("--use-sim-time", action="store_true", help="every node on the bridge's /clock")
    ap.add_argument("--real-time-factor", type=float, default=c.real_time_factor,
                    help="sim speed (!= 1 needs --use-sim-time)")
    ap.add_argument("--in-process", action="store_true", help="all nodes in this process (default: one each)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    try:
        cfg = EvalRosConfig(
            policy=a.policy, task=a.task, appearance=a.appearance, episodes=a.episodes, seed=a.seed,
            time_limit=a.time_limit,
            settle=a.settle, videos=a.videos, threads=a.threads, use_sim_time=a.use_sim_time,
            real_time_factor=a.real_time_factor, in_process=a.in_process, config=a.config,
            overrides=parse_sets(a.set), fault=FaultSpec(a.fault, a.fault_start, a.fault_duration),
            out=a.out or Path("runs/eval_ros") / (a.task if a.fault == "none" else f"{a.task}_{a.fault}"))
    except ValueError as exc:
        ap.error(str(exc))
    try:
        s = run_evaluation(cfg, progress=not a.no_progress)
    except (ValueError, FileNotFoundError, TimeoutError, RuntimeError) as exc:
        print(f"avdp-eval-ros: {exc}", file=sys.stderr, flush=True)
        return 2
    print(report_markdown(s))
    print(f"outputs: {cfg.out}/ (summary.json, report.md, latency_hist.png, ee_path.png, rollout.mp4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

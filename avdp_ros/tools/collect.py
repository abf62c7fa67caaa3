"""avdp-collect, the recording job: the simulated Panda, the scripted expert doing the task through
the robot's topics, and the recorder writing one rosbag2 MCAP per episode; then a summary, a video
of the first episode from the bag, and the bags converted into a training dataset.

Episodes are driven by `nodes.episode_driver.EpisodeDriver` over the graph's services and topics:
each one ends once success has held for `--settle` s, or `--time-limit` s after its reset, both
on the bridge's clock (its header stamps).

    avdp-collect --task push --episodes 1 --out runs/collect

With ``--policy CHECKPOINT`` (DAgger) a learned policy drives instead (the policy node, with
config/policy.yaml's parameters) and the expert only labels the states the policy visits: it
publishes what it would command on ``/avdp/expert/intended_target`` / ``intended_gripper``,
which the converter takes as the action labels. Those episodes often fail (that is why they are
worth recording); their labels are still the expert's, so train on them with ``--include-failed``.

    avdp-collect --task push --episodes 100 --seed 4000 --policy models/avdp_default --out runs/dagger_push
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from avdp_ros.tools.eval import add_appearance_arg

os.environ.setdefault("MUJOCO_GL", "egl")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _yaml_topics(config: Path) -> list[str]:
    """The recorder's `topics` in a parameter YAML (empty when the file leaves them out)."""
    import yaml

    data = yaml.safe_load(Path(config).read_text()) or {}
    params = data.get("avdp_recorder", {}).get("ros__parameters", {})
    return list(params.get("topics") or [])


def _with_policy_params(config: Path, out: Path) -> Path:
    """`config` plus the policy node's section of config/policy.yaml (unless `config` has one),
    written to `out`: one parameter file for every node of the DAgger job, kept with the data."""
    import yaml

    from avdp_ros.nodes.runner import default_config

    params = yaml.safe_load(Path(config).read_text()) or {}
    if "avdp_policy" not in params:
        params["avdp_policy"] = yaml.safe_load(default_config("policy").read_text())["avdp_policy"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(params, sort_keys=False))
    return out


def bag_video(bag: Path, out: Path, fps: float = 30.0) -> int:
    """Both cameras of a bag side by side into an mp4 (or gif); returns the frame count."""
    import imageio.v2 as imageio

    from avdp_ros.data.bag_io import default_typestore, read_bag
    from avdp_ros.data.convert import image_to_rgb
    from avdp_ros.nodes import topics

    ts = default_typestore()
    latest: dict[str, np.ndarray] = {}
    frames = []
    for m in read_bag(bag, [topics.CAMERA_IMAGE, topics.WRIST_IMAGE]):
        msg = ts.deserialize_cdr(m.data, m.msgtype)
        latest[m.topic] = image_to_rgb(msg, bag, m.topic, (msg.height, msg.width))
        if m.topic == topics.WRIST_IMAGE and topics.CAMERA_IMAGE in latest:
            a, b = latest[topics.CAMERA_IMAGE], latest[topics.WRIST_IMAGE]
            if a.shape == b.shape:
                frames.append(np.concatenate([a, b], axis=1))
    if not frames:
        raise ValueError(f"bag {bag}: no frames on {topics.CAMERA_IMAGE} and {topics.WRIST_IMAGE}")
    out.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(out, frames, fps=fps, **({"macro_block_size": 1} if out.suffix == ".mp4" else {}))
    return len(frames)


def main(argv: list[str] | None = None) -> int:
    from avdp_ros.nodes import topics
    from avdp_ros.nodes.runner import ProcessStack, Stack, default_config, parse_sets, use_dds_profile

    ap = argparse.ArgumentParser(prog="avdp-collect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="push", help="push | pick_place")
    add_appearance_arg(ap)
    ap.add_argument("--episodes", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="seed of the first episode (then +1 per episode)")
    ap.add_argument("--out", type=Path, default=Path("runs/collect"), help="output folder")
    ap.add_argument("--time-limit", type=float, default=25.0,
                    help="seconds per episode before giving up (sim seconds with --real-time-factor < 1)")
    ap.add_argument("--settle", type=float, default=0.5,
                    help="seconds success must hold before stopping (sim seconds likewise)")
    ap.add_argument("--config", type=Path, default=None, help="parameter YAML (default config/record.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="NODE.PARAM=VALUE")
    ap.add_argument("--in-process", action="store_true",
                    help="all nodes in this process (default: one process per node, like ros2 launch)")
    ap.add_argument("--perturb", type=float, nargs=2, default=None, metavar=("POS_M", "YAW_RAD"),
                    help="DART-style perturbations of the expert's executed target (e.g. 0.04 0.2); the "
                         "intended target is recorded as the label (recovery data)")
    ap.add_argument("--policy", type=Path, default=None, metavar="CHECKPOINT",
                    help="DAgger: this policy checkpoint (or ONNX bundle with --set avdp_policy.backend=...) "
                         "drives the robot and the expert only labels")
    ap.add_argument("--real-time-factor", type=float, default=1.0,
                    help="sim speed; below 1 the whole graph runs on sim time (/clock), so a policy that "
                         "cannot keep up on a slow CPU still sees the world at its own pace")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--no-convert", action="store_true")
    a = ap.parse_args(argv)
    if a.episodes < 1:
        ap.error(f"--episodes {a.episodes}: expected >= 1")
    if a.policy is not None and a.perturb:
        ap.error("--perturb bumps the expert's executed target; with --policy the expert does not execute")
    if a.policy is not None and not a.policy.expanduser().is_dir():
        ap.error(f"--policy {a.policy}: not a directory (expected a checkpoint dir, "
                 "e.g. models/avdp_default)")

    if not 0.0 < a.real_time_factor <= 1.0:
        ap.error(f"--real-time-factor {a.real_time_factor}: expected in (0, 1]")

    out = a.out.expanduser().resolve()
    overrides = parse_sets(a.set)
    overrides.setdefault("avdp_sim_bridge", {}).update(task=a.task, seed=a.seed, appearance=a.appearance,
                                                       real_time_factor=a.real_time_factor)
    sim_time = a.real_time_factor != 1.0
    overrides.setdefault("avdp_recorder", {}).update(output_dir=str(out / "bags"))
    roles, config = ["sim_bridge", "expert", "recorder"], a.config or default_config("record")
    if a.perturb:
        overrides.setdefault("avdp_expert", {}).update(perturb_pos_m=a.perturb[0],
                                                       perturb_yaw_rad=a.perturb[1])
    if a.policy is not None:
        roles.append("policy")
        overrides.setdefault("avdp_expert", {})["command"] = False
        overrides.setdefault("avdp_policy", {})["model"] = str(a.policy.expanduser().resolve())
        config = _with_policy_params(config, out / "params.yaml")
    # The expert's intended target and gripper are the label source; record them next to the
    # configured topics.
    from avdp_ros.nodes.recorder_node import DEFAULT_TOPICS

    rec_topics = (overrides.setdefault("avdp_recorder", {}).get("topics") or _yaml_topics(config)
                  or DEFAULT_TOPICS)
    missing = [t for t in (topics.INTENDED_TARGET, topics.INTENDED_GRIPPER) if t not in rec_topics]
    if missing:
        overrides["avdp_recorder"]["topics"] = [*rec_topics, *missing]
    use_dds_profile()
    from avdp_ros.data.bag_io import bag_info
    from avdp_ros.data.convert import ConvertConfig, convert_directory, find_bags
    from avdp_ros.nodes.episode_driver import EpisodeDriver, ros_session

    before = set(find_bags(out / "bags")) if (out / "bags").is_dir() else set()
    results = []
    # No rclpy signal handler: Ctrl-C raises KeyboardInterrupt here, and the recording is stopped
    # and converted (rclpy's handler would invalidate the context under the driver instead).
    # `kill -USR1 PID` prints every thread's stack: how a stop that hangs can be seen (the
    # interrupt test prints it when it times out).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with ros_session(handle_signals=False):
        # SIGTERM (kill, docker stop, a job scheduler) stops the same way. SIGINT too, even where it
        # came in ignored (a background job of a non-interactive shell, and whatever it starts):
        # the node processes (rclpy's own handler) stop on it regardless, and a driver deaf to it
        # would wait on them until its wall limit.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if a.in_process:
            stack = Stack(roles, config, overrides, use_sim_time=sim_time)
        else:  # one process per node, like ros2 launch: the sim's pacing never waits on another node's GIL
            stack = ProcessStack(roles, config, overrides, use_sim_time=sim_time)
        driver = EpisodeDriver("avdp_collect", use_sim_time=sim_time)
        try:
            for k in range(a.episodes):
                r = driver.run_episode(a.time_limit, a.settle,
                                       wall_limit=3.0 * a.time_limit / a.real_time_factor + 60.0)
                results.append(r)
                print(f"episode {k + 1}/{a.episodes}: task {r['task']} seed {r['seed']} "
                      f"{'SUCCESS' if r['success'] else 'failed'} in {r['duration_s']:.1f} s", flush=True)
        except KeyboardInterrupt:
            print(f"\ninterrupted after {len(results)} episodes: the bags recorded so far are kept and "
                  "converted", flush=True)
            try:
                driver.stop_recording(timeout=5.0)  # close the episode being recorded
            except Exception:  # noqa: BLE001 - the recorder may have stopped with the same Ctrl-C
                pass
        finally:
            driver.close()
            stack.shutdown()

    bags = sorted(set(find_bags(out / "bags")) - before) if (out / "bags").is_dir() else []
    summary = {"episodes": results, "bags": []}
    for bag in bags:
        info = bag_info(bag)
        size = sum(f.stat().st_size for f in bag.iterdir()) / 1e6
        summary["bags"].append({"path": str(bag), "mb": round(size, 2), "counts": info.counts})
        print(f"\n{bag}  ({size:.1f} MB)")
        for topic, n in sorted(info.counts.items()):
            print(f"  {topic:<48} {n:6d}")
    if not a.no_video and bags:
        video = out / "episode.mp4"
        n = bag_video(bags[0], video)
        summary["video"] = str(video)
        print(f"\nvideo of the first episode ({n} frames, decoded from the bag): {video}")
    if not a.no_convert and bags:
        report = convert_directory(out / "bags", out / "dataset", ConvertConfig())
        summary["dataset"] = str(out / "dataset")
        print(f"dataset: {out / 'dataset'}: {len(report.episodes)} episodes, {report.frames} steps, "
              f"{len(report.failed)} failed, {report.frames_per_s:.0f} steps/s")
    success = sum(r["success"] for r in results)
    print(f"\nsuccess {success}/{len(results)}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0 if success == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""DAgger recording over real DDS: the expert in label-only mode never commands the robot, and
`avdp-collect --policy` records episodes driven by a policy and labelled by the expert, which the
converter turns into actions from the expert's intended topics."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy is not installed (ROS 2 graph tests need it)")
pytest.importorskip("mujoco", reason="mujoco is not installed")

from conftest import tiny_idm_checkpoint, wait_until  # noqa: E402

from avdp_ros.nodes import topics  # noqa: E402


def test_label_only_expert_publishes_labels_and_never_commands(rclpy_context):
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from std_msgs.msg import Float64

    from avdp_ros.nodes.msgs import pose_from_msg
    from avdp_ros.nodes.runner import Stack, default_config

    overrides = {"avdp_sim_bridge": {"task": "push", "seed": 5, "real_time_factor": 0.5},
                 "avdp_expert": {"command": False}}
    stack = Stack(["sim_bridge", "expert"], default_config("record"), overrides, use_sim_time=True,
                  context=rclpy_context)
    seen: dict[str, list] = {t: [] for t in (topics.TARGET_FRAME, topics.GRIPPER_COMMAND, topics.INTENDED_TARGET,
                                              topics.INTENDED_GRIPPER, topics.CURRENT_POSE)}
    node = Node("dagger_probe", context=rclpy_context)
    for topic, typ in ((topics.TARGET_FRAME, PoseStamped), (topics.INTENDED_TARGET, PoseStamped),
                       (topics.CURRENT_POSE, PoseStamped), (topics.GRIPPER_COMMAND, Float64),
                       (topics.INTENDED_GRIPPER, Float64)):
        node.create_subscription(typ, topic, lambda m, t=topic: seen[t].append(m), 50)
    from rclpy.executors import SingleThreadedExecutor

    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    try:
        # the expert plans a move to the pre-push point, so its labels leave the start pose, on a
        # leash: never more than label_max_lead_m (2 cm, + one 50 Hz streaming tick) ahead ...
        start = None

        def moved_away() -> bool:
            nonlocal start
            if start is None and seen[topics.CURRENT_POSE]:
                start = pose_from_msg(seen[topics.CURRENT_POSE][-1].pose)[:3]
            labels = [pose_from_msg(m.pose)[:3] for m in seen[topics.INTENDED_TARGET]]
            return start is not None and len(labels) > 50 and np.linalg.norm(labels[-1] - start) > 0.015

        wait_until(moved_away, 30.0, step=lambda: ex.spin_once(timeout_sec=0.05), what="the expert's label to move")
        leads = [np.linalg.norm(pose_from_msg(m.pose)[:3] - start) for m in seen[topics.INTENDED_TARGET]]
        assert max(leads) < 0.035  # 2 cm + a late tick or two of streaming at 0.25 m/s
        assert len(seen[topics.INTENDED_GRIPPER]) > 0
        # ... but nothing reached the robot's command topics, and the arm stayed where it was
        assert seen[topics.TARGET_FRAME] == [] and seen[topics.GRIPPER_COMMAND] == []
        now = pose_from_msg(seen[topics.CURRENT_POSE][-1].pose)[:3]
        assert np.linalg.norm(now - start) < 0.005
    finally:
        ex.shutdown()
        node.destroy_node()
        stack.shutdown()


def test_collect_with_policy_records_expert_labels_of_the_policy_run(tmp_path):
    """Few seconds of one push episode driven by a tiny random policy (in this process). At half
    real time on sim time: stamped from wall time, a sim that falls behind on a loaded CI machine
    leaves camera gaps the converter rightly rejects."""
    from avdp_ros.data.bag_io import default_typestore, read_bag
    from avdp_ros.nodes.msgs import pose_from_msg
    from avdp_ros.tools import collect

    ckpt, _ = tiny_idm_checkpoint(tmp_path)
    out = tmp_path / "dagger"
    rc = collect.main(["--task", "push", "--episodes", "1", "--seed", "7", "--time-limit", "4",
                       "--real-time-factor", "0.5", "--policy",
                       str(ckpt), "--in-process", "--no-video", "--out", str(out),
                       "--set", "avdp_policy.torch_threads=1"])
    assert rc == 1  # a random policy does not push the cube onto the target
    params = (out / "params.yaml").read_text()
    assert "avdp_policy" in params and str(ckpt) not in params  # the model comes as an override
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["bags"][0]["counts"]
    for topic in (topics.TARGET_FRAME, topics.INTENDED_TARGET, topics.INTENDED_GRIPPER):
        assert counts.get(topic, 0) > 10, (topic, counts)

    # the executed targets are the policy's: the robot did not follow the expert's plan
    ts = default_typestore()
    bag = summary["bags"][0]["path"]
    msgs: dict[str, list] = {}
    for m in read_bag(bag, [topics.TARGET_FRAME, topics.INTENDED_TARGET]):
        msgs.setdefault(m.topic, []).append(pose_from_msg(ts.deserialize_cdr(m.data, m.msgtype).pose)[:3])
    executed, labels = np.array(msgs[topics.TARGET_FRAME]), np.array(msgs[topics.INTENDED_TARGET])
    # the expert planned a move ... (its labels lead the TCP by at most the 2 cm leash, so a
    # threshold at 2 cm would hinge on how far the random policy happened to move the arm)
    assert np.linalg.norm(labels[-1] - labels[0]) > 0.015
    assert np.linalg.norm(executed[-1] - labels[-1]) > 0.01  # ... that was not executed

    # the dataset's actions come from the intended topics
    eps = sorted((out / "dataset" / "episodes").iterdir())
    assert len(eps) == 1
    meta = json.loads((eps[0] / "meta.json").read_text())
    assert meta["action_topic"] == topics.INTENDED_TARGET
    assert meta["gripper_action_topic"] == topics.INTENDED_GRIPPER
    assert meta["success"] is False


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_interrupt_stops_the_recording_and_keeps_the_bags(tmp_path, how):
    """Ctrl-C in a terminal (SIGINT to the whole process group) or `kill` (SIGTERM to avdp-collect
    alone, which must then stop its node processes itself) mid-episode: the cut episode is
    closed, converted and summarised instead of lost behind a traceback."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "collect"
    proc = subprocess.Popen([sys.executable, "-m", "avdp_ros.tools.collect", "--task", "push", "--episodes", "5",
                             "--seed", "11", "--time-limit", "30", "--real-time-factor", "0.5",  # sim stamps: see above
                             "--no-video", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        def recording() -> bool:
            files = list((out / "bags").glob("*/*.mcap")) if (out / "bags").is_dir() else []
            return bool(files) and files[0].stat().st_size > 200_000  # a second or so of images

        wait_until(recording, 90.0, what="the first episode to be recording")
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # avdp-collect dumps its threads' stacks (faulthandler)
            try:
                proc.communicate(timeout=3)  # read while it writes; a retry loses no output
            except subprocess.TimeoutExpired:
                pass
            proc.kill()
            log, _ = proc.communicate()
            pytest.fail(f"avdp-collect did not stop within 120 s of the {how}; its output, stacks last:\n"
                        f"{log[-12000:]}")

        def node_processes_gone() -> bool:  # the whole group: avdp-collect's node children included
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(node_processes_gone, 30.0, what="the node processes to exit")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
    assert "interrupted after 0 episodes" in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    assert len(manifest["episodes"]) == 1, manifest
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == [] and len(summary["bags"]) == 1

"""Bag directory -> episode dataset: alignment checked exactly on synthetic bags (no rclpy)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from avdp_ros.data.bag_writer import EpisodeBagWriter
from avdp_ros.data.convert import (
    ConversionError,
    ConvertConfig,
    command_lead_s,
    convert_bag,
    convert_directory,
    image_to_rgb,
)
from avdp_ros.data.dataset import DatasetError, EpisodeDataset
from avdp_ros.geometry import axis_angle_to_quat, quat_angle
from avdp_ros.tools.convert import main as convert_main

TS = get_typestore(Stores.ROS2_KILTED)
T = TS.types
T0 = 1_700_000_000_000_000_000
S = 1_000_000_000
CAM = "/camera/camera/color/image_raw"
WRIST = "/wrist_camera/color/image_raw"
POSE = "/cartesian_impedance_controller/current_pose"
TARGET = "/cartesian_impedance_controller/target_frame"
LABEL = "/avdp/expert/intended_target"
GLABEL = "/avdp/expert/intended_gripper"
JS = "/gripper/joint_states"
GCMD = "/gripper/command"
INFO = "/avdp/episode_info"
CAM_BLUE = {CAM: 200, WRIST: 100}  # blue channel tells the cameras apart


def true_pose(t_s: np.ndarray) -> np.ndarray:
    """Analytic ee trajectory: (N, 7)."""
    t_s = np.asarray(t_s, dtype=np.float64)
    pos = np.stack([0.3 + 0.1 * np.sin(np.pi * t_s), 0.05 * t_s, 0.4 + 0 * t_s], -1)
    rot = axis_angle_to_quat(np.stack([0 * t_s, 0 * t_s, 0.5 * t_s], -1))
    return np.concatenate([pos, rot], -1)


def true_width(t_s):
    return 0.04 + 0.02 * np.sin(np.asarray(t_s, dtype=np.float64))


def _hdr(ns: int, frame: str = "panda_link0"):
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=ns // S, nanosec=ns % S), frame_id=frame
    )


def _pose_msg(ns: int, p7) -> object:
    return T["geometry_msgs/msg/PoseStamped"](
        header=_hdr(ns),
        pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=p7[0], y=p7[1], z=p7[2]),
            orientation=T["geometry_msgs/msg/Quaternion"](x=p7[3], y=p7[4], z=p7[5], w=p7[6]),
        ),
    )


def frame_pixels(index: int, blue: int, encoding: str, h: int, w: int) -> np.ndarray:
    """Constant image whose red channel is the frame index (mod 256), green index // 256."""
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[...] = (index % 256, index // 256, blue)
    if encoding == "rgb8":
        return rgb
    if encoding == "bgr8":
        return rgb[..., ::-1].copy()
    if encoding == "rgba8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
    if encoding == "bgra8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    if encoding == "mono8":
        return np.full((h, w), index % 256, np.uint8)
    if encoding == "yuv422":
        return np.zeros((h, w, 2), np.uint8)
    raise ValueError(encoding)


def make_bag(
    path: Path,
    *,
    duration_s: float = 3.0,
    skip: tuple[str, ...] = (),
    encoding: str = "rgb8",
    info: dict | None = None,
    seed: int = 0,
    writer: str = "rosbags",
    h: int = 24,
    w: int = 32,
    label_offset: float | None = None,
    gripper_label_offset: float | None = None,
) -> dict:
    """Write a synthetic episode bag; returns the ground truth the converter must reproduce.

    Bag (log) timestamps are arrival times = header stamp + latency, so alignment on bag time
    would be visibly wrong. Cameras at 30 Hz with +-4 ms stamp jitter, pose 200 Hz, joint
    states 100 Hz, target commands 50 Hz, gripper commands 5 Hz (header-less: bag time).
    """
    rng = np.random.default_rng(seed)
    msgs: list[tuple[str, str, int, object]] = []  # topic, type, log time, message

    def add(topic, typ, log_ns, msg):
        if topic not in skip:
            msgs.append((topic, typ, int(log_ns), msg))

    truth = {"cam_stamps": {}}
    for topic, start in ((CAM, 0.10), (WRIST, 0.12)):
        n = int((duration_s - start - 0.05) * 30)
        stamps = (
            T0 + ((start + np.arange(n) / 30.0) * S).astype(np.int64) + rng.integers(-4_000_000, 4_000_000, n)
        )
        truth["cam_stamps"][topic] = stamps
        for i, ns in enumerate(stamps):
            px = frame_pixels(i, CAM_BLUE[topic], encoding, h, w)
            nchan = 1 if px.ndim == 2 else px.shape[2]
            msg = T["sensor_msgs/msg/Image"](
                header=_hdr(int(ns), "camera"),
                height=h,
                width=w,
                encoding=encoding,
                is_bigendian=0,
                step=w * nchan,
                data=px.reshape(-1),
            )
            add(topic, "sensor_msgs/msg/Image", ns + 25_000_000, msg)
    pose_t = T0 + np.arange(0, int(duration_s * 200)) * 5_000_000
    for ns, p7 in zip(pose_t, true_pose((pose_t - T0) / S)):
        add(POSE, "geometry_msgs/msg/PoseStamped", ns + 2_000_000, _pose_msg(int(ns), p7))
    js_t = T0 + 20_000_000 + np.arange(0, int(duration_s * 100) - 3) * 10_000_000
    for ns, wd in zip(js_t, true_width((js_t - T0) / S)):
        msg = T["sensor_msgs/msg/JointState"](
            header=_hdr(int(ns)),
            name=["finger_1", "finger_2"],
            position=np.array([wd / 2, wd / 2]),
            velocity=np.zeros(0),
            effort=np.zeros(0),
        )
        add(JS, "sensor_msgs/msg/JointState", ns + 1_000_000, msg)
    tgt_t = T0 + 301_000_000 + np.arange(0, int(duration_s * 50) - 20) * 20_000_000
    tgt_v = true_pose((tgt_t - T0) / S + 0.1)  # the command leads the measured pose
    truth["target"] = (tgt_t, tgt_v)
    for ns, p7 in zip(tgt_t, tgt_v):
        add(TARGET, "geometry_msgs/msg/PoseStamped", ns + 1_000_000, _pose_msg(int(ns), p7))
        if label_offset is not None:  # a perturbed expert: what it meant differs from what ran
            add(LABEL, "geometry_msgs/msg/PoseStamped", ns + 1_000_000,
                _pose_msg(int(ns), p7 + np.array([label_offset, 0, 0, 0, 0, 0, 0])))
    gc_t = T0 + 250_000_000 + np.arange(0, int(duration_s * 5) - 2) * 200_000_000
    gc_v = 0.01 * (1 + np.arange(len(gc_t)))
    truth["gcmd"] = (gc_t, gc_v)
    for ns, v in zip(gc_t, gc_v):
        add(GCMD, "std_msgs/msg/Float64", ns, T["std_msgs/msg/Float64"](data=float(v)))
        if gripper_label_offset is not None:  # DAgger: the policy drove, the expert labelled
            add(GLABEL, "std_msgs/msg/Float64", ns, T["std_msgs/msg/Float64"](data=float(v + gripper_label_offset)))
    if info is not None:
        add(INFO, "std_msgs/msg/String", T0, T["std_msgs/msg/String"](data=json.dumps(info)))
    msgs.sort(key=lambda m: m[2])

    if writer == "rosbags":
        with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as wr:
            conns = {}
            for topic, typ, log_ns, msg in msgs:
                if topic not in conns:
                    conns[topic] = wr.add_connection(topic, typ, typestore=TS)
                wr.write(conns[topic], log_ns, TS.serialize_cdr(msg, typ))
    else:  # the recorder's writer; small chunks so a cut file keeps most of them
        bw = EpisodeBagWriter(path, {"instruction": "stack", "seed": seed}, chunk_bytes=32 * 1024)
        for topic, typ, log_ns, msg in msgs:
            bw.write(topic, typ, bytes(TS.serialize_cdr(msg, typ)), log_ns)
        bw.close()
    return truth


CFG = ConvertConfig(obs_hz=10, action_hz=20, image_size=(16, 16))


def test_alignment_exact(tmp_path: Path):
    truth = make_bag(
        tmp_path / "bag", info={"instruction": "pick the cube", "task": "pick", "seed": 4, "success": True}
    )
    entry = convert_bag(tmp_path / "bag", tmp_path / "out" / "ep", CFG)
    d = tmp_path / "out" / "ep"
    stamps = np.load(d / "stamps.npy")
    cam_first = max(s[0] for s in truth["cam_stamps"].values())
    assert stamps[0] == cam_first  # t0 = latest first stamp (the wrist camera's first frame)
    assert np.all(np.diff(stamps) == 100_000_000)
    assert stamps[-1] <= min(s[-1] for s in truth["cam_stamps"].values())
    n = len(stamps)
    assert entry["length"] == n and n >= 25

    # cameras: the frame nearest each grid time (by header stamp), identified by its pixels
    for name, topic in (("camera", CAM), ("wrist", WRIST)):
        imgs = np.load(d / f"{name}.npy")
        assert imgs.shape == (n, 16, 16, 3) and imgs.dtype == np.uint8
        st = truth["cam_stamps"][topic]
        expect = np.argmin(np.abs(st[None, :] - stamps[:, None]), axis=1)
        got = imgs[:, 0, 0, 0].astype(int) + 256 * imgs[:, 0, 0, 1].astype(int)
        assert np.array_equal(got, expect)
        assert np.all(imgs[..., 2] == CAM_BLUE[topic])

    ee = np.load(d / "ee_pose.npy")
    ref = true_pose((stamps - T0) / S)
    assert ee.dtype == np.float32 and ee.shape == (n, 7)
    assert np.abs(ee[:, :3] - ref[:, :3]).max() < 1e-5
    assert quat_angle(ee[:, 3:], ref[:, 3:]).max() < 1e-3
    grip = np.load(d / "gripper.npy")
    assert np.abs(grip - true_width((stamps - T0) / S)).max() < 1e-5

    # actions: 2 per step at t0 + j * 50 ms, the latest command at or before (zero-order hold)
    act = np.load(d / "action.npy")
    assert act.shape == (2 * n, 8) and act.dtype == np.float32
    tq = stamps[0] + np.arange(2 * n) * 50_000_000
    tgt_t, tgt_v = truth["target"]
    i = np.searchsorted(tgt_t, tq, side="right") - 1
    before = i < 0
    assert before.any() and not before.all()  # some actions precede the first command
    assert np.abs(act[~before, :7] - tgt_v[i[~before]]).max() < 1e-6
    assert np.all(tgt_t[i[~before]] <= tq[~before]) and np.all(tq[~before] - tgt_t[i[~before]] < 20_000_000)
    held = true_pose((tq[before] - T0) / S)  # before any command: the measured pose
    assert np.abs(act[before, :3] - held[:, :3]).max() < 1e-5
    gc_t, gc_v = truth["gcmd"]
    j = np.searchsorted(gc_t, tq, side="right") - 1
    assert np.allclose(act[j >= 0, 7], gc_v[j[j >= 0]])
    assert np.allclose(act[j < 0, 7], true_width((tq[j < 0] - T0) / S), atol=1e-5)

    meta = json.loads((d / "meta.json").read_text())
    assert entry["has_actions"] and entry["instruction"] == "pick the cube" and entry["seed"] == 4
    assert meta["alignment"]["camera"]["max_offset_ms"] <= 20.7  # half a 30 Hz period + jitter


@pytest.mark.parametrize("encoding", ["bgr8", "rgba8", "bgra8", "mono8"])
def test_encodings_become_rgb(tmp_path: Path, encoding: str):
    make_bag(tmp_path / "bag", encoding=encoding, duration_s=1.5)
    convert_bag(tmp_path / "bag", tmp_path / "ep", CFG)
    img = np.load(tmp_path / "ep" / "camera.npy")
    stamps = np.load(tmp_path / "ep" / "stamps.npy")
    red = img[:, 0, 0, 0]
    assert len(set(red.tolist())) == len(stamps)  # each step shows its own frame index
    if encoding == "mono8":
        assert np.all(img[..., 1] == img[..., 0]) and np.all(img[..., 2] == img[..., 0])
    else:
        assert np.all(img[..., 2] == 200)


def test_directory_with_bad_bags(tmp_path: Path, capsys):
    bags = tmp_path / "bags"
    make_bag(
        bags / "good", info={"instruction": "open drawer", "task": "drawer", "seed": 1, "success": False}
    )
    make_bag(bags / "no_wrist", skip=(WRIST,))
    make_bag(bags / "yuv", encoding="yuv422", duration_s=1.0)
    make_bag(bags / "action_free", skip=(TARGET, GCMD), duration_s=1.5)
    with Writer(bags / "empty", version=9, storage_plugin=StoragePlugin.MCAP) as wr:
        wr.add_connection(CAM, "sensor_msgs/msg/Image", typestore=TS)
    # cut off by a kill: half the file gone, no metadata.yaml
    make_bag(bags / "killed", writer="episode", duration_s=3.0, seed=9)
    mcap = bags / "killed" / "killed.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size * 2 // 3])
    (bags / "killed" / "metadata.yaml").unlink()
    before = mcap.read_bytes()

    out = tmp_path / "ds"
    rc = convert_main(
        [
            str(bags),
            str(out),
            "--obs-hz",
            "10",
            "--action-hz",
            "20",
            "--image-size",
            "16",
            "16",
            "--no-progress",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "episodes/s" in printed and "frames/s" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    failed = {Path(f["source_bag"]).name: f for f in manifest["failed"]}
    assert set(failed) == {"no_wrist", "yuv", "empty"}
    assert failed["no_wrist"]["topic"] == WRIST and "missing" in failed["no_wrist"]["error"]
    assert "no_wrist" in failed["no_wrist"]["error"]
    assert failed["yuv"]["topic"] in (CAM, WRIST) and "'yuv422'" in failed["yuv"]["error"]
    assert "rgb8" in failed["yuv"]["error"]
    assert "empty" in failed["empty"]["error"]

    eps = {e["name"]: e for e in manifest["episodes"]}
    assert set(eps) == {"good", "action_free", "killed"}
    assert eps["action_free"]["has_actions"] is False
    assert not (out / "episodes" / "action_free" / "action.npy").exists()
    assert eps["killed"]["truncated"] is True and eps["good"]["truncated"] is False
    assert 5 <= eps["killed"]["length"] < eps["good"]["length"]
    assert mcap.read_bytes() == before  # the converter never modifies its input
    assert eps["good"]["instruction"] == "open drawer" and eps["good"]["success"] is False
    assert eps["killed"]["seed"] == 9  # from episode.json, survived the kill
    assert manifest["action_ratio"] == 2 and manifest["image_size"] == [16, 16]

    ds = EpisodeDataset(out, verify_hashes=True)
    assert len(ds) == 3
    ep = ds["good"]
    assert isinstance(ep["camera"], np.memmap) and ep["camera"].shape[1:] == (16, 16, 3)
    assert ep["action"].shape == (2 * len(ep["stamps"]), 8)
    assert ds["action_free"]["action"] is None
    assert len(ds.failed) == 3

    # refuses to overwrite, then a dataset whose file disagrees with the manifest is named
    with pytest.raises(FileExistsError):
        convert_directory(bags, out, CFG, progress=False)
    np.save(out / "episodes" / "good" / "gripper.npy", np.zeros(3, np.float32))
    with pytest.raises(DatasetError, match="good.*gripper.npy"):
        EpisodeDataset(out)


def test_padded_rows_are_cropped():
    h, w, step = 3, 5, 5 * 3 + 4
    rows = np.zeros((h, step), np.uint8)
    rows[:, : w * 3] = np.tile([10, 20, 30], w)
    rows[:, w * 3 :] = 255  # padding must not leak into the image
    msg = T["sensor_msgs/msg/Image"](
        header=_hdr(T0), height=h, width=w, encoding="bgr8", is_bigendian=0, step=step, data=rows.reshape(-1)
    )
    img = image_to_rgb(msg, "bag", CAM, (h, w))
    assert img.shape == (h, w, 3) and np.all(img == [30, 20, 10])


def test_gap_fails_bag_and_bad_config(tmp_path: Path):
    make_bag(tmp_path / "bag", duration_s=1.0)
    with pytest.raises(ConversionError, match=f"bag .*bag: topic {CAM}: .*no frame within 1 ms"):
        convert_bag(tmp_path / "bag", tmp_path / "ep", ConvertConfig(image_tolerance_s=0.001, max_gap_s=0.001))
    # short gaps are kept (nearest frame) and counted
    entry = convert_bag(tmp_path / "bag", tmp_path / "ep2", ConvertConfig(image_tolerance_s=0.001, max_gap_s=0.2))
    meta = json.loads((tmp_path / "ep2" / "meta.json").read_text())
    assert entry["length"] > 0 and meta["alignment"]["camera"]["gaps"] > 0
    with pytest.raises(ValueError, match="image_tolerance_s <= max_gap_s"):
        ConvertConfig(image_tolerance_s=0.2, max_gap_s=0.1)
    with pytest.raises(ValueError, match="integer multiple"):
        ConvertConfig(obs_hz=10, action_hz=15)


def test_command_lead_detects_lagging_commands():
    # a target moving 0.2 m/s along x; the arm follows it 100 ms late (a tracking controller)
    t_cmd = np.arange(0, 3.0, 0.02)
    t_pose = np.arange(0, 3.0, 0.005)

    def traj(t):
        return np.stack([0.4 + 0.2 * np.clip(t, 0, 2.0), np.zeros_like(t), 0.3 + 0 * t], axis=1)

    def ns(t):
        return (t * 1e9).astype(np.int64)

    lead = command_lead_s(ns(t_pose), traj(t_pose - 0.1), ns(t_cmd), traj(t_cmd))
    assert lead == pytest.approx(0.1, abs=0.011)
    # the command clock runs 250 ms late: commands appear to lag the pose by 150 ms
    lead = command_lead_s(ns(t_pose), traj(t_pose - 0.1), ns(t_cmd + 0.25), traj(t_cmd))
    assert lead == pytest.approx(-0.15, abs=0.011)
    # an arm that does not move has no observable lead
    still = np.tile([0.4, 0.0, 0.3], (len(t_cmd), 1))
    assert command_lead_s(ns(t_pose), np.tile([0.4, 0.0, 0.3], (len(t_pose), 1)), ns(t_cmd), still) is None


def test_intended_target_is_the_preferred_action_label(tmp_path: Path):
    truth = make_bag(tmp_path / "bag", label_offset=0.05)
    entry = convert_bag(tmp_path / "bag", tmp_path / "out" / "ep", CFG)
    d = tmp_path / "out" / "ep"
    assert entry["action_topic"] == LABEL
    stamps = np.load(d / "stamps.npy")
    act = np.load(d / "action.npy")
    tq = stamps[0] + np.arange(len(act)) * 50_000_000
    tgt_t, tgt_v = truth["target"]
    i = np.searchsorted(tgt_t, tq, side="right") - 1
    ok = i >= 0
    assert ok.sum() > 20
    assert np.abs(act[ok, 0] - (tgt_v[i[ok], 0] + 0.05)).max() < 1e-6  # the label, not the executed target
    assert np.abs(act[ok, 1:3] - tgt_v[i[ok], 1:3]).max() < 1e-6
    # without the label topic the executed target is the action (as in test_alignment_exact)
    make_bag(tmp_path / "bag2")
    entry = convert_bag(tmp_path / "bag2", tmp_path / "out" / "ep2", CFG)
    assert entry["action_topic"] == TARGET


def _gripper_labels(d: Path, truth: dict) -> tuple[np.ndarray, np.ndarray]:
    """(converted gripper actions, gripper commands held at their times) where a command exists."""
    stamps, act = np.load(d / "stamps.npy"), np.load(d / "action.npy")
    tq = stamps[0] + np.arange(len(act)) * 50_000_000
    gc_t, gc_v = truth["gcmd"]
    j = np.searchsorted(gc_t, tq, side="right") - 1
    assert (j >= 0).sum() > 20
    return act[j >= 0, 7], gc_v[j[j >= 0]]


def test_intended_gripper_goes_with_the_intended_target(tmp_path: Path):
    # DAgger recording: another node drove, the expert's intended target and gripper are the labels
    truth = make_bag(tmp_path / "bag", label_offset=0.05, gripper_label_offset=0.5)
    entry = convert_bag(tmp_path / "bag", tmp_path / "out" / "ep", CFG)
    assert (entry["action_topic"], entry["gripper_action_topic"]) == (LABEL, GLABEL)
    got, executed = _gripper_labels(tmp_path / "out" / "ep", truth)
    np.testing.assert_allclose(got, executed + 0.5, atol=1e-9)
    # a perturbed-expert bag from before the intended gripper existed: the gripper command stays the label
    truth = make_bag(tmp_path / "bag2", label_offset=0.05)
    entry = convert_bag(tmp_path / "bag2", tmp_path / "out" / "ep2", CFG)
    assert (entry["action_topic"], entry["gripper_action_topic"]) == (LABEL, GCMD)
    got, executed = _gripper_labels(tmp_path / "out" / "ep2", truth)
    np.testing.assert_allclose(got, executed, atol=1e-9)
    # an intended gripper without the intended target is not a label set: the executed commands are
    truth = make_bag(tmp_path / "bag3", gripper_label_offset=0.5)
    entry = convert_bag(tmp_path / "bag3", tmp_path / "out" / "ep3", CFG)
    assert (entry["action_topic"], entry["gripper_action_topic"]) == (TARGET, GCMD)
    got, executed = _gripper_labels(tmp_path / "out" / "ep3", truth)
    np.testing.assert_allclose(got, executed, atol=1e-9)


def test_cli_label_topics_choose_the_action_source(tmp_path: Path):
    make_bag(tmp_path / "bags" / "dagger", label_offset=0.05, gripper_label_offset=0.5)
    common = ["--obs-hz", "10", "--action-hz", "20", "--image-size", "16", "16", "--no-progress"]
    assert convert_main([str(tmp_path / "bags"), str(tmp_path / "a"), *common]) == 0
    # a label topic the bag does not have: the executed commands are the actions
    assert convert_main([str(tmp_path / "bags"), str(tmp_path / "b"), *common, "--label-topic", "/other/label"]) == 0
    metas = [json.loads(next((tmp_path / d / "episodes").glob("*/meta.json")).read_text()) for d in ("a", "b")]
    assert [(m["action_topic"], m["gripper_action_topic"]) for m in metas] == [(LABEL, GLABEL), (TARGET, GCMD)]

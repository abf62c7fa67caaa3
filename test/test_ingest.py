"""Live streams -> aligned observations (avdp_ros.control.ingest), driven by a fake clock: no rclpy, no sleeps."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from avdp_ros.control.ingest import REJECTION_KINDS, IngestConfig, ObservationAssembler
from avdp_ros.geometry import axis_angle_to_quat, quat_angle
from avdp_ros.images import to_rgb

T0 = 100.0
SIZE = (8, 8)
CAM = "camera (/camera/camera/color/image_raw)"
WRIST = "wrist (/wrist_camera/color/image_raw)"
POSE = "ee_pose (/cartesian_impedance_controller/current_pose)"
GRIP = "gripper (/gripper/joint_states)"
CAM_ID = {"camera": 1, "wrist": 2}
# name: (period s, stamp phase s, transport latency s); the two cameras run at different phases
STREAMS = {
    "camera": (1 / 30, 0.000, 0.030),
    "wrist": (1 / 30, 0.012, 0.025),
    "ee_pose": (1 / 200, 0.0, 0.002),
    "gripper": (1 / 50, 0.003, 0.004),
}


def true_pose(t: float) -> np.ndarray:
    """Fast linear motion + constant-rate rotation about z: interpolation is exact, nearest is not."""
    r = axis_angle_to_quat(np.array([0.0, 0.0, 1.0 * (t - T0)]))
    return np.concatenate([[0.3 + 0.5 * (t - T0), 0.1, 0.4], r])


def true_width(t: float) -> float:
    return 0.02 + 0.01 * (t - T0)


def frame(camera: str, k: int) -> np.ndarray:
    """Frame k of a camera, identifiable from its pixels (red = k mod 256, green = camera)."""
    img = np.zeros((*SIZE, 3), np.uint8)
    img[..., 0] = k % 256
    img[..., 1] = CAM_ID[camera]
    return img


def frame_id(img: np.ndarray) -> tuple[int, int]:
    return int(img[0, 0, 1]), int(img[0, 0, 0])


class Robot:
    """Publishes every stream on the fake clock; `run(until)` delivers what arrives by then."""

    def __init__(self, asm: ObservationAssembler, latency: dict[str, float] | None = None,
                 stamp_offset: dict[str, float] | None = None):
        self.asm = asm
        self.t = T0
        self.latency = {n: lat for n, (_, _, lat) in STREAMS.items()} | (latency or {})
        self.stamp_offset = stamp_offset or {}  # a sender whose clock is off
        self.silent: set[str] = set()

    def stamp(self, name: str, k: int) -> float:
        period, phase, _ = STREAMS[name]
        return T0 + phase + k * period

    def run(self, until: float) -> None:
        events = []
        for name, (period, phase, _) in STREAMS.items():
            lat = self.latency[name]
            first = max(0, math.floor((self.t - lat - T0 - phase) / period))
            for k in range(first, math.ceil((until - T0) / period) + 1):
                arrival = self.stamp(name, k) + lat
                if self.t < arrival <= until and name not in self.silent:
                    events.append((arrival, name, k))
        for arrival, name, k in sorted(events):
            s = self.stamp(name, k) + self.stamp_offset.get(name, 0.0)
            if name == "ee_pose":
                err = self.asm.add_pose(s, true_pose(s), "panda_link0", arrival)
            elif name == "gripper":
                err = self.asm.add_gripper(s, true_width(s), arrival)
            else:
                err = self.asm.add_image(name, s, frame(name, k), arrival)
            assert err is None, err
        self.t = until


def make(**cfg) -> tuple[ObservationAssembler, Robot]:
    asm = ObservationAssembler(IngestConfig(image_size=SIZE, **cfg))
    return asm, Robot(asm)


def test_two_cameras_at_different_phases_pick_matching_frames():
    asm, robot = make(stamp_tolerance_s=0.015)
    # camera frame 30 (stamp +1.000) has arrived, its wrist partner (+1.012) has not: the newest
    # matching pair is frame 29 of both (stamps 0.967 / 0.979, 12 ms apart)
    robot.run(T0 + 1.032)
    obs, reason = asm.assemble(T0 + 1.032, "stack the cubes")
    assert reason is None
    assert frame_id(obs["camera"]) == (1, 29) and frame_id(obs["wrist"]) == (2, 29)
    assert obs["t_obs"] == pytest.approx(0.5 * (robot.stamp("camera", 29) + robot.stamp("wrist", 29)), abs=1e-12)
    assert obs["instruction"] == "stack the cubes"
    # once the partner arrives, the newest pair is used
    robot.run(T0 + 1.040)
    obs, _ = asm.assemble(T0 + 1.040)
    assert frame_id(obs["camera"]) == (1, 30) and frame_id(obs["wrist"]) == (2, 30)


def test_pose_and_gripper_interpolated_at_t_obs():
    asm, robot = make()
    for now in np.arange(T0 + 0.5, T0 + 1.0, 0.0137):  # t_obs falls between 200 Hz pose samples
        robot.run(now)
        obs, reason = asm.assemble(now)
        assert reason is None
        t = obs["t_obs"]
        ref = true_pose(t)
        assert obs["ee_pose"].shape == (7,) and np.abs(obs["ee_pose"][:3] - ref[:3]).max() < 1e-9
        assert quat_angle(obs["ee_pose"][3:], ref[3:]) < 1e-6
        assert obs["gripper"] == pytest.approx(true_width(t), abs=1e-12)
        assert 0 < now - t <= 0.25
        for cam in ("camera", "wrist"):
            assert obs[cam].shape == (*SIZE, 3) and obs[cam].dtype == np.uint8


def good_pose(now: float) -> np.ndarray:
    return true_pose(now - 0.001)


# each case: the bad call, then (stream, kind, text the message must hold besides the stream label)
BAD_INPUTS = {
    "pose-frame": (lambda a, now: a.add_pose(now - 0.001, good_pose(now), "world", now),
                   POSE, "frame", "frame_id 'world', expected 'panda_link0'"),
    "pose-nan": (lambda a, now: a.add_pose(now - 0.001, np.r_[np.nan, good_pose(now)[1:]], "panda_link0", now),
                 POSE, "non_finite", "expected finite numbers"),
    "pose-inf": (lambda a, now: a.add_pose(now - 0.001, np.r_[good_pose(now)[:6], np.inf], "panda_link0", now),
                 POSE, "non_finite", "expected finite numbers"),
    "pose-quaternion": (lambda a, now: a.add_pose(now - 0.001, [0.3, 0, 0.4, 0, 0, 0, 0], "panda_link0", now),
                        POSE, "quaternion", "quaternion norm 0.000, expected a unit quaternion"),
    "pose-shape": (lambda a, now: a.add_pose(now - 0.001, [0.3, 0, 0.4, 0, 0, 1], "panda_link0", now),
                   POSE, "shape", "expected 7 values (x, y, z, qx, qy, qz, qw)"),
    "pose-future": (lambda a, now: a.add_pose(now + 0.2, good_pose(now), "panda_link0", now),
                    POSE, "future", "0.200 s ahead of now, expected <= 0.05 s"),
    "pose-backwards": (lambda a, now: a.add_pose(now - 0.05, good_pose(now), "panda_link0", now),
                       POSE, "backwards", "before the last accepted"),
    "pose-duplicate": (lambda a, now: a.add_pose(a._streams["ee_pose"].last_stamp, good_pose(now), "panda_link0", now),
                       POSE, "duplicate", "repeated, expected increasing stamps"),
    "pose-zero-stamp": (lambda a, now: a.add_pose(0.0, good_pose(now), "panda_link0", now),
                        POSE, "no_stamp", "header stamp 0.0, expected the capture time"),
    "gripper-nan": (lambda a, now: a.add_gripper(now - 0.001, float("nan"), now),
                    GRIP, "non_finite", "width nan, expected a finite width in metres"),
    "gripper-backwards": (lambda a, now: a.add_gripper(now - 0.2, 0.03, now),
                          GRIP, "backwards", "expected increasing stamps"),
    "camera-shape": (lambda a, now: a.add_image("camera", now - 0.01, np.zeros((16, 16, 3), np.uint8), now),
                     CAM, "shape", "expected uint8 (8, 8, 3) RGB"),
    "camera-dtype": (lambda a, now: a.add_image("camera", now - 0.01, np.zeros((*SIZE, 3), np.float32), now),
                     CAM, "shape", "float32 (8, 8, 3), expected uint8"),
    "camera-future": (lambda a, now: a.add_image("camera", now + 0.1, frame("camera", 0), now),
                      CAM, "future", "ahead of now, expected <= 0.05 s"),
    "camera-nan-stamp": (lambda a, now: a.add_image("camera", float("nan"), frame("camera", 0), now),
                         CAM, "no_stamp", "expected the capture time"),
    "wrist-encoding": (lambda a, now: a.add_image_msg("wrist", now - 0.01, SimpleNamespace(
        height=8, width=8, encoding="yuv422", step=16, data=bytes(128)), now),
        WRIST, "image", "'yuv422': expected one of rgb8, bgr8"),
    "wrist-corrupt-jpeg": (lambda a, now: a.add_image_msg("wrist", now - 0.01, SimpleNamespace(
        format="jpeg", data=b"\xff\xd8\xff" + bytes(50) + b"\xff\xd9"), now),
        WRIST, "image", "not a decodable jpeg, expected valid jpeg data"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_rejected_named_and_counted(case: str):
    call, label, kind, text = BAD_INPUTS[case]
    stream = label.split(" ")[0]
    asm, robot = make()
    now = T0 + 0.5
    robot.run(now)
    before, _ = asm.assemble(now)
    msg = call(asm, now)
    assert isinstance(msg, str) and msg.startswith(label + ":") and text in msg, msg
    assert kind in REJECTION_KINDS
    assert asm.rejected == Counter({(stream, kind): 1})
    assert asm.last_rejection[stream] == msg
    # the bad input never entered the buffers: the observation is unchanged
    after, reason = asm.assemble(now)
    assert reason is None and after["t_obs"] == before["t_obs"]
    assert np.array_equal(after["ee_pose"], before["ee_pose"]) and after["gripper"] == before["gripper"]
    assert all(after[c] is before[c] for c in ("camera", "wrist"))


def test_unknown_camera_is_a_programming_error():
    asm, _ = make()
    with pytest.raises(ValueError, match=r"camera 'left': expected one of \['camera', 'wrist'\]"):
        asm.add_image("left", T0, frame("camera", 0), T0)


def test_nothing_yet_names_every_stream():
    asm, _ = make()
    obs, reason = asm.assemble(T0)
    assert obs is None
    for label in (CAM, WRIST, POSE, GRIP):
        assert f"{label}: no message yet" in reason
    assert asm.not_ready == Counter({(s, "missing"): 1 for s in ("camera", "wrist", "ee_pose", "gripper")})


def test_stream_whose_every_message_is_rejected_says_why():
    asm, robot = make()
    robot.silent.add("ee_pose")
    robot.run(T0 + 0.5)
    asm.add_pose(T0 + 0.499, good_pose(T0 + 0.5), "world", T0 + 0.5)
    _, reason = asm.assemble(T0 + 0.5)
    assert reason == (f"{POSE}: no message yet (last rejected: {POSE}: frame_id 'world', expected 'panda_link0')")


def test_silent_camera_then_recovery():
    asm, robot = make()
    robot.run(T0 + 1.0)
    assert asm.assemble(T0 + 1.0)[1] is None
    robot.silent.add("wrist")
    # 0.3 s later the wrist's newest frame has no partner in the camera's 5-frame buffer
    robot.run(T0 + 1.3)
    obs, reason = asm.assemble(T0 + 1.3)
    behind = robot.stamp("camera", 38) - robot.stamp("wrist", 28)  # newest of each (arrived by 1.3 / 1.0)
    assert obs is None and "out of sync" in reason and f"{WRIST} is {behind:.3f} s behind" in reason
    # past its 0.5 s timeout it is silent, and only the wrist is named
    robot.run(T0 + 1.6)
    obs, reason = asm.assemble(T0 + 1.6)
    assert obs is None
    quiet = T0 + 1.6 - (robot.stamp("wrist", 28) + STREAMS["wrist"][2])  # since its last arrival
    assert reason == f"{WRIST}: silent for {quiet:.3f} s (timeout 0.5 s)"
    assert asm.not_ready[("wrist", "silent")] == 1 and asm.not_ready[("cameras", "out_of_sync")] == 1
    # recovery: the wrist publishes again
    robot.silent.clear()
    robot.run(T0 + 1.7)
    obs, reason = asm.assemble(T0 + 1.7)
    assert reason is None and T0 + 1.6 < obs["t_obs"] < T0 + 1.7
    assert frame_id(obs["wrist"])[0] == 2


def test_silent_pose_stream_times_out_at_its_own_timeout():
    asm, robot = make()
    robot.run(T0 + 1.0)
    robot.silent.add("ee_pose")
    robot.run(T0 + 1.09)
    assert asm.assemble(T0 + 1.09)[1] is None  # 0.09 s < pose timeout 0.1 s
    robot.run(T0 + 1.11)
    obs, reason = asm.assemble(T0 + 1.11)
    assert obs is None and reason.startswith(f"{POSE}: silent for 0.1") and "(timeout 0.1 s)" in reason


def test_late_frames_make_a_stale_observation():
    asm = ObservationAssembler(IngestConfig(image_size=SIZE))
    robot = Robot(asm, latency={"camera": 0.3, "wrist": 0.3})  # arriving steadily, but 0.3 s old
    robot.run(T0 + 1.0)
    obs, reason = asm.assemble(T0 + 1.0)
    assert obs is None and reason.startswith("stale observation: t_obs is 0.3")
    assert "expected <= 0.25 s" in reason and "camera 0.3" in reason and "wrist 0.3" in reason
    assert asm.not_ready == Counter({("observation", "stale"): 1})


def test_pose_clock_behind_has_no_sample_at_t_obs():
    asm = ObservationAssembler(IngestConfig(image_size=SIZE))
    robot = Robot(asm, stamp_offset={"ee_pose": -0.3})
    robot.run(T0 + 1.0)
    obs, reason = asm.assemble(T0 + 1.0)
    assert obs is None and reason.startswith(f"{POSE}: nearest sample is 0.2") and "expected within 0.1 s" in reason


def test_cameras_with_offset_clocks_are_out_of_sync():
    asm = ObservationAssembler(IngestConfig(image_size=SIZE))
    robot = Robot(asm, stamp_offset={"wrist": -0.2})
    robot.run(T0 + 1.0)
    obs, reason = asm.assemble(T0 + 1.0)
    assert obs is None and "cameras out of sync: no frames within 0.05 s" in reason
    behind = robot.stamp("camera", 29) - (robot.stamp("wrist", 28) - 0.2)  # the newest frames
    assert f"{WRIST} is {behind:.3f} s behind" in reason


def test_clock_jump_back_clears_old_timeline():
    asm, robot = make()
    robot.run(T0 + 1.0)
    assert asm.assemble(T0 + 1.0)[1] is None
    # the simulation restarts its clock at T0: stamps go back, and so does now
    robot2 = Robot(asm)
    robot2.run(T0 + 0.5)  # asserts every message is accepted (none "backwards")
    assert asm.clock_resets == 1 and sum(asm.rejected.values()) == 0
    obs, reason = asm.assemble(T0 + 0.5)
    assert reason is None and T0 + 0.4 < obs["t_obs"] < T0 + 0.5


def test_reset_drops_samples():
    asm, robot = make()
    robot.run(T0 + 0.5)
    asm.reset()
    obs, reason = asm.assemble(T0 + 0.5)
    assert obs is None and f"{CAM}: no message yet" in reason


def test_image_messages_are_converted_to_model_size():
    asm, robot = make()
    robot.silent = {"camera", "wrist"}
    robot.run(T0 + 0.5)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    raw = SimpleNamespace(height=16, width=24, encoding="bgr8", step=72, data=rgb[..., ::-1].tobytes())
    ok, png = cv2.imencode(".png", rgb[..., ::-1])
    comp = SimpleNamespace(format="rgb8; png compressed bgr8", data=png.tobytes())
    assert asm.add_image_msg("camera", T0 + 0.49, raw, T0 + 0.5) is None
    assert asm.add_image_msg("wrist", T0 + 0.495, comp, T0 + 0.5) is None
    obs, reason = asm.assemble(T0 + 0.5)
    want = cv2.resize(rgb, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA)
    assert reason is None and np.array_equal(obs["camera"], want) and np.array_equal(obs["wrist"], want)
    assert np.array_equal(obs["camera"], to_rgb(raw, SIZE))


def test_raw_images_are_converted_only_when_an_observation_uses_them(monkeypatch):
    import avdp_ros.control.ingest as ingest

    converted = []
    real = ingest.pixels_to_rgb
    monkeypatch.setattr(ingest, "pixels_to_rgb", lambda *a: converted.append(a[1]) or real(*a))
    asm, robot = make()
    robot.silent = {"camera", "wrist"}
    robot.run(T0 + 0.5)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(4)]
    for k, rgb in enumerate(frames):  # 4 frames per camera, 1/30 s apart: only the newest pair is used
        t = T0 + 0.38 + k / 30
        for cam in ("camera", "wrist"):
            raw = SimpleNamespace(height=16, width=24, encoding="rgb8", step=72, data=rgb.tobytes())
            assert asm.add_image_msg(cam, t, raw, T0 + 0.5) is None
    assert converted == []  # checked on arrival, not converted
    for _ in range(2):  # the second observation reuses the converted pair
        obs, reason = asm.assemble(T0 + 0.5)
        assert reason is None
    want = cv2.resize(frames[-1], (SIZE[1], SIZE[0]), interpolation=cv2.INTER_AREA)
    assert np.array_equal(obs["camera"], want) and np.array_equal(obs["wrist"], want)
    assert converted == ["rgb8", "rgb8"]


def test_expect_size_rejects_other_camera_sizes():
    asm = ObservationAssembler(IngestConfig(image_size=SIZE, expect_size=(16, 24)))
    small = SimpleNamespace(height=8, width=8, encoding="rgb8", step=24, data=bytes(192))
    msg = asm.add_image_msg("camera", T0, small, T0)
    assert msg.startswith(f"{CAM}: image size 8x8 (height x width): expected 16x24")
    assert asm.rejected == Counter({("camera", "image"): 1})
    right = SimpleNamespace(height=16, width=24, encoding="rgb8", step=72, data=bytes(16 * 72))
    assert asm.add_image_msg("camera", T0, right, T0) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cameras": {}}, "cameras is empty"),
        ({"cameras": {"ee_pose": "/x"}}, "camera name 'ee_pose' clashes"),
        ({"cameras": {"camera": ""}}, "camera 'camera': topic '', expected a non-empty topic"),
        ({"image_size": (0, 8)}, r"image_size=\(0, 8\): expected positive \(height, width\)"),
        ({"expect_size": (480,)}, r"expect_size=\(480,\): expected \(height, width\)"),
        ({"stamp_tolerance_s": 0.0}, "stamp_tolerance_s=0.0: expected a finite number of seconds > 0"),
        ({"pose_timeout_s": float("nan")}, "pose_timeout_s=nan: expected a finite number"),
        ({"max_future_skew_s": -0.1}, r"max_future_skew_s=-0.1: expected seconds >= 0"),
        ({"camera_buffer": 0}, "camera_buffer=0: expected >= 1"),
        ({"history_s": 0.5}, "history_s=0.5: expected >= max_age_s"),
        ({"frame_id": ""}, "frame_id is empty"),
    ],
)
def test_config_errors(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        IngestConfig(**kwargs)


def test_config_defaults():
    cfg = IngestConfig(image_size=[64, 96])
    assert cfg.image_size == (64, 96) and cfg.stamp_tolerance_s == 0.05 and cfg.max_age_s == 0.25
    assert (cfg.camera_timeout_s, cfg.pose_timeout_s, cfg.gripper_timeout_s) == (0.5, 0.1, 0.5)
    assert cfg.max_future_skew_s == 0.05 and cfg.frame_id == "panda_link0"

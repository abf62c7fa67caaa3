"""Bag directory -> episode dataset (pure; no rclpy).

Every bag under ``IN_DIR`` (a directory holding ``metadata.yaml`` or a ``.mcap``) becomes one
episode: images, poses and gripper widths aligned on ``header.stamp`` onto an ``obs_hz`` grid,
actions from the commanded (or the expert's intended) targets at ``action_hz``, images converted
to RGB and resized. The on-disk format, the alignment rules and every manifest field are
specified in ``docs/dataset_format.md``; ``avdp_ros.data.dataset.EpisodeDataset`` reads it.

Bad bags (missing required topic, unreadable, wrong encoding, empty, no overlap) raise
``ConversionError`` naming bag and topic, are listed under ``failed`` and the rest still
converts. Bags cut off by SIGKILL are read up to their last complete chunk (a warning; the
episode is flagged ``truncated``); the input directory is never modified.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.data.align import command_lead_s, nearest_indices, sorted_unique, zero_order_hold
from avdp_ros.data.bag_io import bag_info, default_typestore, has_header, header_stamp_ns, read_bag
from avdp_ros.data.dataset import FORMAT as FORMAT  # re-exported for callers
from avdp_ros.data.dataset import FORMAT_VERSION as FORMAT_VERSION
from avdp_ros.data.dataset import finish_episode, prepare_output, write_manifest
from avdp_ros.geometry import interpolate_poses, quat_normalize
from avdp_ros.images import SUPPORTED_ENCODINGS as SUPPORTED_ENCODINGS  # re-exported for callers
from avdp_ros.images import ImageError, to_rgb

log = logging.getLogger(__name__)

class ConversionError(Exception):
    """A bag that cannot become an episode; the message names the bag and the topic."""

    def __init__(self, bag: Path | str, topic: str | None, what: str) -> None:
        self.bag = str(bag)
        self.topic = topic
        where = f"bag {bag}" + (f": topic {topic}" if topic else "")
        super().__init__(f"{where}: {what}")


@dataclass
class ConvertConfig:
    """What to convert and how (defaults: the robot's topics in nodes/topics.py)."""

    obs_hz: float = 10.0
    action_hz: float = 10.0  # an integer multiple of obs_hz
    image_size: tuple[int, int] = (128, 128)  # (height, width)
    image_tolerance_s: float = 0.05  # max |frame stamp - grid time|; > 1 frame period at 30 Hz
    max_gap_s: float = 0.15  # a nearest frame further away than this fails the bag (on_gap="error")
    on_gap: str = "error"  # "error" | "nearest"
    max_command_lag_s: float = 0.03  # warn when the target lags the measured pose by more (clock mismatch)
    cameras: dict[str, str] = field(
        default_factory=lambda: {
            "camera": "/camera/camera/color/image_raw",
            "wrist": "/wrist_camera/color/image_raw",
        }
    )
    pose_topic: str = "/cartesian_impedance_controller/current_pose"
    target_topic: str = "/cartesian_impedance_controller/target_frame"
    label_topic: str = "/avdp/expert/intended_target"  # preferred action source when present
    gripper_label_topic: str = "/avdp/expert/intended_gripper"  # its gripper width, used with label_topic
    gripper_state_topic: str = "/gripper/joint_states"
    gripper_cmd_topic: str = "/gripper/command"
    episode_info_topic: str = "/avdp/episode_info"

    def __post_init__(self) -> None:
        if self.obs_hz <= 0:
            raise ValueError(f"obs_hz={self.obs_hz}: expected > 0")
        ratio = self.action_hz / self.obs_hz
        if self.action_hz < self.obs_hz or abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"action_hz={self.action_hz} must be an integer multiple of obs_hz={self.obs_hz}"
            )
        h, w = (int(x) for x in self.image_size)
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size={self.image_size}: expected positive (height, width)")
        self.image_size = (h, w)
        if not self.max_gap_s >= self.image_tolerance_s > 0:
            raise ValueError(f"max_gap_s={self.max_gap_s}, image_tolerance_s={self.image_tolerance_s}: "
                             "expected 0 < image_tolerance_s <= max_gap_s")
        if self.on_gap not in ("error", "nearest"):
            raise ValueError(f"on_gap={self.on_gap!r}: expected 'error' or 'nearest'")
        if set(self.cameras) & {"ee_pose", "gripper", "action", "stamps", "meta"}:
            raise ValueError(f"camera names {sorted(self.cameras)} clash with episode file names")

    @property
    def action_ratio(self) -> int:
        return int(round(self.action_hz / self.obs_hz))


@dataclass
class ConvertReport:
    episodes: list[dict[str, Any]]
    failed: list[dict[str, str]]
    frames: int  # observation steps written
    seconds: float

    @property
    def episodes_per_s(self) -> float:
        return len(self.episodes) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# message helpers


def _stamp(msg, fallback_ns: int) -> int:
    s = msg.header.stamp
    ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
    return ns if ns else fallback_ns


def _pose7(msg) -> list[float]:
    p, q = msg.pose.position, msg.pose.orientation
    return [p.x, p.y, p.z, q.x, q.y, q.z, q.w]


def image_to_rgb(msg, bag: Path | str, topic: str, size: tuple[int, int]) -> np.ndarray:
    """sensor_msgs/Image (rosbags message) -> (H, W, 3) uint8 RGB resized to ``size`` (h, w).

    The live policy node uses the same ``avdp_ros.images.to_rgb``, so training and inference
    see identical pixels; its ``ImageError`` becomes a ``ConversionError`` naming bag and topic.
    """
    try:
        return to_rgb(msg, size)
    except ImageError as err:
        raise ConversionError(bag, topic, str(err)) from err


# ----------------------------------------------------------------------------------------------
# one bag


@dataclass
class _Streams:
    """The small streams of one bag (stamps ns, values) and its image header stamps, from pass 1."""

    pose_t: Any
    pose_v: Any
    grip_t: Any
    grip_v: Any
    tgt_t: list
    tgt_v: list
    gcmd_t: list
    gcmd_v: list
    img_stamps: dict[str, np.ndarray]
    episode_info: dict[str, Any]


def _topics(bag: Path, info, cfg: ConvertConfig) -> tuple[bool, str, str]:
    """Check the bag's required topics and types; -> (has_actions, action topic, gripper action topic)."""
    if sum(info.counts.values()) == 0:
        raise ConversionError(bag, None, "empty bag: no messages")
    required = [*cfg.cameras.values(), cfg.pose_topic, cfg.gripper_state_topic]
    expected_types = {
        cfg.pose_topic: "geometry_msgs/msg/PoseStamped",
        cfg.target_topic: "geometry_msgs/msg/PoseStamped",
        cfg.label_topic: "geometry_msgs/msg/PoseStamped",
        cfg.gripper_state_topic: "sensor_msgs/msg/JointState",
        cfg.gripper_cmd_topic: "std_msgs/msg/Float64",
        cfg.gripper_label_topic: "std_msgs/msg/Float64",
        cfg.episode_info_topic: "std_msgs/msg/String",
    }
    expected_types.update({t: "sensor_msgs/msg/Image" for t in cfg.cameras.values()})
    for topic in required:
        if info.counts.get(topic, 0) == 0:
            what = "no messages" if topic in info.topics else "missing"
            raise ConversionError(bag, topic, f"required topic {what} (bag has {sorted(info.topics)})")
    for topic, typ in expected_types.items():
        if topic in info.topics and info.topics[topic] != typ:
            raise ConversionError(bag, topic, f"type {info.topics[topic]!r}, expected {typ!r}")
    has_actions = info.counts.get(cfg.target_topic, 0) > 0
    action_topic = cfg.label_topic if has_actions and info.counts.get(cfg.label_topic, 0) > 0 else cfg.target_topic
    labelled = action_topic == cfg.label_topic and info.counts.get(cfg.gripper_label_topic, 0) > 0
    return has_actions, action_topic, cfg.gripper_label_topic if labelled else cfg.gripper_cmd_topic


def _read_streams(bag: Path, cfg: ConvertConfig, action_topic: str, gripper_topic: str) -> _Streams:
    """Pass 1: everything small, plus the header stamps of the images (no pixel decoding)."""
    ts = default_typestore()
    cam_topics = set(cfg.cameras.values())
    img_stamps: dict[str, list[int]] = {t: [] for t in cam_topics}
    pose_t, pose_v, tgt_t, tgt_v, grip_t, grip_v, gcmd_t, gcmd_v = ([] for _ in range(8))
    episode_info: dict[str, Any] = {}
    small = {cfg.pose_topic, action_topic, cfg.gripper_state_topic, gripper_topic, cfg.episode_info_topic}
    try:
        for m in read_bag(bag, cam_topics | small):
            if m.topic in cam_topics:
                ns = header_stamp_ns(m.data) if has_header(m.msgtype) else 0
                img_stamps[m.topic].append(ns or m.timestamp)
                continue
            msg = ts.deserialize_cdr(m.data, m.msgtype)
            if m.topic == cfg.pose_topic:
                pose_t.append(_stamp(msg, m.timestamp))
                pose_v.append(_pose7(msg))
            elif m.topic == action_topic:
                tgt_t.append(_stamp(msg, m.timestamp))
                tgt_v.append(_pose7(msg))
            elif m.topic == cfg.gripper_state_topic:
                if len(msg.position) < 2:
                    raise ConversionError(
                        bag, m.topic, f"{len(msg.position)} positions, expected 2 finger positions"
                    )
                grip_t.append(_stamp(msg, m.timestamp))
                grip_v.append(float(msg.position[0] + msg.position[1]))
            elif m.topic == gripper_topic:
                gcmd_t.append(m.timestamp)
                gcmd_v.append(float(msg.data))
            elif m.topic == cfg.episode_info_topic:
                try:
                    episode_info.update(json.loads(msg.data))
                except json.JSONDecodeError:
                    log.warning("bag %s: %s is not JSON, ignored", bag, m.topic)
    except ConversionError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ConversionError(bag, None, f"unreadable: {type(err).__name__}: {err}") from err
    pose_t, pose_v = sorted_unique(pose_t, pose_v)
    grip_t, grip_v = sorted_unique(grip_t, grip_v)
    cam_st = {t: np.asarray(v, dtype=np.int64) for t, v in img_stamps.items()}
    return _Streams(pose_t, pose_v, grip_t, grip_v, tgt_t, tgt_v, gcmd_t, gcmd_v, cam_st, episode_info)


def _camera_picks(bag: Path, cfg: ConvertConfig, s: _Streams, grid: np.ndarray,
                  align: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per camera topic, the ordinal (file order) of the frame each step shows; fills `align`."""
    T = len(grid)
    tol = int(cfg.image_tolerance_s * 1e9)
    picks: dict[str, np.ndarray] = {}
    for name, topic in cfg.cameras.items():
        st = s.img_stamps[topic]
        order = np.argsort(st, kind="stable")
        idx, err_ns = nearest_indices(st[order], grid)
        gaps = np.flatnonzero(err_ns > tol)
        long_gaps = np.flatnonzero(err_ns > int(cfg.max_gap_s * 1e9))
        if len(long_gaps) and cfg.on_gap == "error":
            k = int(long_gaps[0])
            raise ConversionError(
                bag,
                topic,
                f"{len(long_gaps)} of {T} steps have no frame within {cfg.max_gap_s * 1e3:.0f} ms "
                f"(first at step {k}, t={grid[k]} ns, nearest frame {err_ns[k] / 1e6:.1f} ms away); "
                "expected a continuous camera stream (on_gap='nearest' keeps such bags)",
            )
        if len(gaps):
            log.warning("%s: %s: %d of %d steps have no frame within %.0f ms; nearest frames used",
                        bag, topic, len(gaps), T, cfg.image_tolerance_s * 1e3)
        picks[topic] = order[idx]
        align[name] = {
            "max_offset_ms": float(err_ns.max() / 1e6),
            "gaps": int(len(gaps)),
            "frames_in_bag": int(len(st)),
        }
    return picks


def _actions(bag: Path, cfg: ConvertConfig, s: _Streams, t0: int, T: int, align: dict[str, Any]) -> np.ndarray:
    """(T * action_ratio, 8) commanded pose + gripper width on the action grid (the measured pose
    and width before the first command); records the command lead in `align`."""
    r = cfg.action_ratio
    tgt_t, tgt_v = sorted_unique(s.tgt_t, s.tgt_v)
    tq = t0 + int(round(1e9 / cfg.action_hz)) * np.arange(T * r, dtype=np.int64)  # (T*r,)
    held = interpolate_poses(s.pose_t.astype(np.float64), s.pose_v, tq.astype(np.float64))
    i = zero_order_hold(tgt_t, tq)
    act_pose = np.where((i >= 0)[:, None], tgt_v[np.maximum(i, 0)], held)
    act_pose[:, 3:] = quat_normalize(act_pose[:, 3:])
    measured_w = np.interp(tq.astype(np.float64), s.grip_t.astype(np.float64), s.grip_v)
    if s.gcmd_t:
        gcmd_t, gcmd_v = sorted_unique(s.gcmd_t, s.gcmd_v)
        j = zero_order_hold(gcmd_t, tq)
        act_grip = np.where(j >= 0, gcmd_v[np.maximum(j, 0)], measured_w)
    else:
        act_grip = measured_w
    lead = command_lead_s(s.pose_t, s.pose_v[:, :3], tgt_t, tgt_v[:, :3])
    align["command_lead_ms"] = None if lead is None else round(lead * 1e3, 1)
    if lead is not None and lead < -cfg.max_command_lag_s:
        log.warning("%s: the commanded target lags the measured pose by %.0f ms (expected it to lead): "
                    "command and state stamps disagree, so the recorded actions are stale; synchronise "
                    "the clocks of the machines (chrony/PTP) before training on this bag", bag, -lead * 1e3)
    return np.concatenate([act_pose, act_grip[:, None]], axis=1).astype(np.float32)  # (T*r, 8)


def _write_frames(bag: Path, cfg: ConvertConfig, picks: dict[str, np.ndarray], T: int, tmp: Path) -> None:
    """Pass 2: decode only the picked frames, straight into memory-mapped `<camera>.npy` files."""
    ts = default_typestore()
    h, w = cfg.image_size
    arrays = {
        name: np.lib.format.open_memmap(tmp / f"{name}.npy", "w+", np.uint8, (T, h, w, 3))
        for name in cfg.cameras
    }
    steps_of: dict[str, dict[int, list[int]]] = {}
    for topic in cfg.cameras.values():
        d: dict[int, list[int]] = {}
        for k, ordinal in enumerate(picks[topic]):
            d.setdefault(int(ordinal), []).append(k)
        steps_of[topic] = d
    name_of = {topic: name for name, topic in cfg.cameras.items()}
    ordinal = {t: -1 for t in name_of}
    try:
        for m in read_bag(bag, set(name_of)):
            ordinal[m.topic] += 1
            ks = steps_of[m.topic].get(ordinal[m.topic])
            if not ks:
                continue
            img = image_to_rgb(ts.deserialize_cdr(m.data, m.msgtype), bag, m.topic, cfg.image_size)
            arrays[name_of[m.topic]][ks] = img
    except ConversionError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ConversionError(bag, None, f"unreadable images: {type(err).__name__}: {err}") from err
    for a in arrays.values():
        a.flush()


def convert_bag(bag: str | os.PathLike, out_dir: str | os.PathLike, cfg: ConvertConfig | None = None) -> dict:
    """Convert one bag into ``out_dir`` (created; must not exist). Returns its manifest entry.

    Raises:
        ConversionError: the bag cannot become an episode (message names bag and topic).
    """
    cfg = cfg or ConvertConfig()
    bag = Path(bag)
    out_dir = Path(out_dir)
    try:
        info = bag_info(bag)
    except Exception as err:  # noqa: BLE001 - any reader failure is this bag's failure
        raise ConversionError(bag, None, f"unreadable: {err}") from err
    if info.truncated:
        log.warning("bag %s was cut off (no summary/metadata): reading its complete chunks only", bag)
    has_actions, action_topic, gripper_topic = _topics(bag, info, cfg)
    s = _read_streams(bag, cfg, action_topic, gripper_topic)

    firsts = [s.pose_t[0], s.grip_t[0]] + [st.min() for st in s.img_stamps.values()]
    lasts = [s.pose_t[-1], s.grip_t[-1]] + [st.max() for st in s.img_stamps.values()]
    t0, t1 = max(firsts), min(lasts)
    dt = int(round(1e9 / cfg.obs_hz))
    if t1 < t0:
        raise ConversionError(
            bag, None, f"required topics do not overlap in time (latest start {t0}, earliest end {t1} ns)"
        )
    T = int((t1 - t0) // dt) + 1
    grid = t0 + dt * np.arange(T, dtype=np.int64)  # (T,)
    align: dict[str, Any] = {}
    picks = _camera_picks(bag, cfg, s, grid, align)
    ee_pose = interpolate_poses(s.pose_t.astype(np.float64), s.pose_v, grid.astype(np.float64))  # (T, 7)
    gripper = np.interp(grid.astype(np.float64), s.grip_t.astype(np.float64), s.grip_v)  # (T,)
    action = _actions(bag, cfg, s, t0, T, align) if has_actions else None

    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_frames(bag, cfg, picks, T, tmp)
        np.save(tmp / "ee_pose.npy", ee_pose.astype(np.float32))
        np.save(tmp / "gripper.npy", gripper.astype(np.float32))
        np.save(tmp / "stamps.npy", grid)
        if action is not None:
            np.save(tmp / "action.npy", action)

        meta = dict(s.episode_info)
        meta.update(info.metadata)  # recorder metadata (written at stop: knows success) wins
        entry = {
            "name": out_dir.name,
            "source_bag": str(bag),
            "length": T,
            "has_actions": has_actions,
            "instruction": meta.get("instruction", ""),
            "task": meta.get("task"),
            "seed": meta.get("seed"),
            "success": meta.get("success"),
            "truncated": info.truncated,
            "command_lead_ms": align.get("command_lead_ms"),
            "action_topic": action_topic if has_actions else None,
            "gripper_action_topic": gripper_topic if has_actions and len(s.gcmd_t) else None,
        }
        return finish_episode(tmp, out_dir, entry, {"metadata": meta, "t0_ns": int(t0), "t1_ns": int(t1),
                                                    "alignment": align, "message_counts": info.counts})
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# a directory


def find_bags(in_dir: str | os.PathLike) -> list[Path]:
    """Bag directories under ``in_dir`` (itself included): those holding metadata.yaml or a .mcap."""
    root = Path(in_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input {root}: not a directory")
    bags = set()
    for p in [root, *root.rglob("*")]:
        if (
            p.is_dir()
            and not p.name.startswith(".")
            and ((p / "metadata.yaml").exists() or any(p.glob("*.mcap")))
        ):
            bags.add(p)
    return sorted(bags)


def convert_directory(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ConvertConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> ConvertReport:
    """Convert every bag under ``in_dir`` into the dataset at ``out_dir``; write ``manifest.json``."""
    from tqdm import tqdm

    cfg = cfg or ConvertConfig()
    out = prepare_output(out_dir, overwrite)
    bags = find_bags(in_dir)
    start = time.perf_counter()
    episodes: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    used: set[str] = set()
    for bag in tqdm(bags, desc="bags", unit="bag", disable=not progress):
        name = bag.name
        n = 1
        while name in used:
            n += 1
            name = f"{bag.name}_{n}"
        used.add(name)
        try:
            episodes.append(convert_bag(bag, out / "episodes" / name, cfg))
        except ConversionError as err:
            log.error("%s", err)
            failed.append({"source_bag": str(bag), "topic": err.topic, "error": str(err)})
    seconds = time.perf_counter() - start
    write_manifest(out, cfg, episodes, failed, str(Path(in_dir).expanduser()))
    frames = sum(e["length"] for e in episodes)
    return ConvertReport(episodes, failed, frames, seconds)

"""Bag directory -> episode dataset (pure; no rclpy).

Every bag under ``IN_DIR`` (a directory holding ``metadata.yaml`` or a ``.mcap``) becomes one
episode. Everything is aligned on ``header.stamp`` (bag time only for header-less messages such
as ``std_msgs/Float64``), never on arrival time.

Observation grid
    ``t_k = t0 + k / obs_hz`` for ``k = 0..T-1``, ``t0`` = the latest first stamp of the required
    streams (both cameras, ee pose, gripper state), last step <= the earliest last stamp.
    - camera / wrist: the frame whose stamp is nearest ``t_k``. If it is further than
      ``image_tolerance_s`` away the step is a gap (a dropped frame or two, common on real
      cameras): the nearest frame is kept and the gap counted in ``meta.json``. A frame further
      than ``max_gap_s`` away fails the bag by default (``on_gap="error"``: a long run of repeated
      frames would teach the video model a frozen world); ``on_gap="nearest"`` keeps it anyway.
    - ee pose: ``current_pose`` interpolated (linear + slerp, ``geometry.interpolate_poses``).
    - gripper: width = sum of the two finger positions of ``/gripper/joint_states``, linear.
Actions (``has_actions`` when the bag has a ``target_frame`` topic)
    Pose labels come from ``label_topic`` (``/avdp/expert/intended_target``) when the bag has it:
    a perturbed (DART-style) expert recording, where the executed target carries a deliberate
    offset and the label is what the expert meant from the perturbed state, or a DAgger recording
    where the policy drove and the expert only labelled; otherwise from ``target_frame``, the
    command that was executed. Gripper labels likewise come from ``gripper_label_topic``
    (``/avdp/expert/intended_gripper``) when the pose labels come from ``label_topic`` and the bag
    has it, else from ``/gripper/command``.
    ``r = action_hz / obs_hz`` (an integer) actions per observation step, at ``t0 + j / action_hz``,
    ``j = 0..T*r-1``: the latest commanded target pose at or before that time (zero-order hold,
    which is what the impedance controller tracked) and the latest gripper command. Before the
    first command the measured ee pose / gripper width stand in (the controller held the current
    pose). Without a ``/gripper/command`` topic the measured width is used throughout. Action
    row ``k*r + i`` belongs to observation ``k``.
Images
    ``rgb8, bgr8, rgba8, bgra8, mono8`` are converted to RGB (``avdp_ros.images.to_rgb``, shared
    with the live policy node), resized with ``cv2.INTER_AREA`` to ``image_size = (height, width)``;
    any other encoding fails the bag.

On-disk format (version 1; also ``docs/dataset_format.md``)::

    OUT/manifest.json
    OUT/episodes/<name>/camera.npy    (T, H, W, 3) uint8   third-person camera, RGB
                        wrist.npy     (T, H, W, 3) uint8   wrist camera, RGB
                        ee_pose.npy   (T, 7) float32       x y z qx qy qz qw, base frame, qw >= 0
                        gripper.npy   (T,) float32         measured width, m
                        action.npy    (T*r, 8) float32     target pose7 + commanded width (only
                                                           when has_actions)
                        stamps.npy    (T,) int64           grid times, ns (header-stamp clock)
                        meta.json     instruction, task, seed, success, source bag, alignment stats
                        [action_chunk.npy (T, Hc, 8) f32   avdp-dagger only: the expert's own chunk
                                                           per observation; entry "chunk_horizon"]

``manifest.json``: ``format``, ``format_version``, ``obs_hz``, ``action_hz``, ``action_ratio``,
``image_size``, ``cameras`` (name -> topic), ``topics``, ``episodes`` (name, source_bag, length,
has_actions, instruction, task, seed, success, truncated, files: {file: {bytes, sha256}}) and
``failed`` (source_bag, error). Plain ``.npy`` files load memory-mapped
(``np.load(p, mmap_mode="r")``); ``avdp_ros.data.dataset.EpisodeDataset`` wraps them.

Bad bags (missing required topic, unreadable, wrong encoding, empty, no overlap) raise
``ConversionError`` naming bag and topic, are listed under ``failed`` and the rest still
converts. Bags cut off by SIGKILL are read up to their last complete chunk (a warning; the
episode is flagged ``truncated``); the input directory is never modified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avdp_ros.data.bag_io import bag_info, default_typestore, has_header, header_stamp_ns, read_bag
from avdp_ros.geometry import interpolate_poses, quat_normalize
from avdp_ros.images import SUPPORTED_ENCODINGS as SUPPORTED_ENCODINGS  # re-exported for callers
from avdp_ros.images import ImageError, to_rgb

log = logging.getLogger(__name__)

FORMAT = "avdp-episodes"
FORMAT_VERSION = 1


class ConversionError(Exception):
    """A bag that cannot become an episode; the message names the bag and the topic."""

    def __init__(self, bag: Path | str, topic: str | None, what: str) -> None:
        self.bag = str(bag)
        self.topic = topic
        where = f"bag {bag}" + (f": topic {topic}" if topic else "")
        super().__init__(f"{where}: {what}")


@dataclass
class ConvertConfig:
    """What to convert and how (defaults match DESIGN.md section 4)."""

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


def nearest_indices(stamps: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest stamp for each query (stamps sorted) and the |difference| in ns."""
    hi = np.clip(np.searchsorted(stamps, query), 0, len(stamps) - 1)
    lo = np.clip(hi - 1, 0, len(stamps) - 1)
    pick = np.where(np.abs(stamps[lo] - query) <= np.abs(stamps[hi] - query), lo, hi)
    return pick, np.abs(stamps[pick] - query)


def zero_order_hold(stamps: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the latest stamp at or before each query; -1 where there is none (stamps sorted)."""
    return np.searchsorted(stamps, query, side="right") - 1


def command_lead_s(pose_t: np.ndarray, pose_xyz: np.ndarray, cmd_t: np.ndarray, cmd_xyz: np.ndarray,
                   max_lead_s: float = 0.5, step_s: float = 0.01, min_travel_m: float = 0.02) -> float | None:
    """How far the commanded target runs ahead of the measured pose, from their stamps: the shift d
    minimising |pose(t + d) - command(t)|. A tracking controller lags its target, so d > 0; d < 0
    means the command and state stamps come from clocks that disagree (unsynchronised machines, a
    simulator clock drifting from the wall), and every recorded action is stale by |d|.
    None if the arm barely moves (< `min_travel_m`), where the lead is not observable."""
    if len(cmd_t) < 2 or len(pose_t) < 2 or np.ptp(cmd_xyz, axis=0).max() < min_travel_m:
        return None
    t = (cmd_t - pose_t[0]) * 1e-9
    tp = (pose_t - pose_t[0]) * 1e-9
    leads = np.arange(-max_lead_s, max_lead_s + 1e-9, step_s)
    err = [np.mean(np.linalg.norm(np.stack([np.interp(t + d, tp, pose_xyz[:, k]) for k in range(3)], 1) - cmd_xyz,
                                  axis=1)) for d in leads]
    return float(leads[int(np.argmin(err))])


def _sorted_unique(stamps: list[int], values: list) -> tuple[np.ndarray, np.ndarray]:
    """Sort by stamp, keep the last sample of duplicate stamps (interpolation needs strict order)."""
    st = np.asarray(stamps, dtype=np.int64)
    va = np.asarray(values, dtype=np.float64)
    order = np.argsort(st, kind="stable")
    st, va = st[order], va[order]
    keep = np.append(st[1:] != st[:-1], True)
    return st[keep], va[keep]


# ----------------------------------------------------------------------------------------------
# one bag


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_bag(bag: str | os.PathLike, out_dir: str | os.PathLike, cfg: ConvertConfig | None = None) -> dict:
    """Convert one bag into ``out_dir`` (created; must not exist). Returns its manifest entry.

    Raises:
        ConversionError: the bag cannot become an episode (message names bag and topic).
    """
    cfg = cfg or ConvertConfig()
    bag = Path(bag)
    out_dir = Path(out_dir)
    ts = default_typestore()
    try:
        info = bag_info(bag)
    except Exception as err:  # noqa: BLE001 - any reader failure is this bag's failure
        raise ConversionError(bag, None, f"unreadable: {err}") from err
    if info.truncated:
        log.warning("bag %s was cut off (no summary/metadata): reading its complete chunks only", bag)
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
    gripper_topic = cfg.gripper_label_topic if labelled else cfg.gripper_cmd_topic

    # pass 1: everything small, plus the header stamps of the images (no pixel decoding)
    cam_topics = set(cfg.cameras.values())
    img_stamps: dict[str, list[int]] = {t: [] for t in cam_topics}
    pose_t, pose_v, tgt_t, tgt_v, grip_t, grip_v, gcmd_t, gcmd_v = ([] for _ in range(8))
    episode_info: dict[str, Any] = {}
    small = {
        cfg.pose_topic,
        action_topic,
        cfg.gripper_state_topic,
        gripper_topic,
        cfg.episode_info_topic,
    }
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

    pose_t, pose_v = _sorted_unique(pose_t, pose_v)
    grip_t, grip_v = _sorted_unique(grip_t, grip_v)
    cam_st = {t: np.asarray(v, dtype=np.int64) for t, v in img_stamps.items()}
    firsts = [pose_t[0], grip_t[0]] + [s.min() for s in cam_st.values()]
    lasts = [pose_t[-1], grip_t[-1]] + [s.max() for s in cam_st.values()]
    t0, t1 = max(firsts), min(lasts)
    dt = int(round(1e9 / cfg.obs_hz))
    if t1 < t0:
        raise ConversionError(
            bag, None, f"required topics do not overlap in time (latest start {t0}, earliest end {t1} ns)"
        )
    T = int((t1 - t0) // dt) + 1
    grid = t0 + dt * np.arange(T, dtype=np.int64)  # (T,)

    # camera picks: per topic, the ordinal (file order) of the frame each step shows
    tol = int(cfg.image_tolerance_s * 1e9)
    picks: dict[str, np.ndarray] = {}
    align: dict[str, dict[str, float]] = {}
    for name, topic in cfg.cameras.items():
        st = cam_st[topic]
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

    ee_pose = interpolate_poses(pose_t.astype(np.float64), pose_v, grid.astype(np.float64))  # (T, 7)
    gripper = np.interp(grid.astype(np.float64), grip_t.astype(np.float64), grip_v)  # (T,)

    action = None
    r = cfg.action_ratio
    if has_actions:
        tgt_t, tgt_v = _sorted_unique(tgt_t, tgt_v)
        tq = t0 + int(round(1e9 / cfg.action_hz)) * np.arange(T * r, dtype=np.int64)  # (T*r,)
        held = interpolate_poses(pose_t.astype(np.float64), pose_v, tq.astype(np.float64))
        i = zero_order_hold(tgt_t, tq)
        act_pose = np.where((i >= 0)[:, None], tgt_v[np.maximum(i, 0)], held)
        act_pose[:, 3:] = quat_normalize(act_pose[:, 3:])
        measured_w = np.interp(tq.astype(np.float64), grip_t.astype(np.float64), grip_v)
        if gcmd_t:
            gcmd_t, gcmd_v = _sorted_unique(gcmd_t, gcmd_v)
            j = zero_order_hold(gcmd_t, tq)
            act_grip = np.where(j >= 0, gcmd_v[np.maximum(j, 0)], measured_w)
        else:
            act_grip = measured_w
        action = np.concatenate([act_pose, act_grip[:, None]], axis=1).astype(np.float32)  # (T*r, 8)
        lead = command_lead_s(pose_t, pose_v[:, :3], tgt_t, tgt_v[:, :3])
        align["command_lead_ms"] = None if lead is None else round(lead * 1e3, 1)
        if lead is not None and lead < -cfg.max_command_lag_s:
            log.warning("%s: the commanded target lags the measured pose by %.0f ms (expected it to lead): "
                        "command and state stamps disagree, so the recorded actions are stale; synchronise "
                        "the clocks of the machines (chrony/PTP) before training on this bag", bag, -lead * 1e3)

    # pass 2: decode only the picked frames, straight into memory-mapped outputs
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
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
        ordinal = {t: -1 for t in cam_topics}
        try:
            for m in read_bag(bag, cam_topics):
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
        del arrays
        np.save(tmp / "ee_pose.npy", ee_pose.astype(np.float32))
        np.save(tmp / "gripper.npy", gripper.astype(np.float32))
        np.save(tmp / "stamps.npy", grid)
        if action is not None:
            np.save(tmp / "action.npy", action)

        meta = dict(episode_info)
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
            "gripper_action_topic": gripper_topic if has_actions and len(gcmd_t) else None,
        }
        return finish_episode(tmp, out_dir, entry, {"metadata": meta, "t0_ns": int(t0), "t1_ns": int(t1),
                                                    "alignment": align, "message_counts": info.counts})
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finish_episode(tmp: Path, out_dir: Path, entry: dict, extra: dict) -> dict:
    """Write ``meta.json`` (the manifest ``entry`` plus ``extra``) into the episode folder ``tmp``
    that already holds the arrays, hash every file into ``entry["files"]`` and move ``tmp`` to
    ``out_dir`` in one rename, so a crash never leaves a half-written episode. Returns ``entry``."""
    (tmp / "meta.json").write_text(
        json.dumps({**entry, **extra}, indent=2, sort_keys=True, default=str) + "\n", "utf8"
    )
    entry["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return entry


def write_episode(out_dir: str | os.PathLike, arrays: dict[str, np.ndarray], entry: dict, extra: dict) -> dict:
    """Write an episode from in-memory arrays (``camera``/``wrist``/``ee_pose``/``gripper``/
    ``stamps``/``action``, dtypes as in the module docstring) in the converter's format; for
    producers that are not bags (``avdp-dagger``'s in-process sim episodes). Returns its entry."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a)
        return finish_episode(tmp, out_dir, dict(entry, name=out_dir.name), extra)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def prepare_output(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """An empty dataset folder (``episodes/`` created); a dataset already there is an error unless
    ``overwrite``, which removes its episodes and manifest (nothing else)."""
    out = Path(out_dir).expanduser()
    if (out / "manifest.json").exists() or (out / "episodes").exists():
        if not overwrite:
            raise FileExistsError(f"output {out} already holds a dataset; pass overwrite=True (--overwrite)")
        shutil.rmtree(out / "episodes", ignore_errors=True)
        (out / "manifest.json").unlink(missing_ok=True)
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    return out


def write_manifest(out: Path, cfg: ConvertConfig, episodes: list[dict], failed: list[dict], source: str) -> None:
    """``out/manifest.json`` for ``episodes`` (entries from ``convert_bag`` / ``write_episode``),
    written atomically."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "obs_hz": cfg.obs_hz,
        "action_hz": cfg.action_hz,
        "action_ratio": cfg.action_ratio,
        "image_size": list(cfg.image_size),
        "cameras": dict(cfg.cameras),
        "topics": {k: v for k, v in asdict(cfg).items() if k.endswith("_topic")},
        "config": {k: v for k, v in asdict(cfg).items() if not k.endswith("_topic") and k != "cameras"},
        "source_dir": source,
        "created_unix": time.time(),
        "episodes": episodes,
        "failed": failed,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", "utf8")
    os.replace(tmp, out / "manifest.json")


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

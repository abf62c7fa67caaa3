"""EpisodeBagWriter round trip, flushing, SIGKILL recovery (pure: no rclpy)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from avdp_ros.data.bag_io import (
    bag_info,
    header_stamp_ns,
    read_bag,
    read_episode_metadata,
    repair_bag,
)
from avdp_ros.data.bag_writer import EpisodeBagWriter

TS = get_typestore(Stores.ROS2_KILTED)
POSE = "/cartesian_impedance_controller/current_pose"
IMG = "/camera/camera/color/image_raw"
CMD = "/gripper/command"


def _time(ns: int):
    return TS.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ns: int, frame: str = "panda_link0"):
    return TS.types["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame)


def pose_cdr(ns: int, x: float) -> bytes:
    T = TS.types
    msg = T["geometry_msgs/msg/PoseStamped"](
        header=_header(ns),
        pose=T["geometry_msgs/msg/Pose"](
            position=T["geometry_msgs/msg/Point"](x=x, y=0.0, z=0.0),
            orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
        ),
    )
    return bytes(TS.serialize_cdr(msg, "geometry_msgs/msg/PoseStamped"))


def image_cdr(ns: int, value: int, h: int = 8, w: int = 8) -> bytes:
    msg = TS.types["sensor_msgs/msg/Image"](
        header=_header(ns, "camera"),
        height=h,
        width=w,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * w,
        data=np.full(h * w * 3, value, np.uint8),
    )
    return bytes(TS.serialize_cdr(msg, "sensor_msgs/msg/Image"))


def float_cdr(v: float) -> bytes:
    return bytes(TS.serialize_cdr(TS.types["std_msgs/msg/Float64"](data=v), "std_msgs/msg/Float64"))


T0 = 1_700_000_000_000_000_000


def test_header_stamp_from_cdr_both_endians():
    data = pose_cdr(T0 + 123_456_789, 0.5)
    assert header_stamp_ns(data) == T0 + 123_456_789
    big = TS.serialize_cdr(
        TS.types["std_msgs/msg/Header"](stamp=_time(T0 + 7), frame_id="x"),
        "std_msgs/msg/Header",
        little_endian=False,
    )
    assert header_stamp_ns(bytes(big)) == T0 + 7


def test_round_trip_metadata_stamps_counts_both_readers(tmp_path: Path):
    bag = tmp_path / "ep_000"
    meta = {"instruction": "put the red cube in the bowl", "seed": 7, "task": "pick"}
    w = EpisodeBagWriter(bag, meta)
    # sidecar exists as soon as the bag opens (survives a kill)
    assert json.loads((bag / "episode.json").read_text())["metadata"]["instruction"] == meta["instruction"]
    recv = T0 + 5_000_000_000  # arrival times deliberately different from the header stamps
    for i in range(50):
        assert w.write(
            POSE, "geometry_msgs/msg/PoseStamped", pose_cdr(T0 + i * 5_000_000, i * 0.01), recv + i
        )
    for i in range(5):
        w.write(IMG, "sensor_msgs/msg/Image", image_cdr(T0 + i * 33_000_000, i), recv + i)
    w.write(CMD, "std_msgs/msg/Float64", float_cdr(0.04), recv + 99)  # no header: arrival time
    w.update_metadata(success=True, notes="clean grasp")
    s = w.close()

    assert s.counts == {POSE: 50, IMG: 5, CMD: 1}
    assert s.dropped == 0
    with Reader(bag) as r:
        custom = r.storage.metadata.custom
        assert custom["avdp.instruction"] == meta["instruction"]
        assert json.loads(custom["avdp.success"]) is True
        assert json.loads(custom["avdp.episode"])["seed"] == 7
        stamps = {c.topic: [] for c in r.connections}
        for conn, ts, data in r.messages():
            stamps[conn.topic].append(ts)
            if conn.msgtype != "std_msgs/msg/Float64":
                assert ts == header_stamp_ns(data)
    assert stamps[POSE] == [T0 + i * 5_000_000 for i in range(50)]
    assert stamps[IMG] == [T0 + i * 33_000_000 for i in range(5)]
    assert stamps[CMD] == [recv + 99]
    with AnyReader([bag]) as r:
        xs = [r.deserialize(d, c.msgtype).pose.position.x for c, _, d in r.messages() if c.topic == POSE]
    assert np.allclose(xs, np.arange(50) * 0.01)
    with open(bag / "ep_000.mcap", "rb") as f:
        reader = make_reader(f)
        counts = {}
        for _, channel, message in reader.iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
            if channel.topic == POSE:
                assert message.log_time == header_stamp_ns(message.data)
    assert counts == {POSE: 50, IMG: 5, CMD: 1}
    side = json.loads((bag / "episode.json").read_text())
    assert side["state"] == "closed" and side["counts"][POSE] == 50
    assert read_episode_metadata(bag)["success"] is True


def test_writer_refuses_existing_bag(tmp_path: Path):
    EpisodeBagWriter(tmp_path / "b").close()
    with pytest.raises(Exception, match="exists"):
        EpisodeBagWriter(tmp_path / "b")


def test_queue_budget_drops_instead_of_blocking(tmp_path: Path):
    w = EpisodeBagWriter(tmp_path / "b", max_queue_bytes=10)
    assert not w.write(IMG, "sensor_msgs/msg/Image", image_cdr(T0, 1), T0)
    assert w.close().dropped == 1


def _record_then_hang(path: str, ready, n_flushed: int, n_open: int) -> None:
    """Child: write n_flushed poses, wait until they are on disk, write n_open more, then hang."""
    w = EpisodeBagWriter(path, {"instruction": "killed"}, flush_period_s=0.05)
    for i in range(n_flushed):
        w.write(POSE, "geometry_msgs/msg/PoseStamped", pose_cdr(T0 + i * 5_000_000, i * 0.01), T0)
    mcap = Path(path) / f"{Path(path).name}.mcap"
    while sum(w.counts.values()) < n_flushed or w._storage.chunk.bio.tell():  # noqa: SLF001
        os.sched_yield()
    size = mcap.stat().st_size
    # the next messages stay in the open chunk: the flush period is made long from here on
    w.flush_period_s = 3600.0
    for i in range(n_flushed, n_flushed + n_open):
        w.write(POSE, "geometry_msgs/msg/PoseStamped", pose_cdr(T0 + i * 5_000_000, i * 0.01), T0)
    while sum(w.counts.values()) < n_flushed + n_open:
        os.sched_yield()
    ready.put(size)
    signal.pause()


def test_sigkill_then_repair_keeps_flushed_chunks(tmp_path: Path):
    bag = tmp_path / "killed"
    ctx = mp.get_context("fork")
    ready = ctx.Queue()
    proc = ctx.Process(target=_record_then_hang, args=(str(bag), ready, 120, 30))
    proc.start()
    try:
        ready.get(timeout=20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    assert not (bag / "metadata.yaml").exists()
    with pytest.raises(FileNotFoundError, match="metadata"):
        Reader(bag).open()  # no metadata.yaml: rosbags cannot open it as is

    info = bag_info(bag)
    assert info.truncated and info.counts == {POSE: 120}  # the open chunk (30 msgs) is lost
    assert [m.timestamp for m in read_bag(bag)] == [T0 + i * 5_000_000 for i in range(120)]

    rep = repair_bag(bag)
    assert rep.recovered == {POSE: 120}
    assert rep.original is not None and rep.original.exists()
    with Reader(bag) as r:
        assert r.message_count == 120
        assert json.loads(r.storage.metadata.custom["avdp.episode"])["instruction"] == "killed"
        assert [ts for _, ts, _ in r.messages()] == [T0 + i * 5_000_000 for i in range(120)]
    with open(bag / "killed.mcap", "rb") as f:
        assert sum(1 for _ in make_reader(f).iter_messages()) == 120
    assert repair_bag(bag).already_intact


def test_repair_cut_mid_chunk(tmp_path: Path):
    """Bytes cut off the end (a chunk half written) and metadata.yaml gone."""
    bag = tmp_path / "cut"
    w = EpisodeBagWriter(bag, {"seed": 3}, chunk_bytes=4096)  # many small chunks
    for i in range(400):
        w.write(POSE, "geometry_msgs/msg/PoseStamped", pose_cdr(T0 + i * 5_000_000, 0.0), T0)
    w.close()
    mcap = bag / "cut.mcap"
    data = mcap.read_bytes()
    (bag / "metadata.yaml").unlink()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    rep = repair_bag(bag)
    n = sum(rep.recovered.values())
    assert 150 < n < 400  # whole chunks kept, the cut one lost
    assert rep.bytes_kept <= rep.bytes_before
    with Reader(bag) as r:
        assert [ts for _, ts, _ in r.messages()] == [T0 + i * 5_000_000 for i in range(n)]

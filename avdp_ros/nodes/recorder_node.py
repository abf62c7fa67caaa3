"""Episode recorder: raw (serialized) subscriptions -> one rosbag2 MCAP bag per episode.

Services (std_srvs/Trigger):
    /avdp/record/start  opens <output_dir>/<prefix>_<YYYYmmdd_HHMMSS>_<index>; message = bag path
    /avdp/record/stop   closes it; message = JSON {"path", "counts", "dropped", "bytes"}
Topics:
    subscribes  every entry of ``topics`` (raw bytes; QoS matched to the publishers), and
                ``episode_info_topic`` (std_msgs/String JSON, reliable + transient_local)
    publishes   ``/avdp/record/status`` (std_msgs/String JSON, 1 Hz): recording, path, counts,
                dropped, queued bytes, topics still missing

The node is a shell around ``avdp_ros.data.bag_io.EpisodeBagWriter``: callbacks only enqueue
bytes; the writer thread does the disk work. Message types come from ``types`` or from the ROS
graph (the node polls ``get_topic_names_and_types`` until every topic has a publisher and logs an
error naming the missing ones after ``discovery_timeout_s``; late publishers are still picked up).
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from avdp_ros.data.bag_writer import EpisodeBagWriter
from avdp_ros.nodes.spin import run_node

DEFAULT_TOPICS = [
    "/camera/camera/color/image_raw",
    "/camera/camera/color/camera_info",
    "/wrist_camera/color/image_raw",
    "/wrist_camera/color/camera_info",
    "/cartesian_impedance_controller/current_pose",
    "/cartesian_impedance_controller/target_frame",
    "/gripper/joint_states",
    "/gripper/command",
]


def _msg_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    pkg, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class RecorderNode(Node):
    """Records the configured topics to one MCAP bag per episode (see module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("avdp_recorder", **kwargs)
        str_array = ParameterDescriptor(type=ParameterType.PARAMETER_STRING_ARRAY)
        self.declare_parameter("output_dir", "~/avdp_data/bags")
        self.declare_parameter("topics", DEFAULT_TOPICS)
        self.declare_parameter("types", [], str_array)  # parallel to topics; "" or absent: from graph
        self.declare_parameter("reliability", "auto")  # auto (match publishers) | reliable | best_effort
        self.declare_parameter("queue_depth", 100)
        self.declare_parameter("discovery_timeout_s", 10.0)
        self.declare_parameter("episode_info_topic", "/avdp/episode_info")
        self.declare_parameter("instruction", "")
        self.declare_parameter("operator", "")
        self.declare_parameter("notes", "")
        self.declare_parameter("bag_prefix", "episode")
        self.declare_parameter("flush_period_s", 1.0)
        self.declare_parameter("compression", "none")  # none | zstd
        self.declare_parameter("status_period_s", 1.0)  # <= 0: no status topic

        p = {
            name: self.get_parameter(name).value
            for name in (
                "output_dir",
                "topics",
                "types",
                "reliability",
                "queue_depth",
                "discovery_timeout_s",
                "episode_info_topic",
                "bag_prefix",
                "flush_period_s",
                "compression",
                "status_period_s",
            )
        }
        self.output_dir = Path(p["output_dir"]).expanduser()
        self.topics: list[str] = list(p["topics"])
        types = list(p["types"])
        if not self.topics:
            raise ValueError("parameter 'topics' is empty: expected at least one topic to record")
        if len(types) > len(self.topics):
            raise ValueError(f"parameter 'types' has {len(types)} entries for {len(self.topics)} topics")
        if p["reliability"] not in ("auto", "reliable", "best_effort"):
            raise ValueError(
                f"parameter 'reliability'={p['reliability']!r}: expected auto, reliable or best_effort"
            )
        if p["compression"] not in ("none", "zstd"):
            raise ValueError(f"parameter 'compression'={p['compression']!r}: expected none or zstd")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", p["bag_prefix"]):
            raise ValueError(f"parameter 'bag_prefix'={p['bag_prefix']!r}: expected [A-Za-z0-9_.-]+")
        self._given_types = {t: ty for t, ty in zip(self.topics, types) if ty}
        self._reliability = p["reliability"]
        self._depth = int(p["queue_depth"])
        self._discovery_timeout = float(p["discovery_timeout_s"])
        self._prefix = p["bag_prefix"]
        self._flush_period = float(p["flush_period_s"])
        self._compression = p["compression"]

        self._lock = threading.Lock()
        self._writer: EpisodeBagWriter | None = None
        self._episode_index = 0
        self._subs: dict[str, Any] = {}
        self.topic_types: dict[str, str] = {}
        self._t_start = time.monotonic()
        self._missing_reported = False
        self.episode_info: dict[str, Any] = {}
        self.last_summary = None

        latched = QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
        )
        self.create_subscription(String, p["episode_info_topic"], self._on_episode_info, latched)
        self.create_service(Trigger, "/avdp/record/start", self._on_start)
        self.create_service(Trigger, "/avdp/record/stop", self._on_stop)
        self._status_pub = None
        if p["status_period_s"] > 0:
            self._status_pub = self.create_publisher(String, "/avdp/record/status", latched)
            self.create_timer(float(p["status_period_s"]), self._publish_status)
        self._discovery_timer = self.create_timer(0.2, self._discover)
        self._discover()

    # -- discovery and subscriptions ------------------------------------------------------------

    @property
    def missing_topics(self) -> list[str]:
        return [t for t in self.topics if t not in self._subs]

    def _qos_for(self, topic: str) -> QoSProfile | None:
        """Reliability matched to the publishers (None: no publisher yet, keep waiting)."""
        infos = self.get_publishers_info_by_topic(topic)
        if self._reliability != "auto":
            rel = (
                ReliabilityPolicy.RELIABLE
                if self._reliability == "reliable"
                else ReliabilityPolicy.BEST_EFFORT
            )
        elif not infos:
            timed_out = time.monotonic() - self._t_start > self._discovery_timeout
            if not (topic in self._given_types and timed_out):
                return None
            rel = ReliabilityPolicy.BEST_EFFORT  # type given, no publisher yet: best effort matches any
        elif any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
            rel = ReliabilityPolicy.BEST_EFFORT  # a reliable reader would not match these writers
        else:
            rel = ReliabilityPolicy.RELIABLE
        durable = bool(infos) and all(
            i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos
        )
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._depth,
            reliability=rel,
            durability=DurabilityPolicy.TRANSIENT_LOCAL if durable else DurabilityPolicy.VOLATILE,
        )

    def _discover(self) -> None:
        missing = self.missing_topics
        if not missing:
            self._discovery_timer.cancel()
            return
        graph = dict(self.get_topic_names_and_types())
        for topic in missing:
            typ = self._given_types.get(topic) or (graph.get(topic) or [None])[0]
            if typ is None:
                continue
            qos = self._qos_for(topic)
            if qos is None:
                continue
            try:
                cls = _msg_class(typ)
            except (ImportError, AttributeError, ValueError) as err:
                self.get_logger().error(
                    f"topic {topic}: cannot import message type {typ!r} ({err}); not recorded"
                )
                self._given_types.pop(topic, None)
                self.topics.remove(topic)
                continue
            self.topic_types[topic] = typ
            self._subs[topic] = self.create_subscription(
                cls, topic, lambda data, t=topic, ty=typ: self._on_raw(t, ty, data), qos, raw=True
            )
            self.get_logger().info(
                f"recording {topic} [{typ}] ({qos.reliability.name.lower()}, depth {qos.depth})"
            )
        still = self.missing_topics
        if (
            still
            and not self._missing_reported
            and time.monotonic() - self._t_start > self._discovery_timeout
        ):
            self._missing_reported = True
            self.get_logger().error(
                f"no publisher after {self._discovery_timeout:.0f} s for topics {still}: expected them to be "
                "published (check names/remapping, or set 'types'); they will be recorded once they appear"
            )

    def _on_raw(self, topic: str, typ: str, data: bytes) -> None:
        writer = self._writer
        if writer is not None:
            writer.write(topic, typ, data, self.get_clock().now().nanoseconds)

    def _on_episode_info(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
        except json.JSONDecodeError as err:
            self.get_logger().warning(f"/avdp/episode_info: not JSON ({err}); ignored")
            return
        if not isinstance(info, dict):
            self.get_logger().warning("/avdp/episode_info: expected a JSON object; ignored")
            return
        self.episode_info = info
        writer = self._writer
        if writer is not None:
            writer.update_metadata(episode_info=info, **self._info_fields(info))

    # -- episodes -------------------------------------------------------------------------------

    def _info_fields(self, info: dict[str, Any]) -> dict[str, Any]:
        out = {k: info[k] for k in ("task", "seed", "success", "object_names", "episode", "appearance") if k in info}
        instruction = self.get_parameter("instruction").value or info.get("instruction", "")
        out["instruction"] = instruction
        return out

    def start_episode(self) -> tuple[bool, str]:
        with self._lock:
            if self._writer is not None:
                return False, f"already recording {self._writer.path}"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._episode_index += 1
            stamp = time.strftime("%Y%m%d_%H%M%S")
            path = self.output_dir / f"{self._prefix}_{stamp}_{self._episode_index:04d}"
            n = 1
            while path.exists():
                n += 1
                path = self.output_dir / f"{self._prefix}_{stamp}_{self._episode_index:04d}_{n}"
            meta = {
                "operator": self.get_parameter("operator").value,
                "notes": self.get_parameter("notes").value,
                "topics": dict(self.topic_types),
                "missing_topics_at_start": self.missing_topics,
                "started_wall_time": time.time(),
                "episode_info": self.episode_info,
                **self._info_fields(self.episode_info),
            }
            try:
                self._writer = EpisodeBagWriter(
                    path, meta, flush_period_s=self._flush_period, compression=self._compression
                )
            except Exception as err:  # noqa: BLE001 - reported to the caller
                return False, f"cannot open bag {path}: {err}"
        missing = self.missing_topics
        self.get_logger().info(f"recording episode to {path}")
        return True, str(path) + (f" (waiting for topics {missing})" if missing else "")

    def stop_episode(self, reason: str = "stop") -> tuple[bool, str]:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is None:
            return False, "not recording"
        writer.update_metadata(
            episode_info=self.episode_info,
            stopped_wall_time=time.time(),
            stop_reason=reason,
            **self._info_fields(self.episode_info),
        )
        try:
            s = writer.close()
        except Exception as err:  # noqa: BLE001
            self.get_logger().error(f"closing {writer.path} failed: {err}")
            return False, f"closing {writer.path} failed: {err}"
        self.last_summary = s
        self.get_logger().info(f"closed {s.path}: {s.message_count} messages, {s.dropped} dropped")
        return True, json.dumps(
            {"path": str(s.path), "counts": s.counts, "dropped": s.dropped, "bytes": s.bytes}
        )

    def _on_start(self, request, response):
        response.success, response.message = self.start_episode()
        return response

    def _on_stop(self, request, response):
        response.success, response.message = self.stop_episode()
        return response

    def _publish_status(self) -> None:
        w = self._writer
        status = {
            "recording": w is not None,
            "path": str(w.path) if w else None,
            "counts": dict(w.counts) if w else {},
            "dropped": w.dropped if w else 0,
            "queued_bytes": w.queued_bytes if w else 0,
            "missing_topics": self.missing_topics,
        }
        self._status_pub.publish(String(data=json.dumps(status)))

    def destroy_node(self) -> None:
        if self._writer is not None:
            self.stop_episode("shutdown")
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    """Run the recorder; SIGINT and SIGTERM both close an open bag properly before exiting
    (destroy_node stops the episode: summary + metadata.yaml)."""
    run_node(RecorderNode, args)


if __name__ == "__main__":
    main()

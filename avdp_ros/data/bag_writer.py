"""A non-blocking rosbag2 (MCAP) writer for one episode.

Pure module (no rclpy): the recorder node hands it serialized CDR bytes, tests and tools use it
directly. Reading and repairing bags is `bag_io`.

Writing
    ``EpisodeBagWriter`` owns one ``rosbags.rosbag2.Writer`` (MCAP storage, no compression by
    default) and a background thread. ``write()`` only appends to a queue, so a subscription
    callback never waits on the disk. The bag timestamp of a message is its ``header.stamp``
    (read from the first 12 bytes of the CDR payload when the type starts with a
    ``std_msgs/Header``), else the receive time the caller passes. Payload bytes are written
    unchanged, so every stamp inside the message is preserved.

Flushing and SIGKILL
    rosbags 0.11 has no flush API: its MCAP writer keeps the open chunk in memory and writes it
    out only when it passes 1 MiB (a fixed limit) or at ``close()``; the summary section
    (chunk indexes, statistics) and ``metadata.yaml`` are written only at ``close()``. So the
    writer thread also calls the storage's own ``close_chunk()`` every ``flush_period_s`` (and
    earlier when the open chunk passes ``chunk_bytes``, which can only be <= 1 MiB) and flushes
    the file object. ``close_chunk()`` emits a complete Chunk + MessageIndex records and
    remembers the ChunkIndex for the summary, so closing the bag later is unaffected. After a
    SIGKILL the file holds every chunk closed before the kill; what is lost is the open chunk
    (at most ``flush_period_s`` of data, or one chunk of <= 1 MiB), whatever was still queued,
    and the summary/footer/metadata.yaml, which ``repair_bag`` regenerates. (Data the kernel
    already has survives a process kill; ``fsync=True`` also covers power loss, at a cost.)

Metadata
    Episode metadata (instruction, seed, success, operator notes, the episode_info JSON...) goes
    to ``metadata.yaml`` ``custom_data`` (every value a string: strings as they are, anything
    else JSON-encoded, plus the whole dict as JSON under ``avdp.episode``) and to a sidecar
    ``episode.json`` written when the bag opens (so it survives a kill) and rewritten at close
    with message counts.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

from avdp_ros.data.bag_io import (
    ROSBAG_VERSION,
    SIDECAR,
    custom_data,
    default_typestore,
    has_header,
    header_stamp_ns,
    write_json_atomic,
)

log = logging.getLogger(__name__)

_MCAP_FIXED_CHUNK_LIMIT = 2**20  # rosbags' McapWriter closes a chunk past this size by itself



@dataclass
class BagSummary:
    """What a closed (or killed-then-repaired) bag holds."""

    path: Path
    counts: dict[str, int]
    bytes: int
    start_ns: int | None
    end_ns: int | None
    dropped: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def message_count(self) -> int:
        return sum(self.counts.values())


_STOP = object()


class EpisodeBagWriter:
    """One episode bag, written from a background thread.

    Args:
        path: bag directory to create (must not exist).
        metadata: episode metadata (JSON-serialisable dict), stored in custom_data + episode.json.
        flush_period_s: close the open MCAP chunk and flush the file at least this often (s).
        chunk_bytes: close the open chunk once it passes this size; capped at rosbags' 1 MiB.
        compression: "none" or "zstd" (MCAP chunk compression via rosbags).
        max_queue_bytes: payload bytes allowed in the queue; beyond it messages are dropped and
            counted (``dropped``) rather than letting a stalled disk grow memory without bound.
        fsync: fsync after each flush (survives power loss, not just a process kill).
        typestore: rosbags typestore used for message definitions (default: ROS 2 Kilted).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metadata: dict[str, Any] | None = None,
        *,
        flush_period_s: float = 1.0,
        chunk_bytes: int = _MCAP_FIXED_CHUNK_LIMIT,
        compression: str = "none",
        max_queue_bytes: int = 2 * 2**30,
        fsync: bool = False,
        typestore=None,
    ) -> None:
        if flush_period_s <= 0:
            raise ValueError(f"flush_period_s={flush_period_s}: expected > 0")
        if compression not in ("none", "zstd"):
            raise ValueError(f"compression={compression!r}: expected 'none' or 'zstd'")
        self.path = Path(path).expanduser()
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.flush_period_s = float(flush_period_s)
        self.chunk_bytes = max(1, min(int(chunk_bytes), _MCAP_FIXED_CHUNK_LIMIT))
        self.max_queue_bytes = int(max_queue_bytes)
        self.fsync = fsync
        self.typestore = typestore or default_typestore()

        self._writer = Writer(self.path, version=ROSBAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()  # creates the directory; raises if the bag exists
        self._storage = self._writer.storage
        self._can_flush = hasattr(self._storage, "close_chunk") and hasattr(self._storage, "bio")
        if not self._can_flush:
            log.warning(
                "rosbags' MCAP storage has no close_chunk(): %s is flushed only per 1 MiB chunk", self.path
            )
        self._connections: dict[str, Any] = {}
        self._header_types: dict[str, bool] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued_bytes = 0
        self.counts: dict[str, int] = {}
        self.dropped = 0
        self.bytes_written = 0
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self.error: BaseException | None = None
        self._closed = False
        self._opened_wall = time.time()
        self._write_sidecar(state="recording")
        self._thread = threading.Thread(target=self._run, name=f"bag-writer:{self.path.name}", daemon=True)
        self._thread.start()

    # -- producer side (any thread) -------------------------------------------------------------

    def write(
        self,
        topic: str,
        msgtype: str,
        data: bytes | memoryview,
        recv_ns: int,
        stamp_ns: int | None = None,
    ) -> bool:
        """Queue one serialized message; never blocks on the disk.

        Args:
            topic: topic name.
            msgtype: ROS type name, e.g. "sensor_msgs/msg/Image".
            data: CDR bytes as received (a raw rclpy subscription's payload).
            recv_ns: receive time (ns), the bag timestamp of messages without a header.
            stamp_ns: header stamp (ns) if the caller already knows it; else read from ``data``.

        Returns:
            False when the message was dropped (writer closed, failed, or queue over budget).
        """
        if self._closed or self.error is not None:
            return False
        size = len(data)
        with self._lock:
            if self._queued_bytes + size > self.max_queue_bytes:
                self.dropped += 1
                return False
            self._queued_bytes += size
        self._queue.put((topic, msgtype, data, recv_ns, stamp_ns))
        return True

    def update_metadata(self, **items: Any) -> None:
        """Merge items into the episode metadata (written to episode.json now, custom_data at close)."""
        self._queue.put(("__meta__", items))

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def close(self, timeout: float | None = None) -> BagSummary:
        """Drain the queue, close the bag (summary + metadata.yaml) and finalise episode.json."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"bag writer for {self.path} still draining after {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"bag writer for {self.path} failed: {self.error!r}") from self.error
        return self.summary()

    def summary(self) -> BagSummary:
        mcap = self.path / f"{self.path.name}.mcap"
        return BagSummary(
            path=self.path,
            counts=dict(self.counts),
            bytes=mcap.stat().st_size if mcap.exists() else 0,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            dropped=self.dropped,
            metadata=dict(self.metadata),
        )

    def __enter__(self) -> EpisodeBagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writer thread --------------------------------------------------------------------------

    def _connection(self, topic: str, msgtype: str):
        conn = self._connections.get(topic)
        if conn is None:
            if msgtype not in self.typestore.fielddefs:
                raise KeyError(f"topic {topic}: type {msgtype!r} is not in the typestore")
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
            self.counts[topic] = 0
            self._header_types[msgtype] = has_header(msgtype, self.typestore)
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic}: type {msgtype!r} but the bag already has {conn.msgtype!r}")
        return conn

    def _write_one(self, topic, msgtype, data, recv_ns, stamp_ns) -> None:
        try:
            conn = self._connection(topic, msgtype)
        except (KeyError, ValueError) as err:
            log.error("%s: dropping message: %s", self.path, err)
            self.dropped += 1
            return
        if stamp_ns is None and self._header_types[msgtype]:
            try:
                stamp_ns = header_stamp_ns(data)
            except ValueError:
                stamp_ns = None
        ts = stamp_ns if stamp_ns else recv_ns  # an unset (zero) header stamp falls back to arrival
        self._writer.write(conn, ts, data)
        self.counts[topic] += 1
        self.bytes_written += len(data)
        self.start_ns = ts if self.start_ns is None else min(self.start_ns, ts)
        self.end_ns = ts if self.end_ns is None else max(self.end_ns, ts)
        if self._can_flush and self._storage.chunk.bio.tell() >= self.chunk_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._can_flush:
            return
        if self._storage.chunk.bio.tell():
            self._storage.close_chunk()
        self._storage.bio.flush()
        if self.fsync:
            os.fsync(self._storage.bio.fileno())

    def _run(self) -> None:
        last_flush = time.monotonic()
        try:
            while True:
                timeout = max(0.0, last_flush + self.flush_period_s - time.monotonic())
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    if item[0] == "__meta__":
                        self.metadata.update(item[1])
                        self._write_sidecar(state="recording")
                    else:
                        with self._lock:
                            self._queued_bytes -= len(item[2])
                        self._write_one(*item)
                if time.monotonic() - last_flush >= self.flush_period_s:
                    self._flush()
                    last_flush = time.monotonic()
            for key, value in custom_data(self.metadata).items():
                self._writer.set_custom_data(key, value)
            self._writer.close()
            self._write_sidecar(state="closed")
        except BaseException as err:  # surfaced by close(); the thread must not die silently
            self.error = err
            log.exception("bag writer for %s failed", self.path)
            try:
                self._writer.abort()
            except Exception as abort_err:  # noqa: BLE001 - already failing, keep the first error
                log.error("bag writer for %s: abort after the failure also failed: %s", self.path, abort_err)

    def _write_sidecar(self, state: str) -> None:
        write_json_atomic(
            self.path / SIDECAR,
            {
                "state": state,
                "opened_wall_time": self._opened_wall,
                "metadata": self.metadata,
                "counts": self.counts,
                "dropped": self.dropped,
                "start_ns": self.start_ns,
                "end_ns": self.end_ns,
            },
        )

"""Episode bags: a non-blocking rosbag2 (MCAP) writer, a repair path for killed bags, a reader.

Pure module (no rclpy): the recorder node hands it serialized CDR bytes, tests and tools use it
directly.

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

Repairing
    ``repair_bag(path)`` reads a cut-off ``.mcap`` with the ``mcap`` library's non-seeking
    ``StreamReader`` up to the first incomplete record, rewrites the messages of every complete
    chunk into a valid bag (same directory, same file name, fresh ``metadata.yaml``, custom data
    from ``episode.json``) and keeps the original as ``<name>.mcap.truncated``. Lost: the
    messages of the chunk that was being written when the file was cut (and anything after it).

Reading
    ``read_bag(path)`` yields ``BagMessage``s from an intact bag (rosbags ``Reader``, any storage)
    or, read-only, from the complete chunks of a truncated MCAP (``BagInfo.truncated`` is then
    True); ``bag_info(path)`` summarises a bag without reading messages.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

log = logging.getLogger(__name__)

SIDECAR = "episode.json"
CUSTOM_DATA_PREFIX = "avdp."
ROSBAG_VERSION = 9
_MCAP_FIXED_CHUNK_LIMIT = 2**20  # rosbags' McapWriter closes a chunk past this size by itself

_default_typestore = None


def default_typestore():
    """The ROS 2 Kilted typestore (shared, built once): standard message definitions."""
    global _default_typestore
    if _default_typestore is None:
        _default_typestore = get_typestore(Stores.ROS2_KILTED)
    return _default_typestore


# ----------------------------------------------------------------------------------------------
# header stamps straight from CDR bytes


def has_header(msgtype: str, typestore=None) -> bool:
    """True when the message type's first field is a std_msgs/Header (its stamp leads the CDR)."""
    ts = typestore or default_typestore()
    try:
        _, fields = ts.fielddefs[msgtype]
    except KeyError:
        return False
    return bool(fields) and fields[0][1][1] == "std_msgs/msg/Header"


def header_stamp_ns(data: bytes | memoryview) -> int:
    """``header.stamp`` in ns of a CDR message whose first field is a Header.

    The CDR payload starts with a 4-byte encapsulation header (byte 1: 0 big, 1 little endian),
    then the Header's ``builtin_interfaces/Time`` (int32 sec, uint32 nanosec), 4-byte aligned.
    """
    if len(data) < 12:
        raise ValueError(f"CDR payload of {len(data)} bytes: too short for a header stamp")
    fmt = "<iI" if data[1] & 1 else ">iI"
    sec, nanosec = struct.unpack_from(fmt, data, 4)
    return sec * 1_000_000_000 + nanosec


# ----------------------------------------------------------------------------------------------
# metadata helpers


def _custom_data(metadata: dict[str, Any]) -> dict[str, str]:
    out = {CUSTOM_DATA_PREFIX + "episode": json.dumps(metadata, sort_keys=True, default=str)}
    for key, value in metadata.items():
        out[CUSTOM_DATA_PREFIX + str(key)] = (
            value if isinstance(value, str) else json.dumps(value, default=str)
        )
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", "utf8")
    os.replace(tmp, path)


def read_episode_metadata(bag: str | os.PathLike) -> dict[str, Any]:
    """Episode metadata of a bag: ``episode.json`` if present, else ``metadata.yaml`` custom_data."""
    bag = Path(bag)
    sidecar = bag / SIDECAR
    if sidecar.exists():
        try:
            return json.loads(sidecar.read_text("utf8")).get("metadata", {})
        except (json.JSONDecodeError, AttributeError) as err:
            log.warning("%s: unreadable %s (%s); falling back to metadata.yaml", bag, SIDECAR, err)
    meta_yaml = bag / "metadata.yaml"
    if meta_yaml.exists():
        from ruamel.yaml import YAML

        info = YAML(typ="safe").load(meta_yaml.read_text("utf8")) or {}
        custom = (info.get("rosbag2_bagfile_information") or {}).get("custom_data") or {}
        raw = custom.get(CUSTOM_DATA_PREFIX + "episode")
        if raw:
            return json.loads(raw)
    return {}


# ----------------------------------------------------------------------------------------------
# writer


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
            for key, value in _custom_data(self.metadata).items():
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
        _write_json_atomic(
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


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int  # bag (log) time, ns
    data: bytes | memoryview  # CDR bytes


@dataclass
class BagInfo:
    path: Path
    topics: dict[str, str]  # topic -> type
    counts: dict[str, int]
    truncated: bool  # True: read from the complete chunks of a cut-off MCAP
    metadata: dict[str, Any]


def find_mcap(bag: Path) -> Path:
    files = sorted(p for p in bag.glob("*.mcap"))
    if not files:
        raise FileNotFoundError(f"bag {bag}: no metadata.yaml and no .mcap file")
    if len(files) > 1:
        raise ValueError(f"bag {bag}: {len(files)} .mcap files and no metadata.yaml; expected one")
    return files[0]


def _is_intact(bag: Path) -> bool:
    if not (bag / "metadata.yaml").exists():
        return False
    try:
        with Reader(bag):
            return True
    except Exception:  # noqa: BLE001 - any reader failure means "not intact"
        return False


def _stream_records(mcap_path: Path) -> Iterator[tuple[str, Any, Any]]:
    """(kind, record, channel/schema context) from a possibly truncated MCAP, stopping at the cut."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    with open(mcap_path, "rb") as f:
        reader = StreamReader(f, record_size_limit=None)
        try:
            for rec in reader.records:
                if isinstance(rec, Schema):
                    yield "schema", rec, None
                elif isinstance(rec, Channel):
                    yield "channel", rec, None
                elif isinstance(rec, Message):
                    yield "message", rec, None
        except (McapError, struct.error, EOFError, ValueError) as err:
            yield "cut", err, f.tell()


def _read_truncated(bag: Path, topics: set[str] | None) -> Iterator[BagMessage]:
    channels: dict[int, tuple[str, str]] = {}
    schemas: dict[int, str] = {}
    for kind, rec, _ in _stream_records(find_mcap(bag)):
        if kind == "schema":
            schemas[rec.id] = rec.name
        elif kind == "channel":
            channels[rec.id] = (rec.topic, schemas.get(rec.schema_id, ""))
        elif kind == "message":
            topic, msgtype = channels[rec.channel_id]
            if topics is None or topic in topics:
                yield BagMessage(topic, msgtype, rec.log_time, rec.data)


def bag_info(path: str | os.PathLike) -> BagInfo:
    """Topics, types and counts of a bag; falls back to a stream scan for cut-off MCAP files."""
    bag = Path(path).expanduser()
    if not bag.is_dir():
        raise FileNotFoundError(f"bag {bag}: not a directory")
    meta = read_episode_metadata(bag)
    if _is_intact(bag):
        with Reader(bag) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            counts: dict[str, int] = {}
            for c in reader.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        return BagInfo(bag, topics, counts, False, meta)
    topics, counts, schemas, channels = {}, {}, {}, {}
    for kind, rec, _ in _stream_records(find_mcap(bag)):
        if kind == "schema":
            schemas[rec.id] = rec.name
        elif kind == "channel":
            channels[rec.id] = rec.topic
            topics[rec.topic] = schemas.get(rec.schema_id, "")
            counts.setdefault(rec.topic, 0)
        elif kind == "message":
            counts[channels[rec.channel_id]] += 1
    return BagInfo(bag, topics, counts, True, meta)


def read_bag(path: str | os.PathLike, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
    """Messages of a bag in file order (time order for intact bags).

    Intact bags are read with rosbags' ``Reader`` (MCAP or sqlite3). A bag without a usable
    ``metadata.yaml`` / summary (cut off by SIGKILL) is read, without modifying it, from its
    complete chunks; see ``repair_bag`` for what is lost.
    """
    bag = Path(path).expanduser()
    wanted = set(topics) if topics is not None else None
    if _is_intact(bag):
        with Reader(bag) as reader:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            for conn, ts, data in reader.messages(connections=conns):
                yield BagMessage(conn.topic, conn.msgtype, ts, data)
        return
    yield from _read_truncated(bag, wanted)


# ----------------------------------------------------------------------------------------------
# repair


@dataclass
class RepairReport:
    path: Path
    recovered: dict[str, int]  # topic -> messages rewritten
    bytes_before: int
    bytes_kept: int  # offset in the original file where the last complete record ended
    original: Path | None  # where the cut-off file was kept
    already_intact: bool = False
    reason: str = ""

    @property
    def bytes_lost(self) -> int:
        return self.bytes_before - self.bytes_kept


def _register_schema(typestore, name: str, encoding: str, text: str) -> None:
    if name in typestore.fielddefs:
        return
    if encoding != "ros2msg":
        raise ValueError(f"schema {name!r}: encoding {encoding!r}, expected ros2msg to re-register it")
    typestore.register(get_types_from_msg(text, name))


def repair_bag(path: str | os.PathLike, *, keep_original: bool = True) -> RepairReport:
    """Make a bag cut off by SIGKILL readable again, in place.

    Reads the ``.mcap`` sequentially (``mcap`` ``StreamReader``, no seeking, no footer needed)
    until the first incomplete record, rewrites every message of the complete chunks with the
    same bag timestamps into a valid MCAP bag with a regenerated ``metadata.yaml`` (custom_data
    from ``episode.json`` plus ``avdp.repaired``), and moves the cut-off file to
    ``<name>.mcap.truncated`` (deleted when ``keep_original`` is False).

    Lost: messages in the chunk that was open or half-written at the kill, anything queued in
    the recorder, and the original summary (regenerated). A bag that already opens is left as is.
    """
    bag = Path(path).expanduser()
    if _is_intact(bag):
        return RepairReport(bag, bag_info(bag).counts, 0, 0, None, already_intact=True)
    src = find_mcap(bag)
    size = src.stat().st_size
    meta = read_episode_metadata(bag)
    typestore = get_typestore(Stores.ROS2_KILTED)

    tmp_root = Path(tempfile.mkdtemp(prefix=".repair-", dir=bag.parent))
    out = tmp_root / src.stem  # rosbags names the file <dir>.mcap: keep the original file name
    recovered: dict[str, int] = {}
    kept = 0
    reason = ""
    try:
        writer = Writer(out, version=ROSBAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        schemas: dict[int, Any] = {}
        conns: dict[int, Any] = {}
        for kind, rec, _ in _stream_records(src):
            if kind == "schema":
                schemas[rec.id] = rec
            elif kind == "channel":
                sch = schemas.get(rec.schema_id)
                if sch is None:
                    raise ValueError(
                        f"bag {bag}: channel {rec.topic} refers to unknown schema {rec.schema_id}"
                    )
                _register_schema(typestore, sch.name, sch.encoding, sch.data.decode("utf8"))
                conns[rec.id] = writer.add_connection(rec.topic, sch.name, typestore=typestore)
                recovered.setdefault(rec.topic, 0)
            elif kind == "message":
                conn = conns[rec.channel_id]
                writer.write(conn, rec.log_time, rec.data)
                recovered[conn.topic] += 1
            elif kind == "cut":
                reason = f"{type(rec).__name__}: {rec}".strip()
        # the stream reader consumed complete records only; estimate what survived by chunks
        kept = size if not reason else _complete_prefix_bytes(src)
        meta_all = dict(meta)
        for key, value in _custom_data(meta_all).items():
            writer.set_custom_data(key, value)
        writer.set_custom_data(
            CUSTOM_DATA_PREFIX + "repaired",
            json.dumps({"bytes_before": size, "bytes_kept": kept, "reason": reason or "no summary/footer"}),
        )
        writer.close()
        original = src.with_name(src.name + ".truncated")
        os.replace(src, original)
        os.replace(out / src.name, src)
        os.replace(out / "metadata.yaml", bag / "metadata.yaml")
        if not keep_original:
            original.unlink()
            original = None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    sidecar = bag / SIDECAR
    if sidecar.exists():
        try:
            side = json.loads(sidecar.read_text("utf8"))
            side.update(state="repaired", recovered_counts=recovered)
            _write_json_atomic(sidecar, side)
        except json.JSONDecodeError as err:
            # the bag itself is repaired; only the sidecar could not be updated
            log.warning("%s: not valid JSON (%s); left as it was, repair state not recorded", sidecar, err)
    log.warning(
        "repaired %s: kept %d of %d bytes, %d messages recovered", bag, kept, size, sum(recovered.values())
    )
    return RepairReport(bag, recovered, size, kept, original, reason=reason)


def _complete_prefix_bytes(mcap_path: Path) -> int:
    """Byte offset just past the last complete top-level record (the data a reader can use)."""
    from mcap.exceptions import McapError
    from mcap.stream_reader import StreamReader

    with open(mcap_path, "rb") as f:
        reader = StreamReader(f, emit_chunks=True, record_size_limit=None)
        end = 8
        try:
            for _ in reader.records:
                end = f.tell()
        except (McapError, struct.error, EOFError, ValueError) as err:
            # expected for a cut-off file: this is where the usable prefix ends
            log.debug("%s: records end at byte %d (%s)", mcap_path, end, err)
    return end

"""Episode bags: reading (intact or cut off by SIGKILL), repairing, header stamps, metadata.

Pure module (no rclpy). The non-blocking writer is `bag_writer.EpisodeBagWriter`.

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
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

log = logging.getLogger(__name__)

SIDECAR = "episode.json"
CUSTOM_DATA_PREFIX = "avdp."
ROSBAG_VERSION = 9

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


def custom_data(metadata: dict[str, Any]) -> dict[str, str]:
    out = {CUSTOM_DATA_PREFIX + "episode": json.dumps(metadata, sort_keys=True, default=str)}
    for key, value in metadata.items():
        out[CUSTOM_DATA_PREFIX + str(key)] = (
            value if isinstance(value, str) else json.dumps(value, default=str)
        )
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
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


@dataclass
class _McapEvent:
    kind: str                 # "channel" (a new channel), "message", or "cut" (the file ends mid-record)
    record: Any = None        # the mcap Channel or Message record; the exception for "cut"
    channel: Any = None       # the message's Channel
    schema: Any = None        # the channel's Schema (None when the file names none)


def _mcap_events(mcap_path: Path) -> Iterator[_McapEvent]:
    """Channels and messages of a possibly truncated MCAP in file order, with each one's channel
    and schema resolved, stopping at the cut (non-seeking: no summary or footer needed)."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader

    schemas: dict[int, Any] = {}
    channels: dict[int, Any] = {}
    with open(mcap_path, "rb") as f:
        reader = StreamReader(f, record_size_limit=None)
        try:
            for rec in reader.records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                elif isinstance(rec, Channel):
                    channels[rec.id] = rec
                    yield _McapEvent("channel", rec, rec, schemas.get(rec.schema_id))
                elif isinstance(rec, Message):
                    ch = channels[rec.channel_id]
                    yield _McapEvent("message", rec, ch, schemas.get(ch.schema_id))
        except (McapError, struct.error, EOFError, ValueError) as err:
            yield _McapEvent("cut", err)


def _type_name(schema) -> str:
    return schema.name if schema is not None else ""


def _read_truncated(bag: Path, topics: set[str] | None) -> Iterator[BagMessage]:
    for ev in _mcap_events(find_mcap(bag)):
        if ev.kind == "message" and (topics is None or ev.channel.topic in topics):
            yield BagMessage(ev.channel.topic, _type_name(ev.schema), ev.record.log_time, ev.record.data)


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
    topics, counts = {}, {}
    for ev in _mcap_events(find_mcap(bag)):
        if ev.kind == "channel":
            topics[ev.channel.topic] = _type_name(ev.schema)
            counts.setdefault(ev.channel.topic, 0)
        elif ev.kind == "message":
            counts[ev.channel.topic] += 1
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
        conns: dict[int, Any] = {}
        for ev in _mcap_events(src):
            rec, sch = ev.record, ev.schema
            if ev.kind == "channel":
                if sch is None:
                    raise ValueError(
                        f"bag {bag}: channel {rec.topic} refers to unknown schema {rec.schema_id}"
                    )
                _register_schema(typestore, sch.name, sch.encoding, sch.data.decode("utf8"))
                conns[rec.id] = writer.add_connection(rec.topic, sch.name, typestore=typestore)
                recovered.setdefault(rec.topic, 0)
            elif ev.kind == "message":
                conn = conns[rec.channel_id]
                writer.write(conn, rec.log_time, rec.data)
                recovered[conn.topic] += 1
            elif ev.kind == "cut":
                reason = f"{type(rec).__name__}: {rec}".strip()
        # the stream reader consumed complete records only; estimate what survived by chunks
        kept = size if not reason else _complete_prefix_bytes(src)
        meta_all = dict(meta)
        for key, value in custom_data(meta_all).items():
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
            write_json_atomic(sidecar, side)
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

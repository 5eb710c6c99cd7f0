"""Read camera images and point clouds out of ROS 2 recordings (MCAP), without a ROS installation.

    for msg in McapReader("drive.mcap", topics=["/camera/image_raw", "/lidar/points"]):
        msg.topic, msg.stamp_ns, msg.data      # CameraImage (pixels + encoding) or Points

A plain iterator, usable in a notebook: the `mcap` library reads the container (chunks, indexes,
compression), `mcap-ros2-support` decodes the CDR messages with the definitions stored in the file,
and this module turns sensor_msgs/msg/Image, CompressedImage and PointCloud2 into numpy arrays.
Messages come in log-time order. The path may be an .mcap file or a rosbag2 directory of them.

Bad input: a file that is not MCAP, or is truncated or corrupt, raises `McapFormatError` saying
what to do; asking for a topic the file lacks, or one of another type, raises `McapTopicError`.
Topics of other types (when no topics are given) and messages that do not decode are skipped and
counted in `counters` (`unknown_schema`, `malformed`), with a log line per topic.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from mcap.reader import NonSeekingReader, SeekingReader
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from mcap_ros2.decoder import DecoderFactory

from sensors.mcap.images import CameraImage, decode_compressed, decode_image
from sensors.mcap.pointcloud import Points, decode_points
from sensors.mcap.ros_msgs import (
    COMPRESSED_IMAGE, IMAGE, MSGDEFS, SUPPORTED_TYPES, normalise_type_name, stamp_ns,
)

logger = logging.getLogger("costream.sensors.mcap")

MAGIC = b"\x89MCAP0\r\n"
_LOGGED_PER_TOPIC = 3  # malformed messages logged one by one per topic; later ones every 100th


class McapFormatError(ValueError):
    """The file is not an MCAP recording, or it is truncated or corrupt."""


class McapTopicError(LookupError):
    """A requested topic is missing from the recording or is not an image or point-cloud topic."""


class McapMessageError(ValueError):
    """A message failed to decode (raised instead of counted when on_malformed is 'raise')."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a recording: its ROS type and, when the file has statistics, its message count."""

    topic: str
    type: str
    message_encoding: str
    schema_encoding: str
    messages: int | None

    @property
    def supported(self) -> bool:
        return self.type in SUPPORTED_TYPES and self.message_encoding == "cdr"


@dataclass
class ReaderCounters:
    """What the reader did with the messages it read (all topics it looked at)."""

    messages: int = 0  # messages read from the file(s)
    images: int = 0  # Image and CompressedImage messages decoded
    point_clouds: int = 0  # PointCloud2 messages decoded
    unknown_schema: int = 0  # messages of other types, skipped
    malformed: int = 0  # messages that failed to decode, skipped
    invalid_points: int = 0  # points dropped for a non-finite x, y or z
    truncated_files: int = 0  # files read only up to a cut (on_truncated: read_available)
    malformed_by_topic: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


@dataclass(frozen=True)
class RosMessage:
    """One decoded message: where and when it was recorded, and its data."""

    topic: str
    type: str  # sensor_msgs/msg/Image, .../CompressedImage or .../PointCloud2
    log_time_ns: int  # when the recorder logged it (ns since the epoch)
    publish_time_ns: int
    stamp_ns: int  # the message header's stamp (ns since the epoch; 0 when the driver left it unset)
    frame_id: str
    data: CameraImage | Points

    @property
    def kind(self) -> Literal["image", "points"]:
        return "points" if isinstance(self.data, Points) else "image"


def mcap_files(path: str | Path) -> list[Path]:
    """The .mcap files of a path: the file itself, or the files of a rosbag2 directory in name order."""
    root = Path(path).expanduser()
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix == ".mcap" and p.is_file())
        if not files:
            raise FileNotFoundError(
                f"directory {root} holds no .mcap files; give an .mcap file or a rosbag2 directory recorded with "
                f"`ros2 bag record -s mcap` (convert .db3 bags with `ros2 bag convert` or `rosbags-convert`)"
            )
        return files
    if not root.exists():
        raise FileNotFoundError(f"MCAP file not found: {str(path)!r} (resolved to {root.resolve()}); check the path")
    return [root]


def _check_magic(path: Path) -> bool:
    """Check the leading magic; return whether the file also ends with it (a complete file)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(len(MAGIC))
        if head != MAGIC:
            if size == 0:
                raise McapFormatError(f"{path} is empty (0 bytes): the recording was never written")
            hint = ""
            if head.startswith(b"#ROSBAG"):
                hint = " It is a ROS 1 bag: convert it with `rosbags-convert --src " + path.name + " --dst out` first."
            elif head.startswith(b"SQLite f"):
                hint = " It is a ROS 2 SQLite (.db3) bag: convert it with `ros2 bag convert` or `rosbags-convert`."
            raise McapFormatError(f"{path} is not an MCAP file (it starts with {head!r}).{hint}")
        if size < 2 * len(MAGIC):
            return False
        f.seek(-len(MAGIC), 2)
        return f.read(len(MAGIC)) == MAGIC


class McapReader:
    """Decoded images and point clouds of an MCAP recording, in log-time order (see the module doc).

    topics: the topics to read (None: every Image, CompressedImage and PointCloud2 topic).
    on_truncated: 'raise' (default) refuses a file without its footer; 'read_available' replays the
      messages before the cut and counts the file in `counters.truncated_files`.
    on_malformed: 'skip' (default) counts and logs a message that fails to decode; 'raise' stops.
    keep_invalid_points: keep points whose x, y or z is NaN/inf (dropped and counted by default).
    validate_crcs: check each chunk's CRC, so damaged bytes raise instead of decoding into wrong values.
    """

    def __init__(self, path: str | Path, topics: Iterable[str] | None = None, *,
                 on_truncated: Literal["raise", "read_available"] = "raise",
                 on_malformed: Literal["skip", "raise"] = "skip", keep_invalid_points: bool = False,
                 validate_crcs: bool = True) -> None:
        if on_truncated not in ("raise", "read_available"):
            raise ValueError(f"on_truncated must be 'raise' or 'read_available', got {on_truncated!r}")
        if on_malformed not in ("skip", "raise"):
            raise ValueError(f"on_malformed must be 'skip' or 'raise', got {on_malformed!r}")
        self.path = Path(path)
        self.files = mcap_files(path)
        self.requested = None if topics is None else tuple(topics)
        self.on_truncated = on_truncated
        self.on_malformed = on_malformed
        self.keep_invalid_points = keep_invalid_points
        self.validate_crcs = validate_crcs
        self.counters = ReaderCounters()
        self._complete = {f: _check_magic(f) for f in self.files}
        self._summaries: dict[Path, Any] = {}
        for f in self.files:
            self._summaries[f] = self._read_summary(f)
        self.topics: dict[str, TopicInfo] = self._topics()
        self.selected: tuple[str, ...] = self._select()
        self._skipped_topics: set[str] = set()

    # -- opening ------------------------------------------------------------------------------------

    def _read_summary(self, path: Path) -> Any:
        """The file's summary, None when it has none; a truncated file raises unless read_available."""
        problem = None
        if self._complete[path]:
            try:
                with path.open("rb") as f:
                    return SeekingReader(f).get_summary()
            except Exception as exc:  # the mcap library raises several types for a damaged footer/summary
                problem = f"its summary section is damaged ({type(exc).__name__}: {exc})"
        else:
            problem = "it does not end with the MCAP footer (the recorder was stopped before closing it)"
        if self.on_truncated == "raise":
            raise McapFormatError(
                f"{path} is truncated or corrupt: {problem}. Recover it with `mcap recover {path} -o fixed.mcap` "
                f"(the mcap CLI), or set on_truncated: read_available to replay the messages before the damage."
            )
        logger.warning("%s: %s; replaying the messages before the damage (on_truncated: read_available)", path, problem)
        self._complete[path] = False
        return None

    def _topics(self) -> dict[str, TopicInfo]:
        topics: dict[str, TopicInfo] = {}
        for path in self.files:
            summary = self._summaries[path]
            if summary is not None:
                counts = summary.statistics.channel_message_counts if summary.statistics else None
                channels = [(c, summary.schemas.get(c.schema_id), None if counts is None else counts.get(c.id, 0))
                            for c in summary.channels.values()]
            else:
                channels = [(c, s, None) for c, s in self._scan_channels(path)]
            for channel, schema, count in channels:
                known = topics.get(channel.topic)
                messages = count
                if known is not None:  # the same topic in several files of a rosbag2 directory
                    messages = None if count is None or known.messages is None else count + known.messages
                topics[channel.topic] = TopicInfo(
                    topic=channel.topic,
                    type=normalise_type_name(schema.name) if schema is not None else "",
                    message_encoding=channel.message_encoding,
                    schema_encoding=schema.encoding if schema is not None else "",
                    messages=messages,
                )
        return dict(sorted(topics.items()))

    def _scan_channels(self, path: Path) -> list[tuple[Channel, Schema | None]]:
        """Channels of a file without a summary, found by reading its records up to any damage."""
        schemas: dict[int, Schema] = {}
        channels: dict[int, tuple[Channel, Schema | None]] = {}
        with path.open("rb") as f:
            try:
                for record in StreamReader(f, skip_magic=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = (record, schemas.get(record.schema_id))
            except Exception:  # the damage itself is reported when the messages are read
                pass
        return list(channels.values())

    def _select(self) -> tuple[str, ...]:
        if self.requested is None:
            return tuple(t for t, info in self.topics.items() if info.supported)
        for topic in self.requested:
            info = self.topics.get(topic)
            if info is None:
                close = difflib.get_close_matches(topic, list(self.topics), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise McapTopicError(
                    f"topic {topic!r} is not in {self.path}; {hint}its topics: {self.describe_topics()}"
                )
            if not info.supported:
                raise McapTopicError(
                    f"topic {topic!r} in {self.path} carries {info.type or 'schemaless'} messages "
                    f"({info.message_encoding}); the MCAP source reads ROS 2 (CDR) {', '.join(SUPPORTED_TYPES)}. "
                    f"Readable topics: {', '.join(t for t, i in self.topics.items() if i.supported) or 'none'}"
                )
        return tuple(dict.fromkeys(self.requested))

    def describe_topics(self) -> str:
        return ", ".join(f"{t} ({i.type or i.message_encoding})" for t, i in self.topics.items()) or "none"

    @property
    def message_count(self) -> int | None:
        """Messages on the selected topics when the file's statistics say, else None."""
        counts = [self.topics[t].messages for t in self.selected]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    @property
    def time_range_ns(self) -> tuple[int, int] | None:
        """(first, last) log time over the files' statistics, None without statistics."""
        stats = [s.statistics for s in self._summaries.values() if s is not None and s.statistics is not None]
        if len(stats) != len(self.files) or not stats:
            return None
        return min(s.message_start_time for s in stats), max(s.message_end_time for s in stats)

    # -- reading ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[RosMessage]:
        for path in self.files:
            yield from self._read_file(path)

    def _read_file(self, path: Path) -> Iterator[RosMessage]:
        topics = None if self.requested is None else list(self.selected)
        factory = DecoderFactory()  # schema ids are per file
        decoders: dict[int, Any] = {}
        read = 0
        with path.open("rb") as f:
            if self._complete[path]:
                messages = SeekingReader(f, validate_crcs=self.validate_crcs).iter_messages(
                    topics=topics, log_time_order=True)
            else:  # damaged: stream through the records in file order up to the damage
                messages = NonSeekingReader(f, validate_crcs=self.validate_crcs).iter_messages(
                    topics=topics, log_time_order=False)
            while True:
                try:
                    item = next(messages, None)
                except Exception as exc:  # the mcap library raises several types for damaged data
                    if not self._complete[path]:
                        self.counters.truncated_files += 1
                        logger.warning("%s: stopped at the damage after %d messages (%s: %s)", path, read,
                                       type(exc).__name__, exc)
                        return
                    raise McapFormatError(
                        f"{path} is corrupt: reading failed after {read} messages ({type(exc).__name__}: {exc}). "
                        f"The messages before were delivered. Check it with `mcap doctor {path}`."
                    ) from exc
                if item is None:
                    return
                read += 1
                self.counters.messages += 1
                schema, channel, message = item
                decoded = self._decode(factory, decoders, schema, channel, message)
                if decoded is not None:
                    yield decoded

    def _decode(self, factory: DecoderFactory, decoders: dict[int, Any], schema: Schema | None, channel: Channel,
                message: Message) -> RosMessage | None:
        type_name = normalise_type_name(schema.name) if schema is not None else ""
        if type_name not in SUPPORTED_TYPES or channel.message_encoding != "cdr":
            self.counters.unknown_schema += 1
            if channel.topic not in self._skipped_topics:
                self._skipped_topics.add(channel.topic)
                logger.info("skipping topic %s (%s, %s): the MCAP source reads %s; its messages are counted as "
                            "unknown_schema", channel.topic, type_name or "no schema", channel.message_encoding,
                            ", ".join(SUPPORTED_TYPES))
            return None
        try:
            decoder = decoders.get(channel.schema_id)
            if decoder is None:
                decoder = decoders[channel.schema_id] = _decoder_for(factory, schema, type_name)
            ros = decoder(message.data)
            data = self._convert(type_name, ros)
        except Exception as exc:  # CDR and payload errors come as many exception types
            self._malformed(channel.topic, message, exc)
            return None
        if isinstance(data, Points):
            self.counters.point_clouds += 1
            self.counters.invalid_points += data.invalid
        else:
            self.counters.images += 1
        return RosMessage(channel.topic, type_name, message.log_time, message.publish_time, stamp_ns(ros.header),
                          str(ros.header.frame_id), data)

    def _convert(self, type_name: str, ros: Any) -> CameraImage | Points:
        if type_name == IMAGE:
            pixels = decode_image(int(ros.height), int(ros.width), str(ros.encoding), ros.is_bigendian,
                                  int(ros.step), ros.data)
            return CameraImage(pixels, str(ros.encoding))
        if type_name == COMPRESSED_IMAGE:
            return decode_compressed(str(ros.format), ros.data)
        return decode_points(int(ros.height), int(ros.width), ros.fields, bool(ros.is_bigendian),
                             int(ros.point_step), int(ros.row_step), ros.data,
                             keep_invalid=self.keep_invalid_points)

    def reject(self, message: RosMessage, exc: Exception) -> None:
        """Count a decoded message its consumer cannot use (e.g. an image with no BGR view) as malformed,
        under the same policy as messages that do not decode (log and skip, or raise)."""
        self._count_malformed(message.topic, f"message on {message.topic} (log time {message.log_time_ns} ns, "
                                             f"{message.type}) cannot be used", exc)

    def _malformed(self, topic: str, message: Message, exc: Exception) -> None:
        self._count_malformed(topic, f"message on {topic} (log time {message.log_time} ns, {len(message.data)} "
                                     f"bytes) does not decode", exc)

    def _count_malformed(self, topic: str, what: str, exc: Exception) -> None:
        self.counters.malformed += 1
        count = self.counters.malformed_by_topic.get(topic, 0) + 1
        self.counters.malformed_by_topic[topic] = count
        what = f"{what}: {type(exc).__name__}: {exc}"
        if self.on_malformed == "raise":
            raise McapMessageError(what + " (set on_malformed: skip to count and skip such messages)") from exc
        if count <= _LOGGED_PER_TOPIC or count % 100 == 0:
            logger.warning("%s; skipped (%d malformed on this topic so far)", what, count)


def _decoder_for(factory: DecoderFactory, schema: Schema | None, type_name: str) -> Any:
    """The CDR decoder of a schema: the file's ros2msg definition, or ours for an IDL-described type."""
    if schema is None or schema.encoding != "ros2msg":
        schema = Schema(id=-1 - SUPPORTED_TYPES.index(type_name), name=type_name, encoding="ros2msg", data=MSGDEFS[type_name].encode())
    decoder = factory.decoder_for("cdr", schema)
    if decoder is None:
        raise ValueError(f"no CDR decoder for schema {schema.name!r} ({schema.encoding})")
    return decoder


def read_mcap(path: str | Path, topics: Iterable[str] | None = None, **options: Any) -> Iterator[RosMessage]:
    """`McapReader(path, topics, **options)` as a one-call iterator."""
    return iter(McapReader(path, topics, **options))


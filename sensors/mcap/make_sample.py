"""Write a small ROS 2 recording (MCAP) as a robot's drivers would, so MCAP pipelines run with no downloads.

    python -m sensors.mcap.make_sample out/sample.mcap            # 6 s: camera at 15 fps, LiDAR at 10 Hz
    python -m sensors.mcap.make_sample out/sample.mcap --seconds 20 --compressed

Topics (ROS 2 message definitions, CDR, `ros2` profile; `ros2 bag info`, Foxglove and rosbags read it):
- `/camera/image_raw`: sensor_msgs/msg/Image, rgb8, the synthetic video (moving blob and bar);
- `/camera/image_raw/compressed` (with --compressed): sensor_msgs/msg/CompressedImage, JPEG;
- `/lidar/points`: sensor_msgs/msg/PointCloud2 in the Velodyne driver's layout (x, y, z, intensity
  float32, ring uint16, time float32, 32-byte padded points, is_dense false: rays with no return are
  NaN) from a 16-beam scanner over a ground plane, a wall ring and a box that drives around;
- `/status`: std_msgs/msg/String at 1 Hz, a type the MCAP source does not read (it is counted and skipped).
Header stamps start at 2023-11-14 22:13:20 UTC; each message is logged 2 ms after its stamp.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from mcap_ros2.writer import Writer

from sensors.mcap.pointcloud import encode_points
from sensors.mcap.ros_msgs import COMPRESSED_IMAGE, IMAGE, MSGDEFS, POINT_CLOUD2
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig

logger = logging.getLogger("costream.sensors.mcap.sample")

START_NS = 1_700_000_000 * 1_000_000_000
LOG_DELAY_NS = 2_000_000
STRING = "std_msgs/msg/String"
# 16 beams from -15 to +15 degrees, as the VLP-16
ELEVATIONS_DEG = np.linspace(-15.0, 15.0, 16)


@dataclass(frozen=True)
class SampleConfig:
    """What to write: duration, rates and sizes."""

    seconds: float = 6.0
    fps: float = 15.0  # camera frames per second
    width: int = 320
    height: int = 240
    compressed: bool = False  # also write a JPEG CompressedImage topic
    lidar_hz: float = 10.0  # scans per second (0: no point clouds)
    azimuth_steps: int = 360  # rays per beam per scan
    class_id: int = 0  # motion pattern of the synthetic video
    chunk_size: int = 786_432  # bytes per MCAP chunk (rosbag2's MCAP storage default, 768 KiB)

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise ValueError(f"seconds must be positive, got {self.seconds}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.lidar_hz < 0:
            raise ValueError(f"lidar_hz must be >= 0, got {self.lidar_hz}")
        if self.azimuth_steps < 8:
            raise ValueError(f"azimuth_steps must be at least 8, got {self.azimuth_steps}")
        if self.chunk_size < 1024:
            raise ValueError(f"chunk_size must be at least 1024 bytes, got {self.chunk_size}")

    @property
    def camera_frames(self) -> int:
        return int(round(self.seconds * self.fps))

    @property
    def scans(self) -> int:
        return int(round(self.seconds * self.lidar_hz))


@dataclass(frozen=True)
class SampleSummary:
    path: Path
    messages: dict[str, int]  # per topic


def synthetic_scan(index: int, config: SampleConfig) -> dict[str, np.ndarray]:
    """Columns of one scan: a 16-beam spinning scanner 1.7 m above flat ground, a circular wall at 25 m
    and a 2 m box circling at 8 m. Rays that hit nothing within 40 m are NaN (no return)."""
    steps = config.azimuth_steps
    period = 1.0 / config.lidar_hz
    azimuth = np.tile(np.arange(steps) * (2 * math.pi / steps), len(ELEVATIONS_DEG))
    ring = np.repeat(np.arange(len(ELEVATIONS_DEG), dtype=np.uint16), steps)
    elevation = np.deg2rad(ELEVATIONS_DEG)[ring]
    direction = np.stack([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth),
                          np.sin(elevation)], axis=1)
    far = 40.0
    ranges = np.full(azimuth.shape, np.inf)
    intensity = np.zeros(azimuth.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = np.where(direction[:, 2] < 0, -1.7 / direction[:, 2], np.inf)
        horizontal = np.hypot(direction[:, 0], direction[:, 1])
        wall = np.where(horizontal > 0, 25.0 / horizontal, np.inf)
        wall = np.where(wall * direction[:, 2] < 3.0, wall, np.inf)  # the wall is 1.7 + 3 m high
        centre = 8.0 * np.array([math.cos(0.3 * index * period * 2 * math.pi), math.sin(0.3 * index * period * 2 * math.pi)])
        box = _ray_box(direction, centre, half=1.0, top=0.3)
    for hits, value in ((ground, 20.0), (wall, 120.0), (box, 220.0)):
        closer = hits < ranges
        ranges = np.where(closer, hits, ranges)
        intensity = np.where(closer, np.float32(value), intensity)
    ranges = np.where(ranges <= far, ranges, np.nan)
    xyz = (direction * ranges[:, None]).astype(np.float32)
    time = (azimuth / (2 * math.pi) * period).astype(np.float32)
    return {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "intensity": intensity.astype(np.float32),
            "ring": ring, "time": time}


def _ray_box(direction: np.ndarray, centre: np.ndarray, half: float, top: float) -> np.ndarray:
    """Distance along each ray (from the sensor at z=0) to an axis-aligned box, inf where it misses."""
    low = np.array([centre[0] - half, centre[1] - half, -1.7])
    high = np.array([centre[0] + half, centre[1] + half, top])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = low / direction
        t2 = high / direction
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    return np.where((far >= near) & (near > 0), near, np.inf)


def _header(stamp: int, frame_id: str) -> dict:
    return {"stamp": {"sec": stamp // 1_000_000_000, "nanosec": stamp % 1_000_000_000}, "frame_id": frame_id}


def write_sample(path: str | Path, config: SampleConfig = SampleConfig()) -> SampleSummary:
    """Write the recording to `path` (parent folders are created); returns the message counts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    video = SyntheticVideo(SyntheticVideoConfig(width=config.width, height=config.height,
                                                frames=config.camera_frames, fps=config.fps, class_id=config.class_id))
    # (stamp, order, topic, kind, index): written in log-time order, as a recorder does
    events: list[tuple[int, int, str, str, int]] = []
    for i in range(config.camera_frames):
        stamp = START_NS + int(round(i * 1e9 / config.fps))
        events.append((stamp, 0, "/camera/image_raw", "image", i))
        if config.compressed:
            events.append((stamp, 1, "/camera/image_raw/compressed", "jpeg", i))
    for i in range(config.scans):
        events.append((START_NS + int(round(i * 1e9 / config.lidar_hz)), 2, "/lidar/points", "scan", i))
    for i in range(int(config.seconds)):
        events.append((START_NS + i * 1_000_000_000, 3, "/status", "status", i))
    events.sort()
    counts: dict[str, int] = {}
    with path.open("wb") as f:
        writer = Writer(f, chunk_size=config.chunk_size)
        schemas = {name: writer.register_msgdef(name, MSGDEFS[name]) for name in (IMAGE, COMPRESSED_IMAGE, POINT_CLOUD2)}
        schemas[STRING] = writer.register_msgdef(STRING, "string data\n")
        for stamp, _, topic, kind, index in events:
            if kind == "image":
                rgb = cv2.cvtColor(video.frame(index), cv2.COLOR_BGR2RGB)
                msg = {"header": _header(stamp, "camera_optical"), "height": config.height, "width": config.width,
                       "encoding": "rgb8", "is_bigendian": 0, "step": config.width * 3, "data": rgb.tobytes()}
                schema = schemas[IMAGE]
            elif kind == "jpeg":
                ok, jpeg = cv2.imencode(".jpg", video.frame(index), [cv2.IMWRITE_JPEG_QUALITY, 90])
                if not ok:
                    raise RuntimeError("OpenCV could not encode a JPEG")
                msg = {"header": _header(stamp, "camera_optical"), "format": "jpeg", "data": jpeg.tobytes()}
                schema = schemas[COMPRESSED_IMAGE]
            elif kind == "scan":
                cloud = encode_points(synthetic_scan(index, config), point_step=32)
                msg = {"header": _header(stamp, "lidar"), **cloud.as_ros_dict()}
                schema = schemas[POINT_CLOUD2]
            else:
                msg = {"data": f"ok {index}"}
                schema = schemas[STRING]
            writer.write_message(topic, schema, msg, log_time=stamp + LOG_DELAY_NS, publish_time=stamp + LOG_DELAY_NS,
                                 sequence=counts.get(topic, 0))
            counts[topic] = counts.get(topic, 0) + 1
        writer.finish()
    return SampleSummary(path, counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sensors.mcap.make_sample", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the .mcap file to write")
    defaults = SampleConfig()
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--fps", type=float, default=defaults.fps, help="camera frames per second")
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--compressed", action="store_true", help="also write a JPEG CompressedImage topic")
    parser.add_argument("--lidar-hz", type=float, default=defaults.lidar_hz, help="scans per second (0: none)")
    parser.add_argument("--class-id", type=int, default=defaults.class_id, help="motion pattern of the video")
    args = parser.parse_args(argv)
    try:
        config = SampleConfig(seconds=args.seconds, fps=args.fps, width=args.width, height=args.height,
                              compressed=args.compressed, lidar_hz=args.lidar_hz, class_id=args.class_id)
        summary = write_sample(args.out, config)
    except ValueError as exc:
        parser.error(str(exc))
    for topic, count in sorted(summary.messages.items()):
        sys.stdout.write(f"{topic}: {count} messages\n")
    sys.stdout.write(f"wrote {summary.path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

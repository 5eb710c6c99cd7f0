"""Decoding cost of ROS 2 sensor messages read by the `mcap` source, next to rosbags, per message.

From the same serialized CDR bytes (made once, outside the timed region), three paths per message:
- `ours`: mcap-ros2-support's decoder (the definitions stored in the file) + costream's conversion to
  arrays (`decode_image` / `decode_compressed` / `decode_points`), what `McapReader` does;
- `rosbags`: rosbags' generated deserializer + the same conversion (the other maintained decoder);
- `convert only`: the conversion to arrays alone.
Messages: a 640x480 rgb8 Image, a 1280x720 JPEG CompressedImage, a 64-beam x 2048 PointCloud2
(131k points, Ouster-like 48-byte points). It also times reading a whole recording with McapReader
(container, CRCs, decompression, decoding) and reports messages per second against the sensor rates.

    python benchmarks/mcap_decode.py               # full run
    python benchmarks/mcap_decode.py --quick       # a few seconds, to check it works
    python benchmarks/mcap_decode.py --json out/mcap_decode.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from mcap.records import Schema
from mcap_ros2.decoder import DecoderFactory
from rosbags.typesys import Stores, get_typestore

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_util import time_interleaved  # noqa: E402
from sensors.mcap.images import decode_compressed, decode_image  # noqa: E402
from sensors.mcap.make_sample import SampleConfig, write_sample  # noqa: E402
from sensors.mcap.pointcloud import decode_points, encode_points  # noqa: E402
from sensors.mcap.reader import McapReader  # noqa: E402
from sensors.mcap.ros_msgs import COMPRESSED_IMAGE, IMAGE, MSGDEFS, POINT_CLOUD2  # noqa: E402
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig  # noqa: E402

TS = get_typestore(Stores.ROS2_HUMBLE)


def messages() -> dict[str, tuple[str, dict, float]]:
    """name -> (ROS type, message fields as a dict, sensor rate in Hz)."""
    header = {"stamp": {"sec": 1, "nanosec": 0}, "frame_id": "sensor"}
    vga = SyntheticVideo(SyntheticVideoConfig(width=640, height=480, frames=1)).frame(0)
    hd = SyntheticVideo(SyntheticVideoConfig(width=1280, height=720, frames=1)).frame(0)
    rng = np.random.default_rng(0)
    n = 64 * 2048
    columns = {"x": rng.normal(0, 20, n).astype(np.float32), "y": rng.normal(0, 20, n).astype(np.float32),
               "z": rng.normal(0, 2, n).astype(np.float32), "intensity": rng.uniform(0, 255, n).astype(np.float32),
               "t": rng.integers(0, 10**8, n).astype(np.uint32), "reflectivity": rng.integers(0, 255, n).astype(np.uint16),
               "ring": (np.arange(n) % 64).astype(np.uint16)}
    cloud = encode_points(columns, point_step=48, height=64)
    return {
        "Image 640x480 rgb8": (IMAGE, {"header": header, "height": 480, "width": 640, "encoding": "rgb8",
                                       "is_bigendian": 0, "step": 1920, "data": vga[:, :, ::-1].tobytes()}, 30.0),
        "CompressedImage 1280x720 JPEG": (COMPRESSED_IMAGE, {"header": header, "format": "jpeg",
                                                             "data": cv2.imencode(".jpg", hd)[1].tobytes()}, 30.0),
        "PointCloud2 64x2048": (POINT_CLOUD2, {"header": header, **cloud.as_ros_dict()}, 10.0),
    }


def serialize(type_name: str, fields: dict) -> bytes:
    from mcap_ros2._dynamic import serialize_dynamic  # the writer mcap-ros2-support uses

    return serialize_dynamic(type_name, MSGDEFS[type_name])[type_name](fields)


def convert(type_name: str, msg) -> object:
    if type_name == IMAGE:
        return decode_image(msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step, msg.data)
    if type_name == COMPRESSED_IMAGE:
        return decode_compressed(msg.format, msg.data)
    return decode_points(msg.height, msg.width, msg.fields, bool(msg.is_bigendian), msg.point_step, msg.row_step,
                         msg.data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, to check that it runs")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    repeats, rounds = (6, 2) if args.quick else (60, 5)
    factory = DecoderFactory()
    results: dict[str, dict] = {}
    print(f"{'message':32} {'ours ms':>9} {'rosbags ms':>11} {'ratio':>7} {'convert ms':>11} {'sensor period ms':>17}")
    for index, (name, (type_name, fields, rate)) in enumerate(messages().items()):
        raw = serialize(type_name, fields)
        schema = Schema(id=index + 1, name=type_name, encoding="ros2msg", data=MSGDEFS[type_name].encode())
        ours_decoder = factory.decoder_for("cdr", schema)
        decoded = ours_decoder(raw)
        times = time_interleaved({
            "ours": lambda: convert(type_name, ours_decoder(raw)),
            "rosbags": lambda: convert(type_name, TS.deserialize_cdr(raw, type_name)),
            "convert": lambda: convert(type_name, decoded),
        }, repeats=repeats, warmup=2, rounds=rounds)
        ms = {k: v * 1e3 for k, v in times.items()}
        results[name] = {"ours_ms": ms["ours"], "rosbags_ms": ms["rosbags"], "convert_ms": ms["convert"],
                         "ratio_ours_over_rosbags": ms["ours"] / ms["rosbags"], "bytes": len(raw),
                         "sensor_period_ms": 1e3 / rate}
        print(f"{name:32} {ms['ours']:9.3f} {ms['rosbags']:11.3f} {ms['ours'] / ms['rosbags']:7.2f} "
              f"{ms['convert']:11.3f} {1e3 / rate:17.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        seconds = 2.0 if args.quick else 10.0
        path = write_sample(Path(tmp) / "s.mcap", SampleConfig(seconds=seconds, fps=30.0, width=640, height=480,
                                                               lidar_hz=10.0, azimuth_steps=1800)).path
        passes = []
        for _ in range(1 if args.quick else 3):
            reader = McapReader(path)
            t0 = time.perf_counter()
            count = sum(1 for _ in reader)
            passes.append(time.perf_counter() - t0)
        elapsed = sorted(passes)[len(passes) // 2]
        recorded = 40.0 * seconds  # 30 images + 10 scans per second
        results["read_whole_recording"] = {
            "messages": count, "seconds": elapsed, "messages_per_s": count / elapsed,
            "speed_vs_recorded_rate": count / elapsed / 40.0, "file_bytes": path.stat().st_size}
        print(f"\nMcapReader over a {seconds:.0f} s recording (640x480 rgb8 at 30 Hz + 16x1800 scans at 10 Hz, "
              f"{path.stat().st_size / 1e6:.1f} MB): {count} messages in {elapsed:.2f} s = "
              f"{count / elapsed:.0f} messages/s, {count / elapsed / 40.0:.1f}x the recorded rate "
              f"({recorded:.0f} messages)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

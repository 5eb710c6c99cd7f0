"""A simulated VLP-16: the synthetic race track as the UDP data packets a real sensor sends.

`synthetic_packets` yields (sensor time in microseconds, payload) for consecutive rotations of the
track: every firing block is cast along the rays the decoder will reconstruct, encoded into real
1206-byte packets (single return, strongest mode) and stamped as the sensor would stamp them.
Run `python -m sensors.lidar.velodyne_sim --port 2368` to stream them over UDP in real time, so
the live `velodyne` source can be tried without a sensor.
"""
from __future__ import annotations

import argparse
import logging
import math
import socket
import time
from typing import Iterator

import numpy as np

from sensors.lidar.synthetic_track import SyntheticTrack, TrackConfig
from sensors.lidar.velodyne_encode import VelodyneEncoder, rotation_block_azimuths
from sensors.lidar.velodyne_models import BLOCKS, HOUR_US, VLP16, VelodyneModel

logger = logging.getLogger("costream.sensors.lidar.velodyne")


def synthetic_packets(track: SyntheticTrack, rotations: int | None = None, model: VelodyneModel = VLP16,
                      start_azimuth: float = 18000.0) -> Iterator[tuple[float, bytes]]:
    """Packets of `rotations` turns (None: endless) at the track's scan rate. The first packet
    starts mid-turn (at `start_azimuth`, 0.01 deg), as a real stream does."""
    rate = track.config.rate_hz
    encoder = VelodyneEncoder(model, "strongest")
    rotation_us = 1e6 / rate
    packets_per_rotation = math.ceil(rotation_us / encoder.packet_us)
    rotation = 0
    while rotations is None or rotation < rotations:
        first = rotation * packets_per_rotation
        blocks = packets_per_rotation * BLOCKS
        start_us = first * encoder.packet_us
        azimuths = rotation_block_azimuths(blocks, model.block_us, 60.0 * rate,
                                           start=start_azimuth + start_us * 36000 * rate / 1e6)
        distances, reflectivity = track.firings(start_us * 1e-6, azimuths, model, seed_index=rotation)
        distances = np.where(np.isfinite(distances), distances, 0.0)
        for k, payload in enumerate(encoder.packets(azimuths, distances, reflectivity, start_us % HOUR_US)):
            yield start_us + k * encoder.packet_us, payload
        rotation += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send simulated VLP-16 packets of a synthetic race track over UDP.")
    parser.add_argument("--host", default="127.0.0.1", help="destination address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2368, help="destination UDP port (default 2368)")
    parser.add_argument("--rotations", type=int, default=None, help="stop after this many turns (default: endless)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="turns per second (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    track = SyntheticTrack(TrackConfig(seed=args.seed, rate_hz=args.rate_hz))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    sent = 0
    try:
        for sensor_us, payload in synthetic_packets(track, args.rotations):
            delay = start + sensor_us * 1e-6 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sock.sendto(payload, (args.host, args.port))
            sent += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    logger.info("sent %d packets", sent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

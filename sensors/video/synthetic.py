"""Deterministic synthetic video: a bright blob and a bar whose motion depends on a class id.

Used as the default input of the shipped pipelines and by tests, and able to write itself to a real
video file with `cv2.VideoWriter` so the file path of the video source can be exercised end to end.
Frame `i` is a pure function of (config, i): the same seed gives the same pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticVideoConfig:
    """Size, length and content of a synthetic clip.

    The class id picks the blob's direction of travel (num_classes directions around the circle) and
    the bar's rotation speed, so different classes move differently.
    """

    width: int = 160
    height: int = 160
    frames: int | None = 300  # None: endless
    fps: float = 30.0
    class_id: int = 0
    num_classes: int = 8
    seed: int = 0
    noise: float = 0.0  # std of added Gaussian pixel noise (0..255 scale)

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"synthetic video must be at least 8x8 pixels, got {self.width}x{self.height}")
        if self.frames is not None and self.frames < 0:
            raise ValueError(f"frames must be >= 0 or None (endless), got {self.frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.num_classes < 1 or not 0 <= self.class_id < self.num_classes:
            raise ValueError(f"class_id must be in [0, {self.num_classes}), got {self.class_id}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


class SyntheticVideo:
    """Frames of a `SyntheticVideoConfig` as uint8 (H, W, 3) BGR images."""

    def __init__(self, config: SyntheticVideoConfig = SyntheticVideoConfig()) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, config.class_id])
        self._start = rng.uniform(0.2, 0.8, size=2)  # blob start (x, y) as fractions of the frame
        self._colors = rng.integers(60, 256, size=(2, 3)).astype(np.float32)  # blob and bar BGR colours
        self._phase = float(rng.uniform(0, 2 * math.pi))
        angle = 2 * math.pi * config.class_id / config.num_classes
        speed = 0.6  # frame widths per second
        self._velocity = np.array([math.cos(angle), math.sin(angle)]) * speed / config.fps
        self._spin = (config.class_id + 1) * math.pi / (2 * config.fps)  # bar rotation, rad per frame
        ys, xs = np.mgrid[0 : config.height, 0 : config.width].astype(np.float32)
        self._xs = xs / config.width
        self._ys = ys / config.height
        background = 30 + 40 * self._ys  # a vertical gradient so frames are not flat
        self._background = np.repeat(background[..., None], 3, axis=2)

    def __len__(self) -> int:
        if self.config.frames is None:
            raise TypeError("an endless synthetic video (frames=None) has no length")
        return self.config.frames

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` (deterministic)."""
        cfg = self.config
        pos = (self._start + self._velocity * index) % 1.0  # wraps around the edges
        dx = np.minimum(np.abs(self._xs - pos[0]), 1 - np.abs(self._xs - pos[0]))
        dy = np.minimum(np.abs(self._ys - pos[1]), 1 - np.abs(self._ys - pos[1]))
        blob = np.exp(-(dx**2 + dy**2) / (2 * 0.08**2))
        theta = self._phase + self._spin * index
        dist = np.abs((self._xs - 0.5) * math.sin(theta) - (self._ys - 0.5) * math.cos(theta))
        bar = (dist < 0.04).astype(np.float32) * 0.8
        image = self._background + blob[..., None] * self._colors[0] + bar[..., None] * self._colors[1]
        if cfg.noise > 0:
            image = image + np.random.default_rng([cfg.seed, cfg.class_id, index]).normal(0, cfg.noise, image.shape)
        return np.clip(image, 0, 255).astype(np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        index = 0
        while self.config.frames is None or index < self.config.frames:
            yield self.frame(index)
            index += 1

    def write(self, path: str | Path, fourcc: str | None = None, frames: int | None = None) -> Path:
        """Write the clip to a real video file; the codec follows the extension (.avi: MJPG, .mp4: mp4v)."""
        path = Path(path)
        count = self.config.frames if frames is None else frames
        if count is None:
            raise ValueError("an endless synthetic video needs `frames` to be written to a file")
        code = fourcc or fourcc_for(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), self.config.fps,
                                 (self.config.width, self.config.height))
        if not writer.isOpened():
            raise RuntimeError(
                f"cv2.VideoWriter could not open {path} with codec {code!r}; use an .avi path (MJPG works in "
                f"every OpenCV build) or pass another fourcc"
            )
        try:
            for index in range(count):
                writer.write(self.frame(index))
        finally:
            writer.release()
        return path


def fourcc_for(path: str | Path) -> str:
    """The most portable OpenCV codec for a file extension."""
    suffix = Path(path).suffix.lower()
    return {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}.get(suffix, "MJPG")

"""Video: files, cameras and network streams through OpenCV, their preprocessing for video models,
and a synthetic test video. Usable without the runtime:

    for image_bgr, t_capture_ns, index in VideoReader("clip.mp4"): ...

The node kinds (`video`, `synthetic_video`, `video_preprocess`) are in `sensors.video.nodes`.
"""
from sensors.video.reader import (
    ReconnectPolicy, VideoCounters, VideoError, VideoFileNotFoundError, VideoFrame, VideoInterrupted, VideoOpenError,
    VideoReader, VideoUnavailableError, parse_uri,
)
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig, fourcc_for
from sensors.video.transforms import VideoTransform, center_crop, preview, resize_short_side, resized_size

__all__ = ["ReconnectPolicy", "SyntheticVideo", "SyntheticVideoConfig", "VideoCounters", "VideoError",
           "VideoFileNotFoundError", "VideoFrame", "VideoInterrupted", "VideoOpenError", "VideoReader",
           "VideoTransform", "VideoUnavailableError", "center_crop", "fourcc_for", "parse_uri", "preview",
           "resize_short_side", "resized_size"]

"""Old import path, kept for existing code; the video preprocessing lives in `sensors.video.transforms`."""
from sensors.video.transforms import (  # noqa: F401
    X3D_MEAN, X3D_SIZES, X3D_STD, VideoTransform, center_crop, preview, resize_short_side, resized_size,
)

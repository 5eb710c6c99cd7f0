"""Old import path, kept for existing code; the synthetic video lives in `sensors.video.synthetic`."""
from sensors.video.synthetic import SyntheticVideo, SyntheticVideoConfig, fourcc_for  # noqa: F401

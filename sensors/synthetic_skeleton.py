"""Old import path, kept for existing code; synthetic skeletons live in `sensors.skeleton.synthetic`."""
from sensors.skeleton.synthetic import SyntheticSkeletonConfig, synthetic_skeleton  # noqa: F401

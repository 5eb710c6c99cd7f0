"""Old import path of the sensor node kinds, kept for existing code; they live in `sensors.video.nodes`,
`sensors.skeleton.nodes` and `sensors.sinks.nodes` (importing this module registers them all)."""
from sensors.sinks.nodes import AnnotatedVideoWriter, LabelsConsole, LabelsJsonl  # noqa: F401
from sensors.skeleton.nodes import (  # noqa: F401
    SkeletonParams, SkeletonSource, SyntheticSkeletonParams, SyntheticSkeletonSource,
)
from sensors.video.nodes import (  # noqa: F401
    SyntheticVideoParams, SyntheticVideoSource, TransformParams, VideoParams, VideoPreprocess, VideoPreprocessParams,
    VideoSource,
)

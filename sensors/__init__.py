"""Sensor sources and sensor-side transforms, usable without the runtime (e.g. from a notebook).

- `sensors.video`: `VideoReader` for files, cameras and network streams (reconnect with backoff);
- `sensors.video_transforms`: resize/crop/normalise frames for video models (X3D presets);
- `sensors.synthetic_video`, `sensors.synthetic_skeleton`: deterministic test inputs;
- `sensors.skeleton`: NTU RGB+D `.skeleton` reader and writer;
- `sensors.labels`: Kinetics-400 / NTU RGB+D 60/120 class names and `top_k`.

The node kinds that plug these into pipelines live in `sensors.nodes` (sources) and
`sensors.sink_nodes` (label and video sinks); importing `sensors` does not import them.
"""

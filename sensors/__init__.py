"""Sensor sources and sensor-side transforms, one folder per sensor family, usable without the runtime
(e.g. from a notebook): readers are plain iterators of arrays, and each family's `nodes` module holds
the thin node adapters that plug them into pipelines.

- `sensors.video`: `VideoReader` for files, cameras and network streams (reconnect with backoff),
  the X3D preprocessing (`VideoTransform`) and a synthetic test video;
- `sensors.skeleton`: NTU RGB+D `.skeleton` reader and writer, synthetic skeleton tracks;
- `sensors.labels`: Kinetics-400 / NTU RGB+D 60/120 class names and `top_k`;
- `sensors.sinks`: sinks that print, record or draw predictions.

A new family is a folder with its readers and a `nodes.py`, plus one line in the `costream.nodes`
entry points of pyproject.toml. Importing `sensors` imports no family.
"""

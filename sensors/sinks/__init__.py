"""Sinks that show or keep what a model predicted: `labels_console` and `labels_jsonl`
(`sensors.sinks.labels`), `video_writer` (`sensors.sinks.video_writer`); `sensors.sinks.nodes`
registers them. They read `frame.data["scores"]` and name classes through `sensors.labels`.
"""

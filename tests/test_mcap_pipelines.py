"""The shipped MCAP pipelines run end to end on a recording written as ROS 2 drivers write them:
camera -> CoX3D -> MCAP recording + live view, and LiDAR -> BEV -> MCAP recording + live view."""
from __future__ import annotations

from pathlib import Path

import pytest
from mcap.reader import make_reader

from sensors.mcap.make_sample import SampleConfig, write_sample
from stream.pipeline import Pipeline
from stream.registry import kinds

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def recorded(path: Path) -> dict[str, list]:
    with path.open("rb") as f:
        out: dict[str, list] = {}
        for schema, channel, message in make_reader(f).iter_messages():
            out.setdefault(channel.topic, []).append((schema.name, message.log_time))
    return out


def test_mcap_video_pipeline_records_the_model_outputs(tmp_path, one_torch_thread):
    sample = write_sample(tmp_path / "in.mcap", SampleConfig(seconds=3.0, fps=15.0, width=96, height=72,
                                                             lidar_hz=2.0, azimuth_steps=16)).path
    out = tmp_path / "out.mcap"
    pipeline = Pipeline.from_yaml(PIPELINES / "mcap_video.yaml", env={"COSTREAM_MCAP": str(sample)}, overrides=[
        "bag.pace=free", f"record.path={out}", "live.port=0", "model.size=xs"])
    report = pipeline.run()
    assert not report.errors
    predictions = report.nodes["model"].frames_out
    assert report.nodes["bag"].frames_out == 45 and predictions > 0
    topics = recorded(out)
    assert {t: len(v) for t, v in topics.items()} == {
        "/costream/camera/image_raw/image": predictions, "/costream/camera/image_raw/labels": predictions,
        "/costream/camera/image_raw/latency": predictions}
    assert {s for v in topics.values() for s, _ in v} == {"foxglove.CompressedImage", "costream.Labels",
                                                          "costream.Latency"}
    stamps = [t for _, t in topics["/costream/camera/image_raw/labels"]]
    first = 45 - predictions  # the frames the model needed to fill its receptive field
    assert stamps == [1_700_000_000 * 10**9 + round(i * 1e9 / 15) for i in range(first, 45)]


@pytest.mark.skipif("bev" not in kinds(), reason="the `bev` node kind (sensors.lidar) is not in this tree")
def test_mcap_lidar_pipeline_records_scans_and_maps(tmp_path):
    sample = write_sample(tmp_path / "in.mcap", SampleConfig(seconds=1.0, fps=2.0, width=32, height=24,
                                                             lidar_hz=10.0, azimuth_steps=90)).path
    out = tmp_path / "out.mcap"
    pipeline = Pipeline.from_yaml(PIPELINES / "mcap_lidar.yaml", env={"COSTREAM_MCAP": str(sample)}, overrides=[
        "bag.pace=free", f"record.path={out}", "live.port=0", "bev.grid=64"])
    report = pipeline.run()
    assert not report.errors
    topics = recorded(out)
    assert {t: (len(v), v[0][0]) for t, v in topics.items()} == {
        "/costream/lidar/points/points": (10, "foxglove.PointCloud"),
        "/costream/lidar/points/bev": (10, "foxglove.Grid"),
        "/costream/lidar/points/bev_image": (10, "foxglove.CompressedImage"),
        "/costream/lidar/points/latency": (10, "costream.Latency")}
    assert [t for _, t in topics["/costream/lidar/points/bev"]] == [
        1_700_000_000 * 10**9 + i * 10**8 for i in range(10)]

"""Label sinks (console, JSON lines), the annotated video writer, and a video pipeline end to end."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import sensors.nodes  # noqa: F401  (registers the kinds even where the entry point is not installed)
from sensors.labels import load_labels
from sensors.sink_nodes import (
    AnnotatedVideoWriter,
    ConsoleParams,
    JsonlParams,
    LabelsConsole,
    LabelsJsonl,
    VideoWriterParams,
)
from sensors.synthetic_video import SyntheticVideo, SyntheticVideoConfig
from sensors.video import VideoReader
from stream.frame import Frame
from stream.node import NodeContext, Operator
from stream.params import ParamsError, build_params

T0 = 1_000_000_000


class FakeClock:
    """Injectable clock (ns)."""

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def _scores(num: int, top: dict[int, float]) -> torch.Tensor:
    rest = (1.0 - sum(top.values())) / (num - len(top))
    out = torch.full((num,), rest)
    for index, value in top.items():
        out[index] = value
    return out


def _frame(stream: str, seq: int, scores: torch.Tensor, labelset: str | None = "ntu60", **data: object) -> Frame:
    meta = {"model": "costgcn", "labelset": labelset} if labelset else {"model": "costgcn"}
    return Frame(stream=stream, seq=seq, t_capture=T0 + seq * 1_000_000, data={"scores": scores, **data}, meta=meta)


def test_jsonl_lines_have_the_agreed_fields(tmp_path: Path) -> None:
    clock = FakeClock(T0 + 12_500_000)
    sink = LabelsJsonl(build_params(JsonlParams, {"path": str(tmp_path / "out" / "p.jsonl"), "k": 2}), clock=clock)
    sink.setup(NodeContext(name="jsonl"))
    sink.process(_frame("cam", 0, _scores(60, {22: 0.7, 9: 0.2})))
    clock.t += 5_000_000
    sink.process(_frame("cam", 1, _scores(60, {9: 0.6, 22: 0.3})))
    sink.teardown()
    lines = [json.loads(line) for line in (tmp_path / "out" / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["stream"] == "cam" and first["seq"] == 0 and first["t_capture"] == T0
    assert first["labels"] == ["hand waving", "clapping"]
    assert first["scores"] == pytest.approx([0.7, 0.2], abs=1e-6)
    assert first["latency_ms"] == pytest.approx(12.5)
    assert first["model"] == "costgcn" and first["labelset"] == "ntu60"
    assert lines[1]["labels"][0] == "clapping" and lines[1]["latency_ms"] == pytest.approx(16.5)


def test_jsonl_applies_softmax_to_logits_and_labelset_param(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    sink = LabelsJsonl(build_params(JsonlParams, {"path": str(path), "k": 1, "labelset": "kinetics400"}))
    sink.setup(NodeContext(name="jsonl"))
    logits = torch.zeros(400)
    logits[399] = 5.0
    sink.process(_frame("cam", 0, logits, labelset=None))
    sink.teardown()
    line = json.loads(path.read_text())
    expected = float(torch.softmax(logits.double(), 0)[399])
    assert line["labels"] == ["zumba"] and line["scores"][0] == pytest.approx(expected, abs=1e-6)


def test_label_sink_errors_are_clear(tmp_path: Path) -> None:
    sink = LabelsJsonl(build_params(JsonlParams, {"path": str(tmp_path / "p.jsonl")}))
    sink.setup(NodeContext(name="jsonl"))
    frame = Frame("cam", 0, T0, {"video": torch.zeros(3, 4, 4)})
    with pytest.raises(ValueError, match=r"frame \('cam', 0\) carries no 'scores' \(data keys: video\)"):
        sink.process(frame)
    with pytest.raises(ValueError, match="60 scores but 120 class names"):
        sink.process(_frame("cam", 0, _scores(60, {1: 0.5}), labelset="ntu120"))
    sink.teardown()
    with pytest.raises(ParamsError, match="unknown label set"):
        build_params(JsonlParams, {"labelset": "imagenet"})


def test_console_prints_top_k_and_rate_limits_per_stream() -> None:
    clock = FakeClock(T0 + 40_000_000)
    out = io.StringIO()
    sink = LabelsConsole(build_params(ConsoleParams, {"k": 2, "min_interval_s": 1.0}), clock=clock, out=out)
    sink.setup(NodeContext(name="console"))
    sink.process(_frame("a", 0, _scores(60, {0: 0.9, 1: 0.05})))
    sink.process(_frame("a", 1, _scores(60, {0: 0.9, 1: 0.05})))  # same stream, too soon
    sink.process(_frame("b", 0, _scores(60, {5: 0.8, 6: 0.1})))  # another stream is not limited by a
    clock.t += 1_000_000_000
    sink.process(_frame("a", 2, _scores(60, {1: 0.6, 0: 0.3})))
    lines = out.getvalue().splitlines()
    assert lines == [
        "a #0 [costgcn]: drink water 90.0% | eat meal/snack 5.0%  (40.0 ms)",
        "b #0 [costgcn]: pickup 80.0% | throw 10.0%  (40.0 ms)",
        "a #2 [costgcn]: eat meal/snack 60.0% | drink water 30.0%  (1038.0 ms)",
    ]
    assert sink.printed == 3 and sink.suppressed == 1


def test_console_writes_to_stdout_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    sink = LabelsConsole(build_params(ConsoleParams, {"k": 1}), clock=FakeClock(T0))
    sink.setup(NodeContext(name="console"))
    sink.process(_frame("cam", 0, _scores(60, {22: 0.5})))
    assert capsys.readouterr().out == "cam #0 [costgcn]: hand waving 50.0%  (0.0 ms)\n"


def test_video_writer_produces_a_readable_annotated_video(tmp_path: Path) -> None:
    clip = SyntheticVideo(SyntheticVideoConfig(width=160, height=120, frames=7))
    path = tmp_path / "annotated.avi"
    sink = AnnotatedVideoWriter(build_params(VideoWriterParams, {"path": str(path), "fps": 10.0}), clock=FakeClock(T0))
    sink.setup(NodeContext(name="writer"))
    originals = []
    for i, image in enumerate(clip):
        originals.append(image.copy())
        sink.process(_frame("cam", i, _scores(60, {3: 0.9}), image=image))
    sink.teardown()
    assert all(np.array_equal(o, clip.frame(i)) for i, o in enumerate(originals))  # inputs were not drawn on
    reader = VideoReader(path)
    frames = [f.image for f in reader]
    assert len(frames) == 7 and reader.fps == pytest.approx(10.0) and frames[0].shape == (120, 160, 3)
    # the label box is drawn top-left: dark box with white text, unlike the source frame there
    top_left = frames[0][:14, :100].astype(np.int16)
    assert np.abs(top_left - clip.frame(0)[:14, :100].astype(np.int16)).mean() > 10
    assert (frames[0][:14, :100] > 200).any() and (frames[0][:14, :100] < 30).mean() > 0.3


def test_video_writer_one_file_per_stream_and_errors(tmp_path: Path) -> None:
    image = SyntheticVideo(SyntheticVideoConfig(width=64, height=48, frames=1)).frame(0)
    sink = AnnotatedVideoWriter(build_params(VideoWriterParams, {"path": str(tmp_path / "v_{stream}.avi")}))
    sink.setup(NodeContext(name="writer"))
    for seq in range(3):
        sink.process(Frame("cam/0", seq, T0, {"image": image}))  # no scores: latency only
        sink.process(Frame("cam/1", seq, T0, {"image": image}))
    sink.teardown()
    assert sum(1 for _ in VideoReader(tmp_path / "v_cam_0.avi")) == 3
    assert sum(1 for _ in VideoReader(tmp_path / "v_cam_1.avi")) == 3

    single = AnnotatedVideoWriter(build_params(VideoWriterParams, {"path": str(tmp_path / "one.avi")}))
    single.setup(NodeContext(name="writer"))
    single.process(Frame("a", 0, T0, {"image": image}))
    with pytest.raises(ValueError, match=r"got stream 'b' after 'a'.*\{stream\}"):
        single.process(Frame("b", 0, T0, {"image": image}))
    with pytest.raises(ValueError, match="no data\\['image'\\].*keep_image: true"):
        single.process(Frame("a", 1, T0, {"video": torch.zeros(3, 8, 8)}))
    single.teardown()


# --- a whole pipeline: real video file -> video source -> classifier -> the three sinks ----------------


@dataclass(frozen=True)
class _ColourParams:
    labelset: str = "kinetics400"


class ColourClassifier(Operator):
    """A tiny real classifier for the pipeline test: logits from the mean colour of the clip frame."""

    Params = _ColourParams

    def setup(self, context: NodeContext) -> None:
        super().setup(context)
        self.weight = torch.linspace(-1.0, 1.0, 400 * 3).reshape(400, 3)

    def process(self, frame: Frame) -> Frame:
        video = frame.data["video"]  # (C, H, W)
        logits = self.weight @ video.mean(dim=(1, 2))
        data = {"scores": torch.softmax(logits, 0), "image": frame.data["image"]}
        return frame.derive(data, meta={"model": "colour", "labelset": self.params.labelset})


def test_video_file_through_the_pipeline(tmp_path: Path) -> None:
    executor_mod = pytest.importorskip("stream.executor")
    config_mod = pytest.importorskip("stream.config")
    frames = 9
    video = SyntheticVideo(SyntheticVideoConfig(width=128, height=96, frames=frames, fps=15.0)).write(tmp_path / "in.avi")
    block = {"from": "cam", "policy": "block", "queue_size": 16}
    spec = config_mod.build_pipeline({
        "version": 1,
        "name": "video-e2e",
        "nodes": {
            "cam": {"kind": "video", "params": {"uri": str(video), "preset": "x3d_xs", "keep_image": True},
                    "rate_hz": "native"},
            "model": {"kind": "test_sinks:ColourClassifier", "inputs": [block]},
            "jsonl": {"kind": "labels_jsonl", "inputs": [{**block, "from": "model"}],
                      "params": {"path": str(tmp_path / "pred.jsonl"), "k": 3}},
            "writer": {"kind": "video_writer", "inputs": [{**block, "from": "model"}],
                       "params": {"path": str(tmp_path / "out.avi"), "fps": 15.0}},
            "console": {"kind": "labels_console", "inputs": [{**block, "from": "model"}],
                        "params": {"min_interval_s": 0.0}},
        },
    })
    report = executor_mod.LocalExecutor(spec).run()  # paced at the file's 15 fps (rate_hz: native)
    assert report.ok, report.fatal_error
    assert report.error_count == 0
    lines = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [line["seq"] for line in lines] == list(range(frames))
    names = set(load_labels("kinetics400"))
    assert all(len(line["labels"]) == 3 and set(line["labels"]) <= names for line in lines)
    assert all(line["latency_ms"] >= 0 for line in lines)
    written = VideoReader(tmp_path / "out.avi")
    assert sum(1 for _ in written) == frames and written.size == (128, 96)

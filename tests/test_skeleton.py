"""NTU RGB+D .skeleton reader (format, truncation, corruption), synthetic skeletons and skeleton sources."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sensors.nodes import SkeletonParams, SkeletonSource, SyntheticSkeletonParams, SyntheticSkeletonSource
from sensors.skeleton import NTU_EDGES_1BASED, SkeletonFormatError, read_skeleton, write_skeleton
from sensors.synthetic_skeleton import SyntheticSkeletonConfig, synthetic_skeleton
from stream.node import NodeContext
from stream.params import build_params


def _joint_line(x: float, y: float, z: float) -> str:
    # x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState
    return f"{x} {y} {z} 250.1 180.2 1000.3 540.4 0.9 0.1 0.2 0.3 2"


def _ntu_text(frames: list[list[float]]) -> str:
    """Hand-written NTU text: frames[t] is a list of body offsets; joint v of body b is (off+v, -v, 3+b)."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for b, off in enumerate(bodies):
            lines.append(f"7205759403792{b} 0 1 1 1 1 0 -0.2 0.1 2")
            lines.append("25")
            lines += [_joint_line(off + v * 0.01, -v * 0.01, 3.0 + b) for v in range(25)]
    return "\n".join(lines) + "\n"


def test_reads_hand_written_file_with_exact_layout(tmp_path: Path) -> None:
    path = tmp_path / "S001C001P001R001A023.skeleton"
    path.write_text(_ntu_text([[0.5], [0.6, 1.0], [0.7, 1.1, 2.0], []]))
    seq = read_skeleton(path)
    assert seq.data.shape == (3, 4, 25, 2) and seq.data.dtype == np.float32
    assert seq.bodies_per_frame == (1, 2, 3, 0)
    assert seq.body_ids == ("72057594037920", "72057594037921", "72057594037922")
    assert seq.data[:, 0, 3, 0] == pytest.approx([0.53, -0.03, 3.0])
    assert seq.data[:, 1, 24, 1] == pytest.approx([1.24, -0.24, 4.0])
    assert np.all(seq.data[:, 0, :, 1] == 0)  # absent second body
    assert np.all(seq.data[:, 3] == 0)  # frame without bodies
    assert seq.data[0, 2, 0, 1] == pytest.approx(1.1)  # third body of frame 3 dropped (M=2)
    assert read_skeleton(path, max_bodies=3).data[0, 2, 0, 2] == pytest.approx(2.0)


def test_round_trip_of_writer_and_reader(tmp_path: Path) -> None:
    data = synthetic_skeleton(SyntheticSkeletonConfig(frames=10, bodies=2, class_id=4))
    seq = read_skeleton(write_skeleton(tmp_path / "a.skeleton", data))
    assert np.allclose(seq.data, data, atol=1e-6)


def _lines(tmp_path: Path, text: str, name: str = "bad.skeleton") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_truncated_file_names_line_and_position(tmp_path: Path) -> None:
    lines = _ntu_text([[0.5], [0.6]]).splitlines()
    path = _lines(tmp_path, "\n".join(lines[:40]) + "\n")  # stops inside frame 2's joints
    with pytest.raises(SkeletonFormatError, match=r"bad.skeleton:41: file ends while reading joint 9 of frame 2, "
                                                  r"body 1; the file is truncated"):
        read_skeleton(path)


def test_wrong_value_count_is_reported_with_line(tmp_path: Path) -> None:
    lines = _ntu_text([[0.5]]).splitlines()
    lines[10] = "0.1 0.2 0.3"
    with pytest.raises(SkeletonFormatError, match=r":11: expected 12 values for joint 7 of frame 1, body 1, found 3"):
        read_skeleton(_lines(tmp_path, "\n".join(lines)))


def test_non_numeric_and_bad_counts(tmp_path: Path) -> None:
    lines = _ntu_text([[0.5]]).splitlines()
    bad = list(lines)
    bad[5] = "abc " + bad[5].split(" ", 1)[1]
    with pytest.raises(SkeletonFormatError, match=r":6: joint 2 of frame 1, body 1: x y z must be numbers"):
        read_skeleton(_lines(tmp_path, "\n".join(bad)))
    bad = list(lines)
    bad[3] = "20"
    with pytest.raises(SkeletonFormatError, match=r":4: frame 1, body 1 has 20 joints; NTU RGB\+D skeletons have 25"):
        read_skeleton(_lines(tmp_path, "\n".join(bad)))
    with pytest.raises(SkeletonFormatError, match=r":1: expected the frame count \(an integer\), found 'hello'"):
        read_skeleton(_lines(tmp_path, "hello\n1\n"))
    with pytest.raises(SkeletonFormatError, match=r":1: file is empty"):
        read_skeleton(_lines(tmp_path, "\n"))


def test_binary_garbage_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "garbage.skeleton"
    path.write_bytes(b"3\n1\n" + bytes(range(128, 256)))
    with pytest.raises(SkeletonFormatError, match=r"garbage.skeleton:3: file is not text"):
        read_skeleton(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="skeleton file not found: .*none.skeleton"):
        read_skeleton(tmp_path / "none.skeleton")
    node = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path / "none")}))
    with pytest.raises(FileNotFoundError, match="skeleton path not found"):
        node.setup(NodeContext(name="sk"))


def test_synthetic_skeleton_is_plausible_and_deterministic() -> None:
    cfg = SyntheticSkeletonConfig(frames=60, class_id=7, noise=0.0)
    data = synthetic_skeleton(cfg)
    assert data.shape == (3, 60, 25, 2) and data.dtype == np.float32
    assert np.array_equal(data, synthetic_skeleton(cfg))
    for a, b in NTU_EDGES_1BASED:  # rigid bones: lengths constant over time
        length = np.linalg.norm(data[:, :, a - 1, 0] - data[:, :, b - 1, 0], axis=0)
        assert length.std() < 1e-5 and 0.03 < length.mean() < 0.5
    assert np.abs(np.diff(data, axis=1)).max() > 0.01  # it moves
    assert np.all(data[:, :, :, 1] == 0)  # one body only
    assert np.all(data[1, :, 3, 0] > data[1, :, 0, 0])  # head above the spine base
    other = synthetic_skeleton(SyntheticSkeletonConfig(frames=60, class_id=8, noise=0.0))
    assert not np.allclose(data, other)


def test_skeleton_node_one_stream_per_file(tmp_path: Path) -> None:
    a = write_skeleton(tmp_path / "S001C001P001R001A010.skeleton",
                       synthetic_skeleton(SyntheticSkeletonConfig(frames=5, class_id=9)))
    write_skeleton(tmp_path / "S001C001P001R001A011.skeleton",
                   synthetic_skeleton(SyntheticSkeletonConfig(frames=3, class_id=10)))
    node = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path)}))
    node.setup(NodeContext(name="sk"))
    frames = list(node.frames())
    assert [(f.stream, f.seq) for f in frames][4:6] == [("S001C001P001R001A010", 4), ("S001C001P001R001A011", 0)]
    assert len(frames) == 8 and node.native_rate_hz == 30.0
    assert frames[0].data["skeleton"].shape == (3, 25, 2) and frames[0].data["skeleton"].dtype == torch.float32
    assert frames[0].meta["action"] == 9 and frames[-1].meta["action"] == 10
    assert torch.equal(frames[2].data["skeleton"], torch.from_numpy(read_skeleton(a).data[:, 2]))

    one = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path), "one_stream": True, "max_frames": 6}))
    one.setup(NodeContext(name="sk"))
    assert [(f.stream, f.seq) for f in one.frames()] == [("sk", i) for i in range(6)]


def test_skeleton_node_corrupt_file_raise_or_skip(tmp_path: Path) -> None:
    write_skeleton(tmp_path / "a.skeleton", synthetic_skeleton(SyntheticSkeletonConfig(frames=2)))
    (tmp_path / "b.skeleton").write_text("2\n1\n")
    node = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path)}))
    node.setup(NodeContext(name="sk"))
    with pytest.raises(SkeletonFormatError, match="b.skeleton:3"):
        list(node.frames())
    skip = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path), "on_bad_file": "skip"}))
    skip.setup(NodeContext(name="sk"))
    assert len(list(skip.frames())) == 2 and skip.bad_files == [str(tmp_path / "b.skeleton")]
    single = SkeletonSource(build_params(SkeletonParams, {"path": str(tmp_path / "b.skeleton")}))
    with pytest.raises(SkeletonFormatError, match="truncated"):
        single.setup(NodeContext(name="sk"))  # a single file is checked before the pipeline starts


def test_synthetic_skeleton_node_interleaves_streams() -> None:
    node = SyntheticSkeletonSource(build_params(SyntheticSkeletonParams, {"streams": 3, "frames": 4}))
    node.setup(NodeContext(name="syn"))
    frames = list(node.frames())
    assert len(frames) == 12 == node.length and node.native_rate_hz == 90.0
    assert [f.stream for f in frames[:4]] == ["syn/0", "syn/1", "syn/2", "syn/0"]
    assert [f.seq for f in frames if f.stream == "syn/2"] == [0, 1, 2, 3]
    assert [f.meta["class_id"] for f in frames[:3]] == [0, 1, 2]
    assert frames[0].data["skeleton"].shape == (3, 25, 2)

"""`costream serve` of a continual-model pipeline over real sockets: robots send raw numpy frames,
warm-up frames are answered at once with "no output", and the predictions equal the model node's
own, stream by stream (several streams batched in the server)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.models.stgcn import STGCN, STGCNConfig
from operators.nodes.skeleton import CoSTGCNNode, CoSTGCNNodeParams
from sensors.labels import load_labels, top_k
from stream.frame import Frame
from stream.node import NodeContext
from stream.zmq import Client
from test_models_stgcn import randomize_bn
from zmq_server import INTERRUPTED, REPO, Server, free_port

WINDOW = 82  # CoST-GCN*: the backbone's 81-frame receptive field plus one frame of pooling window
FRAMES = WINDOW + 4


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    offline = STGCN(STGCNConfig(num_classes=60, temporal_padding=False, strided=False)).eval()
    randomize_bn(offline)
    path = tmp_path_factory.mktemp("weights") / "stgcn_star.pt"
    torch.save({"state_dict": offline.state_dict()}, path)
    return str(path)


def reference(weights: str, clips: dict[str, np.ndarray]) -> dict[tuple[str, int], np.ndarray]:
    """Each stream through its own in-process node: (stream, seq) -> scores."""
    out = {}
    for stream, clip in clips.items():
        node = CoSTGCNNode(CoSTGCNNodeParams(variant="costgcn_star", weights=weights, window=WINDOW))
        node.setup(NodeContext(name="model", device="cpu"))
        for t in range(clip.shape[0]):
            for f in node.process(Frame(stream, t, t, {"skeleton": torch.from_numpy(clip[t])})):
                out[(f.stream, f.seq)] = f.data["scores"].numpy()
    return out


@pytest.mark.slow
def test_a_served_continual_model_answers_warm_up_at_once_and_predicts_like_the_node(tmp_path, weights):
    rng = np.random.default_rng(0)
    clips = {s: rng.standard_normal((FRAMES, 3, 25, 2)).astype(np.float32) for s in ("robot/a", "robot/b")}
    expected = reference(weights, clips)
    assert sorted(t for s, t in expected if s == "robot/a") == list(range(WINDOW - 1, FRAMES))
    # a second robot whose camera has the same name as the first one's: its own state, its own predictions
    other_clip = rng.standard_normal((FRAMES, 3, 25, 2)).astype(np.float32)
    other_expected = reference(weights, {"robot/a": other_clip})

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # --reply-timeout 120: were a warm-up frame left to time out, its reply would be an error, not "ok"
    srv = Server(tmp_path, str(REPO / "pipelines" / "skeleton_action.yaml"), endpoint, "--reply-timeout", "120",
                 "--set", f"model.weights={weights}", "--set", f"model.window={WINDOW}",
                 "--set", "options.max_failed_frames=1")  # the one malformed frame sent below
    try:
        with (Client(endpoint, timeout=120) as client, Client(endpoint, timeout=120, client="robot2") as other,
              Client(endpoint, timeout=120, client="robot3") as broken):
            srv.wait_ready(client)
            replies, other_replies = {}, {}
            for t in range(FRAMES):
                # all streams in flight together (the server may step them as one batch); one sends
                # a bare array, the others a {name: array} dict
                bad_id = broken.send(np.zeros((3, 25, 3), np.float32), stream="robot/a", seq=t) if t == WINDOW else None
                ids = {s: client.send(clips[s][t] if s == "robot/a" else {"skeleton": clips[s][t]}, stream=s, seq=t)
                       for s in clips}
                other_id = other.send({"skeleton": other_clip[t]}, stream="robot/a", seq=t)
                for s, request_id in ids.items():
                    replies[(s, t)] = client.recv(request_id).raise_for_status()
                other_replies[("robot/a", t)] = other.recv(other_id).raise_for_status()
                if bad_id is not None:  # a malformed skeleton fails alone, not the frames batched with it
                    bad = broken.recv(bad_id)
                    assert bad.error["code"] == "node_failed" and "(3, 25, 2)" in bad.error["message"]
            stats = client.ping()
    finally:
        assert srv.stop() == INTERRUPTED, srv.log.read_text()
    for key, reply in replies.items():
        assert (reply.stream, reply.seq) == key
        if key in expected:
            np.testing.assert_allclose(reply.arrays["scores"], expected[key], rtol=1e-5, atol=1e-6)
            assert "model" in reply.latency
            best = top_k(reply.arrays["scores"], reply.meta["labelset"], k=3)  # as docs/robot-client-example.md
            assert [p.index for p in best] == list(np.argsort(-expected[key], kind="stable")[:3])
            assert best[0].label == load_labels("ntu60")[best[0].index]
        else:  # warm-up: answered at once, status ok, nothing to report yet
            assert reply.arrays == {} and reply.meta == {"no_output": "model"}, key
            assert "model" in reply.latency and reply.latency["total"] >= reply.latency["model"]
    assert stats["no_output"] == 3 * (WINDOW - 1) and stats.get("timeouts", 0) == 0
    for key, reply in other_replies.items():
        assert (reply.stream, reply.seq) == key
        if key in other_expected:
            np.testing.assert_allclose(reply.arrays["scores"], other_expected[key], rtol=1e-5, atol=1e-6)
        else:
            assert reply.meta == {"no_output": "model"}, key
    assert sorted(other_expected) == [k for k, r in sorted(other_replies.items()) if r.arrays]


@pytest.mark.slow
def test_a_served_video_model_takes_camera_images_raw_or_jpeg(tmp_path):
    import cv2

    from operators.models.cox3d import CoX3D
    from operators.models.x3d import X3DConfig
    from operators.nodes.video import CoX3DNode, CoX3DParams
    from sensors.nodes import VideoPreprocess, VideoPreprocessParams
    from test_models_x3d import randomize

    side, frames_after_warmup = 32, 3
    co = CoX3D(X3DConfig(size="xs", num_classes=10, crop_size=side), window=2)
    randomize(co, seed=7)
    weights = tmp_path / "cox3d_xs.pt"
    torch.save({"model_state": co.state_dict()}, weights)
    pipeline = tmp_path / "video.yaml"
    pipeline.write_text(f"""
version: 1
name: served_video
nodes:
  camera: {{kind: synthetic_video, params: {{width: {side}, height: {side}, frames: 10}}}}
  model:
    kind: cox3d
    inputs: [{{from: camera, policy: block, queue_size: 16}}]
    params: {{size: xs, window: 2, num_classes: 10, crop_size: {side}, weights: {weights}}}
    max_batch: 4
  out: {{kind: "null", inputs: [model]}}
""")
    n = co.delay + frames_after_warmup
    rng = np.random.default_rng(1)
    images = {s: rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8) for s in ("cam/raw", "cam/jpeg")}
    # what the server decodes from the JPEG requests (cv2 on both sides)
    decoded = {"cam/raw": images["cam/raw"],
               "cam/jpeg": np.stack([cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1],
                                                  cv2.IMREAD_COLOR) for im in images["cam/jpeg"]])}
    expected = {}
    for stream, clip in decoded.items():  # each stream alone, in process: preprocess + model node
        prep = VideoPreprocess(VideoPreprocessParams(preset=None, short_side=side, crop=side))
        node = CoX3DNode(CoX3DParams(size="xs", window=2, num_classes=10, crop_size=side, weights=str(weights)))
        for x in (prep, node):
            x.setup(NodeContext(name="model"))
        for t in range(n):
            for f in node.process(prep.process(Frame(stream, t, t, clip[t]))):
                expected[(f.stream, f.seq)] = f.data["scores"].numpy()
    assert len(expected) == 2 * frames_after_warmup

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = Server(tmp_path, str(pipeline), endpoint, "--reply-timeout", "120")
    try:
        with Client(endpoint, timeout=120) as client:
            srv.wait_ready(client)
            replies = {}
            for t in range(n):
                ids = {"cam/raw": client.send(images["cam/raw"][t], stream="cam/raw", seq=t),
                       "cam/jpeg": client.send({"image": images["cam/jpeg"][t]}, stream="cam/jpeg", seq=t,
                                               encoding={"image": "jpeg"})}
                for s, request_id in ids.items():
                    replies[(s, t)] = client.recv(request_id).raise_for_status()
    finally:
        assert srv.stop() == INTERRUPTED, srv.log.read_text()
    for key, reply in replies.items():
        if key in expected:
            np.testing.assert_allclose(reply.arrays["scores"], expected[key], rtol=1e-4, atol=1e-5)
            assert {"camera_preprocess", "model"} <= set(reply.latency)
        else:
            assert reply.arrays == {} and reply.meta == {"no_output": "model"}, key

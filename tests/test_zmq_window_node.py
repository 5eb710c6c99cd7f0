"""A test-only continual model node for the ZeroMQ serving tests, loaded by the server subprocess as
`test_zmq_window_node:WindowSum` (tests/ is on its PYTHONPATH): a continual Conv1d with unit weights,
so its output for a frame is the sum of the last three frames' values (nothing before the third
frame of a stream) and a test can compute every output itself."""
from __future__ import annotations

import torch
from torch import Tensor

from operators.base import ContinualModule
from operators.conv import Conv1d
from operators.nodes.base import ContinualModelNode, as_tensor
from stream.frame import Frame

CHANNELS = 4
WINDOW = 3


class WindowSum(ContinualModelNode):
    def build_model(self) -> ContinualModule:
        model = Conv1d(CHANNELS, 1, WINDOW)
        with torch.no_grad():
            model.weight.fill_(1.0)
            model.bias.zero_()
        return model

    def input_tensor(self, frame: Frame) -> Tensor:
        x = as_tensor(frame.data)
        if x is None or tuple(x.shape) != (CHANNELS,):
            raise ValueError(f"WindowSum expects a ({CHANNELS},) array, got {getattr(x, 'shape', type(frame.data))}")
        return x.float()

    def output_data(self, frame: Frame, y: Tensor) -> dict:
        return {"sum": y}

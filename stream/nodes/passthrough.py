"""`passthrough`: emits every frame unchanged (the runtime still stamps and counts it).

Useful to measure runtime overhead, to tap a branch, or as a placeholder while building a pipeline.
"""
from __future__ import annotations

from stream.frame import Frame
from stream.node import Operator
from stream.ports import ANY, SAME_AS_INPUT
from stream.registry import register


@register("passthrough")
class Passthrough(Operator):
    outputs_follow_inputs = True
    consumes = ANY
    produces = SAME_AS_INPUT

    def process(self, frame: Frame) -> Frame:
        return frame

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        return list(frames)

"""Continual neural operators: torch.nn layers that also process a stream one step at a time."""
from operators.base import ContinualModule
from operators.state import (
    clone_state,
    select_streams,
    split_state,
    stack_states,
    state_from_dict,
    state_phase,
    state_to,
    state_to_dict,
)

__all__ = [
    "ContinualModule",
    "clone_state",
    "select_streams",
    "split_state",
    "stack_states",
    "state_from_dict",
    "state_phase",
    "state_to",
    "state_to_dict",
]

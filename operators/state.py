"""Generic handling of continual-operator states: stacking streams into a batch, splitting them,
selecting, resetting, cloning and saving.

Contract for every operator state (see docs/operators.md):
- a state is a dataclass (not frozen: steps and `reset_streams` update it in place); its fields are
  tensors with the batch as dimension 0, host-side Python ints (step counters), nested states, tuples
  of nested states, or None;
- counters saturate: once an operator is past its warm-up they only cycle through its stride phase,
  so two streams in the same phase have equal counters and can be stacked;
- ring-buffer write positions are tensors (per sample, shape (B,)) so that streams at different
  positions stack freely and a step never needs a host value;
- a state may add a host-side *position hint* next to such a tensor (a field declared with
  `position_hint("pos")`): the common write position when every stream of the batch is at the same
  one, None when they differ or are unknown. The tensor stays authoritative and is always kept up to
  date; with the hint a step can slice the ring instead of indexing it per stream (fewer, cheaper
  calls on a batch of one). `stack_states` keeps the hint when all streams share it and sets None
  otherwise, `reset_streams` sets None, `state_phase` ignores it (it never blocks stacking),
  select/split/clone/save/restore keep it (a missing hint in a saved state loads as None), and
  select/split restore it from CPU position tensors where the selected streams agree. While a
  CUDA graph is being captured a step ignores the hint and returns None in its place, so a graph
  never bakes in a position; `drop_position_hints` forces the tensor path by hand;
- a tensor field may be None in a fresh state when its shape is only known from the first frame
  (ring buffers); None then means "all zeros", so stacking a fresh state with a stepped one
  materialises zeros of the stepped one's shape.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor


_HINT_KEY = "costream_position_hint"
_RING_KEY = "costream_position_ring"


def position_hint(tensor_field: str, default: int | None = None, ring: str | None = None) -> Any:
    """A dataclass field holding the host-side hint of the position tensor `tensor_field` (see above).

    `ring` names the ring-buffer field (B, L, ...) that the position indexes along dim 1, read only
    relative to the position: then `align_positions` may rotate it to another slot."""
    metadata = {_HINT_KEY: tensor_field}
    if ring is not None:
        metadata[_RING_KEY] = ring
    return dataclasses.field(default=default, metadata=metadata)


def is_position_hint(field: dataclasses.Field) -> bool:
    """Whether a dataclass field was declared with `position_hint`."""
    return _HINT_KEY in field.metadata


def drop_position_hints(state: Any) -> Any:
    """The state with every position hint set to None (shares the tensors): steps take the tensor path."""
    if isinstance(state, (tuple, list)):
        return type(state)(drop_position_hints(s) for s in state)
    if _is_state(state):
        changes = {f.name: None if is_position_hint(f) else drop_position_hints(getattr(state, f.name))
                   for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    return state


def position_hints(state: Any) -> list[tuple[int | None, Tensor]]:
    """(hint, position tensor) of every hinted field in a state, depth first (for checks and tests)."""
    out: list[tuple[int | None, Tensor]] = []
    if isinstance(state, (tuple, list)):
        for s in state:
            out += position_hints(s)
    elif _is_state(state):
        for f in dataclasses.fields(state):
            if is_position_hint(f):
                out.append((getattr(state, f.name), getattr(state, f.metadata[_HINT_KEY])))
            else:
                out += position_hints(getattr(state, f.name))
    return out


def _is_state(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _map_fields(state: Any, fn_tensor: Callable[[Tensor], Any], path: str = "state") -> Any:
    if state is None or isinstance(state, (int, float, bool, str)):
        return state
    if isinstance(state, Tensor):
        return fn_tensor(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_fields(s, fn_tensor, f"{path}[{i}]") for i, s in enumerate(state))
    if _is_state(state):
        changes = {
            f.name: _map_fields(getattr(state, f.name), fn_tensor, f"{path}.{f.name}")
            for f in dataclasses.fields(state)
        }
        return dataclasses.replace(state, **changes)
    raise TypeError(f"{path}: unsupported state field type {type(state).__name__}")


def map_state_tensors(state: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """A state of the same structure with `fn` applied to each of its tensors (host values kept)."""
    return _map_fields(state, fn)


def batch_size_of(state: Any) -> int | None:
    """The batch size of a state (first dim of its first tensor), or None for a stateless one."""
    found: list[int] = []

    def visit(t: Tensor) -> Tensor:
        found.append(t.shape[0])
        return t

    _map_fields(state, visit)
    return found[0] if found else None


def state_nbytes(state: Any) -> int:
    """Bytes held by the tensors of a state (memory per stream for a batch-1 state)."""
    total = [0]

    def visit(t: Tensor) -> Tensor:
        total[0] += t.numel() * t.element_size()
        return t

    _map_fields(state, visit)
    return total[0]


def stack_states(states: Sequence[Any]) -> Any:
    """One state for a batch made of several streams' states (concatenated along dim 0)."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    return _stack(list(states), "state")


def _stack(items: list[Any], path: str) -> Any:
    first = items[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        out = batch_like(first, sum(item.shape[0] for item in items))
        start = 0
        for item in items:  # (torch.cat would lay out a ring channels-last in dim 2 row-major)
            out.narrow(0, start, item.shape[0]).copy_(item)
            start += item.shape[0]
        return out
    if isinstance(first, (int, float, bool, str)):
        if any(item != first for item in items[1:]):
            raise ValueError(
                f"cannot stack states: {path} differs between streams ({[i for i in items]}); "
                "their streams are at different warm-up or stride phases. Step them separately, "
                "or group streams by `state_phase(state)` before stacking."
            )
        return first
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([it[i] for it in items], f"{path}[{i}]") for i in range(len(first)))
    if _is_state(first):
        fields = {}
        for f in dataclasses.fields(first):
            values = [getattr(it, f.name) for it in items]
            if is_position_hint(f):  # kept only when every stream is at the same position
                first_hint = values[0]
                fields[f.name] = first_hint if all(v is not None and v == first_hint for v in values) else None
                continue
            if any(v is None for v in values) and any(isinstance(v, Tensor) for v in values):
                values = _zeros_for_missing(items, values, f"{path}.{f.name}")
            fields[f.name] = _stack(values, f"{path}.{f.name}")
        return dataclasses.replace(first, **fields)
    raise TypeError(f"{path}: unsupported state field type {type(first).__name__}")


def _zeros_for_missing(items: list[Any], values: list[Any], path: str) -> list[Any]:
    """Replace None (a lazily allocated, all-zero buffer) by zeros shaped like the allocated ones."""
    ref = next(v for v in values if isinstance(v, Tensor))
    out = []
    for item, value in zip(items, values):
        if value is None:
            batch = batch_size_of(item)
            if batch is None:
                raise ValueError(f"cannot stack states: {path} is unset and its state has no batch size")
            value = batch_like(ref, batch).zero_()
        out.append(value)
    return out


def select_streams(state: Any, index: Sequence[int] | Tensor) -> Any:
    """The state of the batch members at `index` (a new batch, tensors copied).

    A position hint missing from `state` (its streams were at different positions) is restored
    where the selected streams share a position held in host memory (CPU tensors; reading a device
    tensor would synchronise it), so a stream split off a mixed batch steps on the fast path again.
    """
    idx = torch.as_tensor(index, dtype=torch.long)
    on_device: dict[torch.device, Tensor] = {}  # the index moved to each device once, not per tensor

    def take(t: Tensor) -> Tensor:
        index_here = on_device.get(t.device)
        if index_here is None:
            index_here = on_device[t.device] = idx.to(t.device)
        # Advanced indexing keeps each tensor's memory layout (index_select returns row-major copies):
        # a channels-last ring stays channels-last, so the selected streams keep the fast paths.
        return t[index_here]

    return _restore_hints(_map_fields(state, take))


def _restore_hints(state: Any) -> Any:
    """The state with missing hints set from CPU position tensors whose entries agree (a new state
    object where a hint changes; nothing is mutated)."""
    if isinstance(state, (tuple, list)):
        return type(state)(_restore_hints(s) for s in state)
    if not _is_state(state):
        return state
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if not is_position_hint(f):
            restored = _restore_hints(value)
            if restored is not value:
                changes[f.name] = restored
            continue
        pos = getattr(state, f.metadata[_HINT_KEY])
        if value is None and isinstance(pos, Tensor) and pos.device.type == "cpu" and pos.numel() > 0:
            positions = set(pos.tolist())
            if len(positions) == 1:
                changes[f.name] = positions.pop()
    return dataclasses.replace(state, **changes) if changes else state


def align_positions(states: Sequence[Any]) -> list[Any]:
    """The states with each ring rotated to the write position of the first state's ring, so that
    they stack with a common position hint (the fast slice path) instead of per-stream indexing.

    Streams that started at different times sit at different slots of their rings; a ring is read
    relative to its position, so rotating it (and moving the position with it) changes no future
    output. Rings are rotated only where both positions are known on the host (hints); rotated rings
    are new tensors, the others are shared with the input. The inputs are left unchanged."""
    states = list(states)
    if len(states) < 2:
        return states
    return [states[0]] + [_align(s, states[0]) for s in states[1:]]


def _align(state: Any, ref: Any) -> Any:
    if isinstance(state, (tuple, list)):
        return type(state)(_align(s, r) for s, r in zip(state, ref))
    if not _is_state(state) or not _is_state(ref) or type(state) is not type(ref):
        return state
    changes: dict[str, Any] = {}
    handled: set[str] = set()
    for f in dataclasses.fields(state):
        ring_field = f.metadata.get(_RING_KEY)
        if ring_field is None:
            continue
        pos_field = f.metadata[_HINT_KEY]
        handled.update((f.name, pos_field, ring_field))
        mine, target = getattr(state, f.name), getattr(ref, f.name)
        if mine is None or target is None or mine == target:
            continue
        ring, pos = getattr(state, ring_field), getattr(state, pos_field)
        if ring is not None:  # (None: all zeros, the same at every slot)
            changes[ring_field] = _roll_slots(ring, target - mine)  # slot `mine` -> `target`
        changes[pos_field] = torch.full_like(pos, target)
        changes[f.name] = target
    for f in dataclasses.fields(state):
        if f.name not in handled:
            value = getattr(state, f.name)
            aligned = _align(value, getattr(ref, f.name))
            if aligned is not value:
                changes[f.name] = aligned
    return dataclasses.replace(state, **changes) if changes else state


def _roll_slots(ring: Tensor, shift: int) -> Tensor:
    """`torch.roll(ring, shift, dims=1)` in the ring's own memory layout (roll returns row-major)."""
    length = ring.shape[1]
    shift %= length
    out = torch.empty_like(ring)
    out.narrow(1, shift, length - shift).copy_(ring.narrow(1, 0, length - shift))
    out.narrow(1, 0, shift).copy_(ring.narrow(1, length - shift, shift))
    return out


def batch_like(ref: Tensor, batch: int) -> Tensor:
    """An uninitialised tensor of `batch` samples shaped and laid out like one sample of `ref`.

    States keep some tensors in layouts that torch's memory formats do not name (a ring buffer
    (B, L, C, *S) with the channels innermost); `torch.cat`, `new_zeros` and `roll` would return
    them row-major, and the steps would leave their fast paths."""
    # (the layout of one sample, worked out on the meta device: nothing is allocated for it)
    sample = torch.empty_like(ref[0], device="meta") if ref.shape[0] else ref.new_empty(ref.shape[1:], device="meta")
    return ref.new_empty_strided((batch,) + tuple(ref.shape[1:]), (max(sample.numel(), 1),) + sample.stride())


def split_state(state: Any) -> list[Any]:
    """One state per batch member."""
    n = batch_size_of(state)
    if n is None:
        return [state]
    return [select_streams(state, [i]) for i in range(n)]


def state_phase(state: Any) -> tuple:
    """The host-side counters of a state: states with equal phases can be stacked."""
    out: list[Any] = []

    def walk(s: Any) -> None:
        if isinstance(s, (int, float, bool, str)):
            out.append(s)
        elif isinstance(s, (tuple, list)):
            for item in s:
                walk(item)
        elif _is_state(s):
            for f in dataclasses.fields(s):
                if not is_position_hint(f):
                    walk(getattr(s, f.name))

    walk(state)
    return tuple(out)


def clone_state(state: Any) -> Any:
    """A deep copy that shares no storage with `state` (a snapshot to restore later)."""
    return _map_fields(copy.copy(state), lambda t: t.clone())


def state_to(state: Any, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Any:
    """Move a state to a device and/or cast its floating tensors."""

    def move(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

    return _map_fields(state, move)


def state_to_dict(state: Any) -> Any:
    """A nested dict/list of tensors and ints that `torch.save` stores without pickling classes."""
    if state is None or isinstance(state, (int, float, bool, str, Tensor)):
        return state.detach().clone() if isinstance(state, Tensor) else state
    if isinstance(state, (tuple, list)):
        return [state_to_dict(s) for s in state]
    if _is_state(state):
        return {f.name: state_to_dict(getattr(state, f.name)) for f in dataclasses.fields(state)}
    raise TypeError(f"unsupported state field type {type(state).__name__}")


def state_from_dict(template: Any, data: Any, path: str = "state") -> Any:
    """Rebuild a state shaped like `template` (e.g. `module.init_state(...)`) from `state_to_dict`."""
    if template is None or isinstance(template, (int, float, bool, str)):
        return data
    if isinstance(template, Tensor):
        if not isinstance(data, Tensor):
            raise ValueError(f"{path}: expected a tensor in the saved state, found {type(data).__name__}")
        return data.to(template.device)
    if isinstance(template, (tuple, list)):
        if len(template) != len(data):
            raise ValueError(f"{path}: saved state has {len(data)} entries, the module expects {len(template)}")
        return type(template)(state_from_dict(t, d, f"{path}[{i}]") for i, (t, d) in enumerate(zip(template, data)))
    if _is_state(template):
        names = [f.name for f in dataclasses.fields(template)]
        hints = {f.name for f in dataclasses.fields(template) if is_position_hint(f)}
        data = {**{n: None for n in hints}, **data}  # saved before hints existed: the tensor path
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"{path}: saved state lacks fields {missing}; was it saved from another module?")
        return dataclasses.replace(
            template, **{n: state_from_dict(getattr(template, n), data[n], f"{path}.{n}") for n in names}
        )
    raise TypeError(f"{path}: unsupported state field type {type(template).__name__}")


def drop_streams(state: Any, index: Sequence[int]) -> Any:
    """The state without the batch members at `index` (evict finished streams)."""
    n = batch_size_of(state)
    if n is None:
        return state
    gone = {int(i) % n for i in index}
    return select_streams(state, [i for i in range(n) if i not in gone])


def reset_streams(state: Any, index: Sequence[int], fresh: Any = None) -> Any:
    """Restart the streams at `index` in place: their history is replaced by a fresh state's.

    `fresh` is `module.init_state(len(index), ...)` (tensor fields of the fresh state are copied in;
    fields it leaves unset, i.e. lazily allocated ring buffers, are zeroed; position hints become
    None, since the restarted streams' positions now differ from the others'). Host counters are shared
    by the batch and stay as they are: the reset streams' next `delay` outputs are warm-up values
    computed on the stream-start zero padding (ignore them), and with a temporal stride their output
    grid follows the batch's phase. For an exact restart, split the stream off and give it
    `module.init_state(1)`.
    """
    idx = torch.as_tensor(list(index), dtype=torch.long)
    _reset(state, fresh, idx, "state")
    return state


def _reset(state: Any, fresh: Any, idx: Tensor, path: str) -> None:
    if isinstance(state, Tensor):
        rows = idx.to(state.device)
        if isinstance(fresh, Tensor):
            state.index_copy_(0, rows, fresh.to(device=state.device, dtype=state.dtype))
        else:
            state.index_fill_(0, rows, 0)
    elif isinstance(state, (tuple, list)):
        for i, s in enumerate(state):
            _reset(s, None if fresh is None else fresh[i], idx, f"{path}[{i}]")
    elif _is_state(state):
        for f in dataclasses.fields(state):
            if is_position_hint(f):
                if getattr(state, f.name) is not None:
                    _set_host_field(state, f.name, None)
                continue
            _reset(getattr(state, f.name), None if fresh is None else getattr(fresh, f.name), idx, f"{path}.{f.name}")


def _set_host_field(state: Any, name: str, value: Any) -> None:
    """Update a host-side field of a state in place, as steps and `reset_streams` do with its tensors."""
    params = getattr(type(state), "__dataclass_params__", None)
    if params is not None and params.frozen:
        raise TypeError(
            f"{type(state).__name__} is a frozen dataclass, but operator states are updated in place "
            "(steps, reset_streams); declare it with @dataclass (not frozen=True)"
        )
    setattr(state, name, value)

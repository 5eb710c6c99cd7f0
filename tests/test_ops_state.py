"""Registry-driven contract tests for every continual operator, and the explicit state API."""
from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import operators as O
from op_registry import CASES
from operators.state import drop_position_hints, position_hints

TOL = dict(rtol=1e-5, atol=1e-5)


def _clip(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _fold(module, clip, state):
    outs = []
    for t in range(clip.shape[2]):
        y, state = module.step(clip[:, :, t], state)
        if y is not None:
            outs.append(y)
    return outs, state


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_operator_contract(case):
    ref, co, shape = case.make()
    clip = _clip(shape)
    batch, steps = shape[0], shape[2]
    with torch.no_grad():
        offline = co(clip)
        if ref is not None:
            torch.testing.assert_close(offline, ref(clip), rtol=0, atol=0)
            assert list(co.state_dict()) == list(ref.state_dict())
        assert co.delay == co.receptive_field - 1 - co.temporal_padding

        # forward_steps(pad_end=True) == forward
        co.reset_state()
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), offline, **TOL)

        # folded explicit step == offline after `delay`, None before, one output per stride
        state = co.init_state(batch)
        outs = []
        for t in range(steps):
            y, state = co.step(clip[:, :, t], state)
            if t < co.delay:
                assert y is None, f"output before delay at step {t}"
            if y is not None:
                outs.append(y)
        expected = 0 if steps <= co.delay else (steps - 1 - co.delay) // co.temporal_stride + 1
        assert len(outs) == expected
        if outs:
            torch.testing.assert_close(torch.stack(outs, 2), offline[:, :, : len(outs)], **TOL)

        # reset: a used internal state, reset, gives the fresh result again
        co.reset_state()
        co.forward_steps(_clip(shape, seed=5))
        co.reset_state()
        torch.testing.assert_close(co.forward_steps(clip, pad_end=True), offline, **TOL)

        # a batch of streams == each stream alone
        for b in range(batch):
            single, _ = _fold(co, clip[b : b + 1], co.init_state(1))
            for y_batch, y_single in zip(outs, single):
                torch.testing.assert_close(y_batch[b : b + 1], y_single, **TOL)

        # save/restore and split/stack mid-stream give identical continuations
        half = steps // 2
        _, state = _fold(co, clip[:, :, :half], co.init_state(batch))
        buf = io.BytesIO()
        torch.save(O.state_to_dict(state), buf)
        buf.seek(0)
        restored = O.state_from_dict(co.init_state(batch), torch.load(buf))
        restacked = O.stack_states(O.split_state(O.clone_state(state)))
        cont, _ = _fold(co, clip[:, :, half:], state)
        cont_restored, _ = _fold(co, clip[:, :, half:], restored)
        cont_restacked, _ = _fold(co, clip[:, :, half:], restacked)
        assert len(cont) == len(cont_restored) == len(cont_restacked)
        for a, b, c in zip(cont, cont_restored, cont_restacked):
            assert torch.equal(a, b) and torch.equal(a, c)


def test_batch_size_change_warns_and_restarts():
    co = O.Conv3d(2, 3, 3, padding=1)
    co.forward_steps(torch.randn(2, 2, 4, 3, 3))
    with pytest.warns(UserWarning, match="batch size changed from 2 to 3"):
        y = co.forward_step(torch.randn(3, 2, 3, 3))
    assert y is None  # a new stream: warming up again


def test_get_set_state_snapshot():
    co = O.Conv1d(2, 2, 3, padding=1)
    clip = torch.randn(1, 2, 8)
    co.forward_steps(clip[:, :, :4])
    snap = co.get_state()
    a = co.forward_steps(clip[:, :, 4:])
    co.set_state(snap)
    b = co.forward_steps(clip[:, :, 4:])
    assert torch.equal(a, b)


def test_stack_fresh_with_stepped_state_materialises_zeros():
    # delay 0 (padding = kernel - 1): a fresh state and a stepped one share the counter phase
    co = O.Conv1d(2, 2, 3, padding=2)
    clip = torch.randn(2, 2, 6)
    _, s0 = _fold(co, clip[:1], co.init_state(1))
    fresh = co.init_state(1)
    both = O.stack_states([s0, fresh])
    y, _ = co.step(clip[1:, :, 0].expand(2, -1).contiguous(), both)
    alone, _ = co.step(clip[1:, :, 0], co.init_state(1))
    torch.testing.assert_close(y[1:], alone, **TOL)


def test_stack_states_at_different_phases_explains():
    co = O.Conv1d(2, 2, 3, padding=1)
    _, s1 = _fold(co, torch.randn(1, 2, 1), co.init_state(1))
    with pytest.raises(ValueError, match="different warm-up or stride phases"):
        O.stack_states([s1, co.init_state(1)])


@pytest.mark.parametrize(
    "make",
    [
        lambda: O.Conv3d(2, 3, 3, padding=1),
        lambda: O.MaxPool3d(3, stride=1, padding=1),
        lambda: O.Sequential(O.Conv3d(2, 3, 3, padding=1), O.ReLU(), O.Conv3d(3, 2, 3, padding=0)),
    ],
)
def test_reset_one_stream_in_a_batch(make):
    co = make().eval()
    rf = co.receptive_field
    old, new = torch.randn(3, 2, 6, 4, 4), torch.randn(1, 2, 8, 4, 4)
    _, state = _fold(co, old, co.init_state(3))
    state = O.reset_streams(state, [1], co.init_state(1))
    batch_new = torch.cat([old[:1, :, :1].expand(-1, -1, 8, -1, -1), new, old[2:, :, :1].expand(-1, -1, 8, -1, -1)])
    fresh_state = co.init_state(1)
    for t in range(8):
        y, state = co.step(batch_new[:, :, t], state)
        y1, fresh_state = co.step(new[:, :, t], fresh_state)
        if t >= rf - 1:  # past the restarted stream's warm-up its outputs are those of a fresh stream
            torch.testing.assert_close(y[1:2], y1, **TOL)


def test_drop_streams_keeps_the_others():
    co = O.Conv1d(2, 2, 3, padding=1)
    clip = torch.randn(3, 2, 5)
    _, state = _fold(co, clip, co.init_state(3))
    kept = O.drop_streams(O.clone_state(state), [1])
    y_all, _ = co.step(clip[:, :, 0], state)
    y_kept, _ = co.step(clip[[0, 2], :, 0], kept)
    torch.testing.assert_close(y_kept, y_all[[0, 2]], **TOL)


# Host-side ring positions (position hints) ---------------------------------------------------------
def _hints_match_tensors(state) -> bool:
    return all(hint is None or bool((pos == hint).all()) for hint, pos in position_hints(state))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_position_hint_and_tensor_path_agree(case):
    _, co, shape = case.make()
    clip = _clip(shape, seed=3)
    hinted = co.init_state(shape[0])
    plain = drop_position_hints(co.init_state(shape[0]))
    with torch.no_grad():
        for t in range(shape[2]):
            y_h, hinted = co.step(clip[:, :, t], hinted)
            y_p, plain = co.step(clip[:, :, t], plain)
            assert (y_h is None) == (y_p is None)
            if y_h is not None:
                for a, b in zip(y_h if isinstance(y_h, tuple) else (y_h,), y_p if isinstance(y_p, tuple) else (y_p,)):
                    torch.testing.assert_close(a, b, **TOL)
            assert _hints_match_tensors(hinted)  # the tensor is kept in step on the hint path
            assert all(hint is None for hint, _ in position_hints(plain))  # no hint is made up
    assert position_hints(hinted) == [] or any(h is not None for h, _ in position_hints(hinted))


def _conv_streams(lengths, seed=0):
    """States of a delay-0 conv (temporal padding k-1) after `lengths` frames each: equal phases,
    ring positions length mod 3."""
    co = O.Conv3d(2, 3, 3, padding=(2, 1, 1)).eval()
    gen = torch.Generator().manual_seed(seed)
    states, clips = [], []
    with torch.no_grad():
        for n in lengths:
            clip = torch.randn(1, 2, n, 4, 4, generator=gen)
            state = co.init_state(1)
            for t in range(n):
                _, state = co.step(clip[:, :, t], state)
            states.append(state)
            clips.append(clip)
    return co, states


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=4))
def test_stacking_keeps_a_common_position_and_drops_differing_ones(lengths):
    co, states = _conv_streams(lengths)
    stacked = O.stack_states([O.clone_state(s) for s in states])
    positions = {n % 3 for n in lengths}
    expected = positions.pop() if len(positions) == 1 else None
    assert stacked.at == expected
    assert O.state_phase(stacked) == O.state_phase(states[0])  # the hint never blocks stacking
    x = torch.randn(len(lengths), 2, 4, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        y, after = co.step(x, stacked)
        for i, s in enumerate(states):
            alone, _ = co.step(x[i : i + 1], O.clone_state(s))
            torch.testing.assert_close(y[i : i + 1], alone, **TOL)
    assert _hints_match_tensors(after)
    for part in O.split_state(after):  # a stream split off (CPU) has its position as the hint again
        assert part.at == int(part.pos)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_streams_started_at_different_times_align_to_one_position(case):
    """align_positions rotates each stream's rings to the first stream's slot: the stack then keeps a
    common hint, and every later output equals each stream stepped alone without rotation."""
    _, co, shape = case.make()
    lengths = (3, 4, 5, 7, 8, 11)
    extra = 6
    clip = _clip((len(lengths), shape[1], max(lengths) + extra, *shape[3:]), seed=5)
    with torch.no_grad():
        states = []
        for i, n in enumerate(lengths):  # stream i has seen n frames
            state = co.init_state(1)
            for t in range(n):
                _, state = co.step(clip[i : i + 1, :, t], state)
            states.append(state)
        by_phase: dict = {}
        for i, state in enumerate(states):
            by_phase.setdefault(O.state_phase(state), []).append(i)
        members = max(by_phase.values(), key=len)  # streams that may share a batch
        picked = [O.clone_state(states[i]) for i in members]
        aligned = O.align_positions(picked)
        for before, after in zip(picked, [O.clone_state(s) for s in picked]):  # inputs untouched
            for (h0, p0), (h1, p1) in zip(position_hints(before), position_hints(after)):
                assert h0 == h1 and torch.equal(p0, p1)
        stacked = O.stack_states(aligned)
        hints = position_hints(stacked)
        if len(members) > 1 and hints:
            assert all(h is not None for h, _ in hints), "aligned streams must keep a common position"
        assert _hints_match_tensors(stacked)
        alone = [states[i] for i in members]
        batched = stacked
        for k in range(extra):
            x = torch.cat([clip[i : i + 1, :, lengths[i] + k] for i in members])
            y, batched = co.step(x, batched)
            for j, i in enumerate(members):
                y_alone, alone[j] = co.step(clip[i : i + 1, :, lengths[i] + k], alone[j])
                assert (y is None) == (y_alone is None)
                if y is not None:
                    ys = y if isinstance(y, tuple) else (y,)
                    ya = y_alone if isinstance(y_alone, tuple) else (y_alone,)
                    for a, b in zip(ys, ya):
                        torch.testing.assert_close(a[j : j + 1], b, **TOL)


def test_reset_streams_drops_hints_and_old_saves_load_without_them():
    co, states = _conv_streams([4, 4, 4])
    stacked = O.stack_states(states)
    assert stacked.at == 1
    saved = O.state_to_dict(stacked)
    del saved["at"]  # a state saved before hints existed
    restored = O.state_from_dict(co.init_state(3), saved)
    assert restored.at is None and torch.equal(restored.pos, stacked.pos)
    O.reset_streams(stacked, [1], co.init_state(1))
    assert stacked.at is None and stacked.pos.tolist() == [1, 0, 1]
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        y, _ = co.step(x, stacked)
        y_restored, _ = co.step(x, restored)
    torch.testing.assert_close(y[[0, 2]], y_restored[[0, 2]], rtol=0, atol=0)


def _hinted_net():
    torch.manual_seed(0)
    return O.Sequential(
        O.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4), O.ReLU(),
        O.Conv3d(4, 4, 3, padding=1, groups=4), O.Residual(O.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0))),
        O.MaxPool3d((2, 1, 1), stride=1), O.AvgPool3d((3, 1, 1), stride=1),
    ).eval()


def test_graph_capture_takes_the_tensor_path(monkeypatch):
    # StepGraph captures a step on a CUDA stream; simulate the capture flag on CPU: the step must not
    # use (and so bake in) the host position, and must return no hint, since every replay continues
    # from the state recorded at capture
    import operators.delay as delay

    net = _hinted_net()
    clip = torch.randn(2, 2, 12, 3, 3)
    reference = net.init_state(2)
    state = net.init_state(2)
    with torch.no_grad():
        for t in range(clip.shape[2]):
            monkeypatch.setattr(delay, "graph_capturing", lambda like: False)
            y_ref, reference = net.step(clip[:, :, t], reference)
            capturing = t in (5, 6)
            monkeypatch.setattr(delay, "graph_capturing", lambda like: capturing)
            y, state = net.step(clip[:, :, t], state)
            if capturing:
                assert position_hints(state) and all(hint is None for hint, _ in position_hints(state))
            assert _hints_match_tensors(state)
            assert (y is None) == (y_ref is None)
            if y is not None:
                torch.testing.assert_close(y, y_ref, **TOL)
        assert all(hint is not None for hint, _ in position_hints(reference))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replays_hold_no_host_position():
    net = _hinted_net().cuda()
    clip = torch.randn(2, 2, 16, 3, 3, device="cuda")
    graph = O.capture_step(net, clip[:, :, 0])
    state = net.init_state(2, device="cuda")
    with torch.no_grad():
        for t in range(clip.shape[2]):  # several turns of every ring after the capture
            y_graph = graph(clip[:, :, t])
            y_eager, state = net.step(clip[:, :, t], state)
            if y_eager is not None:
                torch.testing.assert_close(y_graph, y_eager, **TOL)
    assert graph.graphed
    assert all(hint is None for hint, _ in position_hints(graph.state))
    assert _hints_match_tensors(state)

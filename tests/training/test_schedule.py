"""RDrop follows rdrop.training.schedule.rdrop_step of the optimizer step, also under
accumulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop import RDrop
from rdrop.training.schedule import rdrop_step


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 4))


def _micro_batches(n: int):
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 4, (4,), generator=g))
            for _ in range(n)]


SCHEDULE = {"alpha": 2.0, "every_k_steps": 2, "alpha_warmup_steps": 3}


def _check_against_rdrop_step(wrapped: RDrop, out, x, y, optimizer_step: int) -> None:
    expected = rdrop_step(optimizer_step, **SCHEDULE)
    if expected.active:
        assert out.consistency_loss.item() > 0  # two passes with different masks
        torch.testing.assert_close(out.loss, out.task_loss + expected.alpha * out.consistency_loss)
    else:  # a plain single-pass step: one CE term, on the first pass's logits
        assert out.consistency_loss.item() == 0.0
        torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))


@pytest.mark.parametrize("how", ["constructor", "attach"])
def test_every_micro_batch_of_an_accumulated_step_gets_the_same_decision(how):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    if how == "constructor":
        wrapped = RDrop(net, **SCHEDULE, optimizer=opt)
    else:
        wrapped = RDrop(net, **SCHEDULE)
        wrapped.attach_optimizer(opt)
    accumulation = 3
    for optimizer_step in range(6):
        for x, y in _micro_batches(accumulation):
            assert wrapped.num_steps == optimizer_step
            assert wrapped.current_alpha() == rdrop_step(optimizer_step, **SCHEDULE).alpha
            out = wrapped(x, target=y)
            _check_against_rdrop_step(wrapped, out, x, y, optimizer_step)
            (out.loss / accumulation).backward()
        opt.step()
        opt.zero_grad()
    assert wrapped.num_steps == 6


def test_set_step_drives_the_schedule_and_calls_do_not_advance_it():
    wrapped = RDrop(_net(), **SCHEDULE)
    for optimizer_step in (0, 1, 1, 2, 5):
        wrapped.set_step(optimizer_step)
        for x, y in _micro_batches(2):
            _check_against_rdrop_step(wrapped, wrapped(x, target=y), x, y, optimizer_step)
        assert wrapped.num_steps == optimizer_step
    with pytest.raises(ValueError, match="optimizer_step"):
        wrapped.set_step(-1)


def test_without_an_optimizer_each_training_call_is_a_step():
    wrapped = RDrop(_net(), **SCHEDULE)
    for call, (x, y) in enumerate(_micro_batches(5)):
        _check_against_rdrop_step(wrapped, wrapped(x, target=y), x, y, call)
    assert wrapped.num_steps == 5


def test_attach_refuses_a_non_optimizer_and_a_second_attach_replaces_the_first():
    wrapped = RDrop(_net(), **SCHEDULE)
    with pytest.raises(TypeError, match="set_step"):
        wrapped.attach_optimizer(object())  # type: ignore[arg-type]
    first = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    second = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    wrapped.attach_optimizer(first)
    wrapped.attach_optimizer(second)
    first.step()
    assert wrapped.num_steps == 0
    second.step()
    assert wrapped.num_steps == 1

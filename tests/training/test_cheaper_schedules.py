"""second_pass_fraction, start_step and the automatic start through rdrop.RDrop (the one step):
the passes the model sees, the loss and gradients against the literal float64 formula, and the
composition with stop_gradient, every_k_steps and alpha_warmup_steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop import AutoStart, RDrop
from rdrop.losses.subset import subset_count, subset_size
from rdrop.training.schedule import rdrop_step

from reference import reference_subset_loss


def _net(p: float = 0.3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(p), nn.Linear(16, 5))


def _data(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)
    y[2] = -100
    return x, y


def _rows_seen(net: nn.Module) -> list[tuple[int, bool]]:
    """(rows, grad enabled) of every training-mode forward (the once-only input check runs in
    eval mode and is left out)."""
    seen: list[tuple[int, bool]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            seen.append((inputs[0].shape[0], torch.is_grad_enabled()))

    net.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize(("mode", "stop_gradient"), [("concat", False), ("twice", False),
                                                     ("concat", True)])
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_loss_and_gradients_match_the_formula(mode, stop_gradient, fraction):
    x, y = _data()
    n = subset_size(len(x), fraction)
    wrapped = RDrop(_net(), alpha=2.0, mode=mode, stop_gradient=stop_gradient,
                    second_pass_fraction=fraction, label_smoothing=0.1)
    seen = _rows_seen(wrapped.model)
    torch.manual_seed(7)
    out = wrapped(x, target=y)
    out.loss.backward()
    # Replay the forwards the step ran, from the same random stream, by hand.
    replay = copy.deepcopy(wrapped.model)
    replay.zero_grad()
    torch.manual_seed(7)
    if mode == "concat" and not stop_gradient:
        assert seen == [(len(x) + n, True)]  # one forward over [x; x[:n]]
        both = replay(torch.cat([x, x[:n]]))
        l1, l2 = both[: len(x)], both[len(x):]
    else:
        assert seen == [(len(x), True), (n, not stop_gradient)]
        l1 = replay(x)
        with torch.set_grad_enabled(not stop_gradient):
            l2 = replay(x[:n])
    loss, task, cons = reference_subset_loss(l1, l2, y, range(n), alpha=2.0, label_smoothing=0.1,
                                             stop_gradient=stop_gradient)
    loss.backward()
    torch.testing.assert_close(out.loss.double(), loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.consistency_loss.double(), cons.detach(), rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(out.task_loss.double(), task.detach(), rtol=1e-5, atol=1e-6)
    assert out.consistency_loss.item() > 0 and out.logits.shape == (len(x), 5)
    for p, q in zip(wrapped.model.parameters(), replay.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_fraction_one_is_todays_step_exactly():
    x, y = _data()
    a, b = RDrop(_net(), alpha=1.5), RDrop(_net(), alpha=1.5, second_pass_fraction=1.0)
    torch.manual_seed(3)
    la = a(x, target=y).loss
    torch.manual_seed(3)
    lb = b(x, target=y).loss
    assert torch.equal(la, lb)


def test_without_dropout_the_gradient_is_mean_ce_over_b_plus_mean_ce_over_s():
    x, y = _data(10)
    net = _net(p=0.0)
    wrapped = RDrop(net, alpha=5.0, second_pass_fraction=0.3, check_dropout=False)
    out = wrapped(x, target=y)
    ours = torch.autograd.grad(out.loss, list(net.parameters()))
    n = subset_size(10, 0.3)
    plain = F.cross_entropy(net(x), y) + F.cross_entropy(net(x[:n]), y[:n])
    ref = torch.autograd.grad(plain, list(net.parameters()))
    for g, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_with_both_counts_is_the_full_batch_formula():
    # Dropout off, so the micro-batches' passes are exactly the full batch's rows; S is the
    # union of each micro-batch's first ceil(r * b) rows.
    x, y = _data(8, seed=5)
    y[5] = -100
    net = _net(p=0.0).double()
    x = x.double()
    wrapped = RDrop(net, alpha=1.0, second_pass_fraction=0.5, check_dropout=False)
    micro = [(x[:4], y[:4]), (x[4:], y[4:])]
    n_b = int((y != -100).sum())
    n_s = sum(int(subset_count(t, 0.5)) for _, t in micro)
    for xb, yb in micro:
        wrapped(xb, target=yb, num_items_in_batch=n_b, num_items_in_subset=n_s).loss.backward()
    ours = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    full = net(x)
    loss, _, _ = reference_subset_loss(full, full[[0, 1, 4, 5]], y, [0, 1, 4, 5], alpha=1.0)
    loss.backward()
    for g, p in zip(ours, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_start_step_every_k_and_warmup_compose_with_the_fraction(stop_gradient):
    schedule = {"alpha": 3.0, "start_step": 3, "every_k_steps": 2, "alpha_warmup_steps": 3}
    net = _net()
    wrapped = RDrop(net, **schedule, stop_gradient=stop_gradient, second_pass_fraction=0.25)
    seen = _rows_seen(net)
    x, y = _data()
    n = subset_size(len(x), 0.25)
    for s in range(9):
        wrapped.set_step(s)
        seen.clear()
        out = wrapped(x, target=y)
        decision = rdrop_step(s, **schedule)
        if not decision.active:
            assert seen == [(len(x), True)] and out.consistency_loss.item() == 0.0
            torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))
        else:
            expect = [(len(x), True), (n, False)] if stop_gradient else [(len(x) + n, True)]
            assert seen == expect
            torch.testing.assert_close(out.loss,
                                       out.task_loss + decision.alpha * out.consistency_loss)
    assert [rdrop_step(s, **schedule).alpha for s in (3, 5, 7)] == [1.0, 3.0, 3.0]


def test_automatic_start_switches_on_and_resumes_from_state_dict():
    auto = AutoStart(patience=2)
    net = _net()
    wrapped = RDrop(net, alpha=1.0, start_step=auto)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.0)
    wrapped.attach_optimizer(opt)
    seen = _rows_seen(net)
    x, y = _data()
    losses = iter([3.0, 2.0, 2.5, 2.4])  # best at the 2nd evaluation, no better twice
    for step in range(6):
        seen.clear()
        wrapped(x, target=y).loss.backward()
        opt.step()
        assert seen[0][0] == (len(x) if step < 4 else 2 * len(x))
        if step < 4:
            auto.update(next(losses), step=wrapped.num_steps)
    assert auto.start_step == 4
    restored = RDrop(_net(), alpha=1.0, start_step=AutoStart(patience=2))
    restored.load_state_dict(wrapped.state_dict())
    assert restored.start_step.start_step == 4 and restored.num_steps == 6
    assert restored.schedule().active


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="num_passes=2"):
        RDrop(_net(), num_passes=3, second_pass_fraction=0.5)
    with pytest.raises(ValueError, match="reduction='mean'"):
        RDrop(_net(), reduction="sum", second_pass_fraction=0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        RDrop(_net(), second_pass_fraction=0.0)
    with pytest.raises(ValueError, match="start_step"):
        RDrop(_net(), start_step=-1)
    x, y = _data()
    with pytest.raises(ValueError, match="at least 2 rows"):
        RDrop(_net(), second_pass_fraction=0.5)(x[:1], target=y[:1])
    with pytest.raises(ValueError, match="together"):
        RDrop(_net(), second_pass_fraction=0.5)(x, target=y, num_items_in_batch=7)


def test_a_packed_batch_cannot_be_subset():
    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.drop = nn.Embedding(11, 4), nn.Dropout(0.3)

        def forward(self, input_ids, position_ids=None, cu_seq_lens_q=None, cu_seq_lens_k=None,
                    max_length_q=None, max_length_k=None):
            return self.drop(self.emb(input_ids))

    ids = torch.randint(0, 4, (1, 7))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    batch = {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3]]),
             "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 4, "max_length_k": 4}
    wrapped = RDrop(Packed(), second_pass_fraction=0.5, check_inputs=False)
    with pytest.raises(ValueError, match="packed batch"):
        wrapped(target=ids, **batch)

"""rdrop.losses.subset (second_pass_fraction) against its formula written out literally in
float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop import rdrop_loss
from rdrop.losses.subset import subset_count, subset_rdrop_loss, subset_size

from reference import reference_subset_loss


def _make(shape, n, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    b = torch.randn((n, *shape[1:]), generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y[torch.rand(shape[:-1], generator=g) < 0.3] = -100
    y.view(-1)[0] = 1
    return a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_(), y


TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", [(8, 5), (4, 6, 7)], ids=["rows", "tokens"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize(("alpha", "label_smoothing", "consistency", "stop_gradient"), [
    (1.0, 0.0, "kl", False), (3.0, 0.1, "kl", False), (0.7, 0.0, "js", False),
    (2.0, 0.1, "kl", True),
])
def test_values_and_gradients_match_the_literal_formula(dtype, shape, n, alpha, label_smoothing,
                                                        consistency, stop_gradient):
    a, b, y = _make(shape, n, dtype=dtype)
    kw = {"alpha": alpha, "label_smoothing": label_smoothing, "consistency": consistency}
    out = subset_rdrop_loss(a, b, y, stop_gradient=stop_gradient, **kw)
    ga, gb = torch.autograd.grad(out.loss, [a, b], allow_unused=True)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    loss, task, cons = reference_subset_loss(a64, b64, y, range(n), stop_gradient=stop_gradient,
                                             **kw)
    ra, rb = torch.autograd.grad(loss, [a64, b64], allow_unused=True)
    rtol, atol = TOL[dtype]
    for ours, ref in ((out.loss, loss), (out.task_loss, task), (out.consistency_loss, cons)):
        torch.testing.assert_close(ours.double(), ref.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(ga.double(), ra, rtol=10 * rtol, atol=atol)
    if stop_gradient:
        assert gb is None and rb is None  # the target pass gets no gradient
    else:
        torch.testing.assert_close(gb.double(), rb, rtol=10 * rtol, atol=atol)
    assert out.consistency_loss.item() > 0


@pytest.mark.parametrize("shape", [(8, 5), (3, 6, 7)], ids=["rows", "tokens"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_the_whole_batch_is_todays_rdrop_loss_exactly(shape, label_smoothing):
    a, b, y = _make(shape, shape[0], dtype=torch.float32)
    ours = subset_rdrop_loss(a, b, y, alpha=2.0, label_smoothing=label_smoothing)
    ga, gb = torch.autograd.grad(ours.loss, [a, b])
    today = rdrop_loss(a, b, y, alpha=2.0, label_smoothing=label_smoothing)
    ta, tb = torch.autograd.grad(today.loss, [a, b])
    for x, z in ((ours.loss, today.loss), (ours.task_loss, today.task_loss),
                 (ours.consistency_loss, today.consistency_loss), (ga, ta), (gb, tb)):
        assert torch.equal(x, z)
    # And the literal formula agrees with both at S = B.
    loss, _, _ = reference_subset_loss(a.double(), b.double(), y, range(shape[0]), alpha=2.0,
                                       label_smoothing=label_smoothing)
    torch.testing.assert_close(ours.loss.double(), loss, rtol=1e-5, atol=1e-6)


def test_mse_matches_the_literal_formula():
    g = torch.Generator().manual_seed(3)
    p1 = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    p2 = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    out = subset_rdrop_loss(p1, p2, y, alpha=0.5, consistency="mse")
    task = sum(((p1[i] - y[i]) ** 2).mean() for i in range(6)) / 6 + sum(
        ((p2[j] - y[j]) ** 2).mean() for j in range(2)) / 2
    cons = sum(((p1[j] - p2[j]) ** 2).mean() for j in range(2)) / 2
    ref = task + 0.5 * cons
    torch.testing.assert_close(out.loss, ref)
    g1 = torch.autograd.grad(out.loss, [p1, p2])
    g2 = torch.autograd.grad(ref, [p1, p2])
    for x, z in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, z)


def test_gradient_accumulation_with_both_counts_gives_the_full_batch_gradient():
    # Two micro-batches of 4 sequences, r = 0.5: each micro-batch's subset is its first 2 rows;
    # the full batch's S is the union of those. num_items_in_batch / num_items_in_subset are the
    # counts over the whole accumulated batch.
    r, micro = 0.5, 2
    parts = [_make((4, 5, 6), 2, seed=s) for s in (1, 2)]
    n_b = sum(int((y != -100).sum()) for _, _, y in parts)
    n_s = sum(int(subset_count(y, r)) for _, _, y in parts)
    grads = []
    for a, b, y in parts:
        assert b.shape[0] == subset_size(y.shape[0], r)
        out = subset_rdrop_loss(a, b, y, alpha=1.5, label_smoothing=0.1,
                                num_items_in_batch=torch.tensor(n_b),
                                num_items_in_subset=torch.tensor(n_s))
        grads.append(torch.autograd.grad(out.loss, [a, b]))
    # The full batch: 8 rows; S = rows 0, 1 (first micro-batch) and 4, 5 (second).
    a_full = torch.cat([p[0].detach() for p in parts]).requires_grad_()
    b_full = torch.cat([p[1].detach() for p in parts]).requires_grad_()
    y_full = torch.cat([p[2] for p in parts])
    loss, _, _ = reference_subset_loss(a_full, b_full, y_full, [0, 1, 4, 5], alpha=1.5,
                                       label_smoothing=0.1)
    ga, gb = torch.autograd.grad(loss, [a_full, b_full])
    torch.testing.assert_close(torch.cat([g[0] for g in grads]), ga, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.cat([g[1] for g in grads]), gb, rtol=1e-10, atol=1e-12)
    assert micro == len(parts)


def test_without_dropout_the_gradient_is_that_of_mean_ce_over_b_plus_mean_ce_over_s():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    n = subset_size(10, 0.3)
    out = subset_rdrop_loss(net(x), net(x[:n]), y, alpha=4.0)
    ours = torch.autograd.grad(out.loss, list(net.parameters()))
    plain = F.cross_entropy(net(x), y) + F.cross_entropy(net(x[:n]), y[:n])
    ref = torch.autograd.grad(plain, list(net.parameters()))
    assert n == 3 and out.consistency_loss.item() == 0.0
    for g, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_an_all_padding_subset_gives_zero_for_its_terms():
    a, b, y = _make((4, 5), 2)
    y[:2] = -100
    y[2:] = torch.tensor([0, 4])
    out = subset_rdrop_loss(a, b, y, alpha=1.0)
    assert out.consistency_loss.item() == 0.0
    torch.testing.assert_close(out.loss, F.cross_entropy(a, y))


def test_subset_size_rounds_up_and_refuses_one_row():
    assert [subset_size(16, r) for r in (0.25, 0.5, 1.0)] == [4, 8, 16]
    assert subset_size(30, 0.1) == 3 and subset_size(3, 0.01) == 1 and subset_size(7, 0.5) == 4
    assert subset_size(1, 1.0) == 1
    with pytest.raises(ValueError, match="at least 2 rows"):
        subset_size(1, 0.5)
    for bad in (0.0, 1.5, math.nan, -0.1):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            subset_size(8, bad)
    with pytest.raises(TypeError, match="float"):
        subset_size(8, True)  # type: ignore[arg-type]


def test_bad_inputs_are_refused_with_the_fix():
    a, b, y = _make((4, 5), 2)
    with pytest.raises(ValueError, match="first n rows"):
        subset_rdrop_loss(a[:1], b, y[:1], alpha=1.0)
    with pytest.raises(ValueError, match="together"):
        subset_rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=10)
    with pytest.raises(ValueError, match="cannot exceed"):
        subset_rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=2, num_items_in_subset=3)
    with pytest.raises(ValueError, match="num_items_in_subset must be >= 1"):
        subset_rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=2, num_items_in_subset=0)
    bad = y.clone()
    bad[0] = 7
    with pytest.raises(ValueError, match="outside"):
        subset_rdrop_loss(a, b, bad, alpha=1.0)
    nan = b.detach().clone()
    nan[1] = math.nan
    padded = y.clone()
    padded[1] = -100  # NaN logits at an ignored row of the subset: loss finite, gradient NaN
    with pytest.raises(FloatingPointError, match="do not count"):
        subset_rdrop_loss(a, nan, padded, alpha=1.0)

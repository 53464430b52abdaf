"""The plain statement of the loss (``rdrop.losses.plain_rdrop_loss``, a few lines of torch at the
top of the losses wing) is the paper's formula, and every path of the library computes it: the
public functions and module, the chunked kernel, the fused output layer, the subset loss at
``n = B``. Values and gradients in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rdrop import RDropLoss, multi_pass_rdrop_loss, rdrop_loss, subset_rdrop_loss
from rdrop.losses import plain_rdrop_loss
from rdrop.losses.fused_linear import fused_linear_rdrop_loss
from rdrop.losses.kernels.chunked import chunked_rdrop_sums

from reference import reference_rdrop_loss

ALPHA = 0.7
SHAPES = [(6, 5), (3, 4, 7), (2, 3, 2, 6)]  # a classifier, sequence logits, a weird extra dim


@pytest.fixture(autouse=True)
def _eager_kernels(monkeypatch):
    monkeypatch.setenv("RDROP_COMPILE", "never")  # the eager kernels: the same math, no compiler


def _inputs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    l1 = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    l2 = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    y.view(-1)[::3] = -100  # every third row is padding
    return l1, l2, y


def _value_and_grads(fn, l1, l2):
    a, b = l1.clone().requires_grad_(), l2.clone().requires_grad_()
    loss = fn(a, b)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


def _assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_plain_statement_is_the_literal_formula(shape):
    l1, l2, y = _inputs(shape)
    literal = reference_rdrop_loss([l1, l2], y, ALPHA)["loss"]
    torch.testing.assert_close(plain_rdrop_loss(l1, l2, y, alpha=ALPHA), literal,
                               rtol=1e-12, atol=1e-12)


PATHS = {
    "rdrop_loss": lambda a, b, y: rdrop_loss(a, b, y, alpha=ALPHA).loss,
    "RDropLoss": lambda a, b, y: RDropLoss(ALPHA)(a, b, y).loss,
    "multi_pass_rdrop_loss": lambda a, b, y: multi_pass_rdrop_loss([a, b], y, alpha=ALPHA).loss,
    "chunked (rdrop_loss chunk_size=4)":
        lambda a, b, y: rdrop_loss(a, b, y, alpha=ALPHA, chunk_size=4).loss,
    "subset_rdrop_loss at n = B": lambda a, b, y: subset_rdrop_loss(a, b, y, alpha=ALPHA).loss,
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_public_path_computes_the_plain_loss(path, shape):
    l1, l2, y = _inputs(shape)
    want = _value_and_grads(lambda a, b: plain_rdrop_loss(a, b, y, alpha=ALPHA), l1, l2)
    _assert_same(_value_and_grads(lambda a, b: PATHS[path](a, b, y), l1, l2), want)


def test_the_chunked_kernel_sums_are_the_plain_loss_times_the_count():
    l1, l2, y = _inputs((5, 6, 9))
    task, cons = chunked_rdrop_sums(l1, l2, y, ignore_index=-100, label_smoothing=0.0,
                                    chunk_size=7)
    count = int((y != -100).sum())
    torch.testing.assert_close((task + ALPHA * cons) / count,
                               plain_rdrop_loss(l1, l2, y, alpha=ALPHA), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_the_fused_output_layer_computes_the_plain_loss_of_its_logits(bias):
    g = torch.Generator().manual_seed(1)
    h1, h2 = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(11, 8, generator=g, dtype=torch.float64)
    b = torch.randn(11, generator=g, dtype=torch.float64) if bias else None
    y = torch.randint(0, 11, (3, 5), generator=g)
    y[0, :2] = -100

    def both(fn):
        leaves = [t.clone().requires_grad_() for t in (h1, h2, w)]
        loss = fn(*leaves)
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    want = both(lambda a, c, weight: plain_rdrop_loss(F.linear(a, weight, b),
                                                      F.linear(c, weight, b), y, alpha=ALPHA))
    got = both(lambda a, c, weight: fused_linear_rdrop_loss(a, c, weight, y, bias=b, alpha=ALPHA,
                                                            chunk_size=4).loss)
    _assert_same(got, want)


def test_an_all_padding_batch_gives_zero_not_nan():
    l1, l2, _ = _inputs((4, 3))
    y = torch.full((4,), -100)
    assert plain_rdrop_loss(l1, l2, y, alpha=ALPHA).item() == 0.0
    assert rdrop_loss(l1, l2, y, alpha=ALPHA).loss.item() == 0.0


def test_identical_passes_leave_only_the_two_cross_entropies():
    l1, _, y = _inputs((6, 5))
    keep = y != -100
    two_ce = 2 * F.cross_entropy(l1[keep], y[keep])
    torch.testing.assert_close(plain_rdrop_loss(l1, l1, y, alpha=ALPHA), two_ce)

"""Double backward (``create_graph=True``: gradient penalties, meta-learning) through every loss
path is exact: the chunked and fused losses, and the default loss after its automatic switch to
the chunked path, give the plain formula's second-order gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from rdrop.losses import functional
from rdrop.losses.fused_linear import fused_linear_rdrop_loss

N, D, H, V = 7, 3, 4, 6


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    noise = [torch.randn(N, V, generator=g, dtype=torch.float64) for _ in range(2)]
    y = torch.randint(0, V, (N,), generator=g)
    y[2] = -100
    return x, noise, y


def _penalized_grads(loss_of, params):
    """Gradient of ``loss + ||d loss / d params||^2``: needs the loss's second derivatives."""
    loss = loss_of()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    total = loss + sum((g ** 2).sum() for g in grads)
    return torch.autograd.grad(total, params)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_chunked_loss_second_order_gradients_equal_the_plain_formula(label_smoothing):
    x, noise, y = _data()
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)

    def loss_of(chunk_size):
        z1, z2 = x @ w.T + noise[0], x @ w.T + noise[1]
        return lambda: functional.rdrop_loss(z1, z2, y, alpha=0.7, chunk_size=chunk_size,
                                             label_smoothing=label_smoothing).loss

    (plain,) = _penalized_grads(loss_of(None), [w])
    (chunked,) = _penalized_grads(loss_of(3), [w])
    torch.testing.assert_close(chunked, plain)
    # the second-order term is there: without it the penalty's gradient differs
    (first_order,) = torch.autograd.grad(loss_of(None)(), [w])
    assert not torch.allclose(plain, first_order)


def test_the_automatic_chunked_path_keeps_second_order_gradients_exact(monkeypatch):
    x, noise, y = _data(1)
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)

    def loss_of():
        return functional.rdrop_loss(x @ w.T + noise[0], x @ w.T + noise[1], y, alpha=2.0).loss

    (plain,) = _penalized_grads(loss_of, [w])
    # Pretend the inputs are past 2**22 logits per pass: the default call takes the chunked path.
    seen = []
    real = functional._chunked
    monkeypatch.setattr(functional, "_lean_by_default", lambda *a: True)
    monkeypatch.setattr(functional, "_chunked",
                        lambda *a, **k: seen.append(k["chunk_size"]) or real(*a, **k))
    (auto,) = _penalized_grads(loss_of, [w])
    assert seen == [functional.CHUNK_SIZE] * 1
    torch.testing.assert_close(auto, plain)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_loss_second_order_gradients_equal_the_plain_formula(bias):
    x, _, y = _data(2)
    g = torch.Generator().manual_seed(3)
    a1 = torch.randn(D, H, generator=g, dtype=torch.float64).requires_grad_()
    a2 = torch.randn(D, H, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(V, H, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_() if bias else None
    params = [a1, a2, w] + ([b] if bias else [])

    def fused():
        return fused_linear_rdrop_loss(x @ a1, x @ a2, w, y, bias=b, alpha=0.9,
                                       label_smoothing=0.1, chunk_size=3).loss

    def plain():
        return functional.rdrop_loss(F.linear(x @ a1, w, b), F.linear(x @ a2, w, b), y,
                                     alpha=0.9, label_smoothing=0.1).loss

    for got, ref in zip(_penalized_grads(fused, params), _penalized_grads(plain, params),
                        strict=True):
        torch.testing.assert_close(got, ref)


def test_chunked_and_fused_pass_gradgradcheck():
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 1, 2])
    assert torch.autograd.gradgradcheck(
        lambda a, b: functional.rdrop_loss(a, b, y, alpha=1.3, chunk_size=2).loss, (z1, z2))
    w = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h1 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h2 = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, b, c: fused_linear_rdrop_loss(a, b, c, y, alpha=0.5, chunk_size=2).loss,
        (h1, h2, w))


def test_fused_loss_builds_no_gradient_under_no_grad_or_inference_mode(monkeypatch):
    from rdrop.losses.kernels import fused

    calls = []
    real = fused._fused_pass
    monkeypatch.setattr(fused, "_fused_pass",
                        lambda *a, **k: calls.append(k["coef_task"] is not None) or real(*a, **k))
    head = torch.nn.Linear(3, 5)
    h1, h2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 4, -100])
    ref = fused_linear_rdrop_loss(h1, h2, head, y, alpha=1.0)  # gradients built with forward
    with torch.no_grad():
        out = fused_linear_rdrop_loss(h1, h2, head, y, alpha=1.0)
    with torch.inference_mode():
        inf = fused_linear_rdrop_loss(h1, h2, head, y, alpha=1.0)
    assert calls == [True, False, False]
    assert out.loss.grad_fn is None and inf.loss.grad_fn is None
    torch.testing.assert_close(out.loss, ref.loss.detach())
    torch.testing.assert_close(inf.loss.clone(), ref.loss.detach())

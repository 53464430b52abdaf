"""Multi-label R-Drop (rdrop.losses.multilabel) against the literal float64 reference: values and
gradients, masking, more passes, properties, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rdrop import multilabel_rdrop_loss
from rdrop.losses.multilabel import bernoulli_symmetric_kl, multi_pass_multilabel_loss
from reference_heads import multilabel_reference

torch.set_num_threads(1)


def data(n: int = 5, c: int = 4, seed: int = 0, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    z1 = (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    z2 = (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 2, (n, c), generator=g).to(torch.float64)
    return z1, z2, y


def grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("alpha", [0.0, 0.7, 3.0])
def test_values_and_gradients_match_the_literal_reference(alpha):
    z1, z2, y = data()
    out = multilabel_rdrop_loss(z1, z2, y, alpha=alpha)
    ref = multilabel_reference([z1, z2], y, alpha)
    for got, want in zip((out.loss, out.task_loss, out.consistency_loss), ref, strict=True):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    for got, want in zip(grads(out.loss, z1, z2), grads(ref[0], z1, z2), strict=True):
        assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)


def test_masked_rows_count_nowhere_even_with_nan_logits():
    z1, z2, y = data()
    mask = torch.tensor([True, False, True, True, False])
    out = multilabel_rdrop_loss(z1, z2, y, alpha=1.0, mask=mask)
    ref = multilabel_reference([z1, z2], y, 1.0, mask=mask)
    assert torch.allclose(out.loss, ref[0], atol=1e-12)
    # masked == truncated
    kept = multilabel_rdrop_loss(z1[mask], z2[mask], y[mask], alpha=1.0)
    assert torch.allclose(out.loss, kept.loss, atol=1e-12)
    # NaN at a masked row: same loss, gradient exactly 0 there (not NaN)
    w1 = z1.detach().clone()
    w1[1] = float("nan")
    w1.requires_grad_()
    out_nan = multilabel_rdrop_loss(w1, z2, y, alpha=1.0, mask=mask)
    assert torch.allclose(out_nan.loss, ref[0], atol=1e-12)
    (g1,) = grads(out_nan.loss, w1)
    assert torch.equal(g1[1], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(g1).all()


def test_pos_weight_and_three_passes_match_the_reference():
    z1, z2, y = data()
    z3 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    pw = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    out = multi_pass_multilabel_loss([z1, z2, z3], y, alpha=2.0, pos_weight=pw)
    ref = multilabel_reference([z1, z2, z3], y, 2.0, pos_weight=pw)
    assert torch.allclose(out.loss, ref[0], atol=1e-12)
    for got, want in zip(grads(out.loss, z1, z2, z3), grads(ref[0], z1, z2, z3), strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_gradcheck():
    z1, z2, y = data(n=3, c=3)
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(
        lambda a, b: multilabel_rdrop_loss(a, b, y, alpha=1.3, mask=mask).loss, (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: bernoulli_symmetric_kl(a, b), (z1, z2))


def test_one_pass_is_bce_with_logits_and_soft_labels_work():
    z1, _, y = data()
    soft = y * 0.8 + 0.1
    out = multi_pass_multilabel_loss([z1], soft, alpha=5.0)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(z1, soft), atol=1e-12)
    assert float(out.consistency_loss) == 0.0


def test_properties_zero_symmetric_nonnegative_and_normalization():
    z1, z2, y = data(n=64, c=7, seed=1)
    assert float(bernoulli_symmetric_kl(z1, z1).detach()) == 0.0
    assert torch.allclose(bernoulli_symmetric_kl(z1, z2), bernoulli_symmetric_kl(z2, z1))
    assert bool((bernoulli_symmetric_kl(z1, z2, reduction="none") >= 0).all())
    # alpha does not depend on batch size: the batch twice over gives the same mean
    both = multilabel_rdrop_loss(torch.cat([z1, z1]), torch.cat([z2, z2]), torch.cat([y, y]),
                                 alpha=1.0)
    assert torch.allclose(both.loss, multilabel_rdrop_loss(z1, z2, y, alpha=1.0).loss)
    # num_items_in_batch replaces the local count; sum and none
    assert torch.allclose(multilabel_rdrop_loss(z1, z2, y, alpha=1.0, num_items_in_batch=128).loss,
                          multilabel_rdrop_loss(z1, z2, y, alpha=1.0).loss / 2)
    rows = multilabel_rdrop_loss(z1, z2, y, alpha=1.0, reduction="none")
    assert rows.loss.shape == (64,)
    assert torch.allclose(rows.loss.sum(),
                          multilabel_rdrop_loss(z1, z2, y, alpha=1.0, reduction="sum").loss)


def test_extreme_logits_stay_finite_in_float32():
    z1 = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[-80.0, 80.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0]])
    out = multilabel_rdrop_loss(z1, z2, y, alpha=1.0)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z1.grad).all()
    assert abs(float(out.consistency_loss.detach()) - (2 * 0.5 * 1.0 * 160.0) / 3) < 1e-3


def test_bfloat16_is_computed_in_float32():
    z1, z2, y = data()
    out = multilabel_rdrop_loss(z1.detach().bfloat16(), z2.detach().bfloat16(), y, alpha=1.0)
    assert out.loss.dtype == torch.float32
    ref = multilabel_rdrop_loss(z1.detach().bfloat16().double(), z2.detach().bfloat16().double(),
                                y, alpha=1.0)
    assert abs(float(out.loss) - float(ref.loss)) < 1e-5


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"target": torch.zeros(5)}, ValueError, r"target shape \(5,\) must equal"),
    ({"mask": torch.ones(4, dtype=torch.bool)}, ValueError, "mask shape"),
    ({"mask": torch.ones(5)}, TypeError, "mask must be a bool tensor"),
    ({"target": torch.full((5, 4), -100.0)}, ValueError, r"must lie in \[0, 1\]"),
    ({"alpha": -1.0}, ValueError, "alpha must be"),
])
def test_bad_input_is_refused_with_the_fix(kwargs, error, match):
    z1, z2, y = data()
    args = {"target": y, "alpha": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        multilabel_rdrop_loss(z1, z2, args.pop("target"), **args)


def test_non_finite_logits_at_counted_rows_name_the_pass():
    z1, z2, y = data()
    bad = z2.detach().clone()
    bad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="pass 2"):
        multilabel_rdrop_loss(z1, bad, y, alpha=1.0)

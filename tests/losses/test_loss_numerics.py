"""Numerically hard inputs: underflowing probabilities and -inf logits, against float64 references.

The Jensen-Shannon consistency is computed in log space (``logaddexp``), so a probability that
underflows to 0 or a class masked with -inf gives a finite value AND a finite, correct gradient.
Each case is compared with ``reference_js_rows`` (a literal float64 loop, 0 * log 0 = 0) or
``js_by_hand`` (the math module only).
"""

from __future__ import annotations

import math

import pytest
import torch

from rdrop.losses.functional import rdrop_loss, single_pass_loss, symmetric_kl

from reference import js_by_hand, reference_js_rows, reference_rdrop_loss

UNDERFLOW_1 = [0.0, -200.0, 1.0]  # exp(-201) underflows to 0 in float32 (but not in float64)
UNDERFLOW_2 = [0.0, -300.0, 1.0]
GRAD_TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-6),
                   torch.bfloat16: (2e-2, 2e-3)}


def _leaves(*rows: list[float], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.tensor([r], dtype=dtype, requires_grad=True) for r in rows]


def _grads(loss: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_js_underflow_finite_and_matches_float64_reference(dtype):
    a, b = _leaves(UNDERFLOW_1, UNDERFLOW_2, dtype=dtype)
    y = torch.tensor([2])
    out = rdrop_loss(a, b, y, alpha=1.0, consistency="js")
    grads = _grads(out.loss, [a, b])
    assert all(bool(torch.isfinite(g).all()) for g in grads)

    a64, b64 = _leaves(UNDERFLOW_1, UNDERFLOW_2, dtype=torch.float64)
    ref = reference_rdrop_loss([a64, b64], y, alpha=1.0, consistency="js")
    ref_grads = _grads(ref["loss"], [a64, b64])
    js = js_by_hand(UNDERFLOW_1, UNDERFLOW_2)
    assert float(out.consistency_loss.detach()) == pytest.approx(js, abs=1e-7)
    torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-6, atol=1e-7)
    rtol, atol = GRAD_TOLERANCES[dtype]  # bf16 gradients come back rounded to bf16
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double(), r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_js_extreme_random_logits_match_reference(dtype):
    # Logits spread over hundreds of nats: many probabilities underflow in float32.
    g = torch.Generator().manual_seed(3)
    a64 = (torch.randn(8, 6, generator=g, dtype=torch.float64) * 150).requires_grad_(True)
    b64 = (torch.randn(8, 6, generator=g, dtype=torch.float64) * 150).requires_grad_(True)
    a = a64.detach().to(dtype).requires_grad_(True)
    b = b64.detach().to(dtype).requires_grad_(True)
    y = torch.randint(0, 6, (8,), generator=g)
    out = rdrop_loss(a, b, y, alpha=2.0, consistency="js")
    ref = reference_rdrop_loss([a64, b64], y, alpha=2.0, consistency="js")
    torch.testing.assert_close(out.consistency_loss.double(), ref["consistency_loss"],
                               rtol=1e-5, atol=1e-6)
    for g_out, g_ref in zip(_grads(out.loss, [a, b]), _grads(ref["loss"], [a64, b64]),
                            strict=True):
        assert bool(torch.isfinite(g_out).all())
        torch.testing.assert_close(g_out.double(), g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_js_minus_inf_in_both_passes_equals_the_truncated_vocabulary(dtype):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 6, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(5, 6, generator=g, dtype=torch.float64).to(dtype)
    a[:, 2] = -math.inf
    b[:, 2] = -math.inf
    a.requires_grad_(True)
    b.requires_grad_(True)
    y = torch.tensor([0, 1, 3, 4, 5])
    out = rdrop_loss(a, b, y, alpha=1.0, consistency="js")
    ga, gb = _grads(out.loss, [a, b])

    keep = [0, 1, 3, 4, 5]
    a64 = a.detach().double()[:, keep].requires_grad_(True)
    b64 = b.detach().double()[:, keep].requires_grad_(True)
    ref = reference_rdrop_loss([a64, b64], torch.tensor([0, 1, 2, 3, 4]), alpha=1.0,
                               consistency="js")
    ra, rb = _grads(ref["loss"], [a64, b64])
    torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ga[:, keep].double(), ra, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gb[:, keep].double(), rb, rtol=1e-5, atol=1e-7)
    assert float(ga[:, 2].abs().max()) == 0.0 and float(gb[:, 2].abs().max()) == 0.0


def test_js_minus_inf_in_one_pass_is_finite_and_matches_reference():
    # KL would be infinite here; JS is bounded by log 2, and 0 * log 0 = 0.
    a = torch.tensor([[1.0, -math.inf, 0.5], [0.0, 2.0, -1.0]], dtype=torch.float64)
    b = torch.tensor([[0.2, 1.0, 0.5], [0.3, 1.0, -math.inf]], dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    y = torch.tensor([0, 1])
    out = rdrop_loss(a, b, y, alpha=1.0, reduction="sum", consistency="js")
    ref_rows = reference_js_rows(a, b)
    torch.testing.assert_close(out.consistency_loss, ref_rows.sum(), rtol=1e-12, atol=1e-12)
    assert float(out.consistency_loss.detach()) == pytest.approx(
        js_by_hand([1.0, -math.inf, 0.5], [0.2, 1.0, 0.5])
        + js_by_hand([0.0, 2.0, -1.0], [0.3, 1.0, -math.inf]), rel=1e-12)
    got = _grads(out.consistency_loss, [a, b])
    want = _grads(ref_rows.sum(), [a, b])
    for g, r in zip(got, want, strict=True):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_js_reference_by_hand_agrees_with_torch_reference():
    # The two references are independent; they must agree on an ordinary row.
    r1, r2 = [0.3, -1.2, 2.0, 0.0], [1.0, 0.4, -0.7, 0.1]
    rows = reference_js_rows(torch.tensor([r1], dtype=torch.float64),
                             torch.tensor([r2], dtype=torch.float64))
    assert float(rows[0]) == pytest.approx(js_by_hand(r1, r2), rel=1e-12)


@pytest.mark.parametrize("consistency", ["kl", "js"])
def test_minus_inf_in_both_passes_gives_finite_truncated_gradients(consistency):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 5, generator=g, dtype=torch.float64)
    b = torch.randn(4, 5, generator=g, dtype=torch.float64)
    a[:, 4] = -math.inf
    b[:, 4] = -math.inf
    a.requires_grad_(True)
    b.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3])
    out = rdrop_loss(a, b, y, alpha=1.0, consistency=consistency)
    ga, gb = _grads(out.loss, [a, b])
    at = a.detach()[:, :4].clone().requires_grad_(True)
    bt = b.detach()[:, :4].clone().requires_grad_(True)
    ref = reference_rdrop_loss([at, bt], y, alpha=1.0, consistency=consistency)
    rat, rbt = _grads(ref["loss"], [at, bt])
    torch.testing.assert_close(ga[:, :4], rat, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb[:, :4], rbt, rtol=1e-10, atol=1e-12)
    assert float(ga[:, 4].abs().max()) == 0.0


def test_symmetric_kl_underflow_has_finite_gradient():
    a, b = _leaves(UNDERFLOW_1, UNDERFLOW_2, dtype=torch.float32)
    d = symmetric_kl(a, b)
    assert bool(torch.isfinite(d))
    assert all(bool(torch.isfinite(g).all()) for g in _grads(d, [a, b]))


# --------------------------------------------------------------- -inf logits: say what is wrong
def test_minus_inf_with_label_smoothing_says_so():
    a = torch.tensor([[1.0, 0.0, -math.inf]])
    b = torch.tensor([[0.5, 0.2, -math.inf]])
    y = torch.tensor([0])
    advice = r"-inf and label_smoothing=0.1 > 0.*use label_smoothing=0, or drop the masked classes"
    with pytest.raises(ValueError, match=advice):
        rdrop_loss(a, b, y, alpha=1.0, label_smoothing=0.1)
    # The message does not advise a finfo.min mask: with label smoothing it gives a huge loss,
    # as the message says; dropping the masked class does what was meant.
    low = torch.finfo(torch.float32).min
    huge = rdrop_loss(a.nan_to_num(neginf=low), b.nan_to_num(neginf=low), y, alpha=1.0,
                      label_smoothing=0.1, check_finite=False).loss
    assert float(huge) > 1e35
    kept = rdrop_loss(a[:, :2], b[:, :2], y, alpha=1.0, label_smoothing=0.1).loss
    assert 0 < float(kept) < 10
    # Without label smoothing the same logits are fine (the masked class contributes 0).
    assert math.isfinite(float(rdrop_loss(a, b, y, alpha=1.0).loss))
    # check_finite=False returns the (infinite) value instead of raising.
    out = rdrop_loss(a, b, y, alpha=1.0, label_smoothing=0.1, check_finite=False)
    assert math.isinf(float(out.loss))


def test_minus_inf_at_the_target_class_says_so():
    a = torch.tensor([[1.0, 0.0, -math.inf]])
    with pytest.raises(ValueError, match="target class of a counted row has logit -inf"):
        rdrop_loss(a, a.clone(), torch.tensor([2]), alpha=1.0)


def test_minus_inf_in_one_pass_only_says_so_for_kl():
    a = torch.tensor([[1.0, 0.0, -math.inf]])
    b = torch.tensor([[1.0, 0.0, 0.5]])
    with pytest.raises(ValueError, match="masked \\(-inf\\) in one pass but not in another"):
        rdrop_loss(a, b, torch.tensor([0]), alpha=1.0)


def test_plus_inf_logit_says_so():
    a = torch.tensor([[1.0, 0.0, math.inf]])
    with pytest.raises(FloatingPointError, match=r"\+inf in the logits of pass 1"):
        rdrop_loss(a, torch.zeros(1, 3), torch.tensor([0]), alpha=1.0)


# ------------------------------ padding rows: a NaN gradient there is an error, not a silent NaN
def _padded(seed=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(5, 4, generator=g, dtype=torch.float64)
    return a, b, torch.tensor([0, 3, -100, 1, -100])


@pytest.mark.parametrize("consistency", ["kl", "js"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bad", ["nan", "+inf", "all -inf"])
def test_non_finite_logits_in_ignored_rows_are_an_error(consistency, label_smoothing, bad):
    # A fully masked attention row can give NaN logits at a padding position. Its loss is 0, so
    # the loss is finite; but its gradient is NaN (F.cross_entropy's too) and reaches the weights.
    a, b, y = _padded()
    a_bad = a.clone()
    a_bad[2] = {"nan": math.nan, "+inf": math.inf, "all -inf": -math.inf}[bad]
    kw = {"alpha": 1.0, "consistency": consistency, "label_smoothing": label_smoothing}
    with pytest.raises(FloatingPointError, match=r"1 row\(s\) that do not count .* gradient "
                                                 r"would be NaN"):
        rdrop_loss(a_bad, b, y, **kw)
    with pytest.raises(FloatingPointError, match="do not count"):
        single_pass_loss(a_bad, y, label_smoothing=label_smoothing)
    # check_finite=False: the value is still that of the counted rows alone.
    out = rdrop_loss(a_bad, b, y, check_finite=False, **kw)
    counted = [0, 1, 3]
    ref = reference_rdrop_loss([a[counted], b[counted]], y[counted], **kw)
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-12, atol=1e-12)


def test_minus_inf_in_ignored_rows_is_fine_where_the_gradient_is():
    # A class masked in both passes, or class 0 masked (the index read at ignored rows), or (JS)
    # a class masked in one pass: finite gradients, no error.
    a, b, y = _padded()
    a[2, 0] = b[2, 0] = -math.inf
    a[4, 1] = -math.inf
    a.requires_grad_(True)
    for kw in ({"consistency": "js"}, {"consistency": "js", "label_smoothing": 0.1}):
        (ga,) = _grads(rdrop_loss(a, b, y, alpha=1.0, **kw).loss, [a])
        assert bool(torch.isfinite(ga).all()) and float(ga[[2, 4]].abs().sum()) == 0.0
    b2 = b.clone()
    b2[4, 1] = -math.inf  # now masked in both passes: fine for KL too
    (ga,) = _grads(rdrop_loss(a, b2, y, alpha=1.0).loss, [a])
    assert bool(torch.isfinite(ga).all()) and float(ga[[2, 4]].abs().sum()) == 0.0
    with pytest.raises(FloatingPointError, match="masked with -inf in one pass only"):
        rdrop_loss(a, b, y, alpha=1.0)  # KL: row 4 masked in pass 1 only -> NaN gradient


def test_nan_in_counted_rows_still_says_nan_in_the_logits():
    a, b, y = _padded()
    a[0, 1] = math.nan
    a[2] = math.nan
    with pytest.raises(FloatingPointError, match="NaN in the logits of pass 1"):
        rdrop_loss(a, b, y, alpha=1.0)

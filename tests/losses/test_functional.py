"""rdrop.losses.functional against the literal float64 reference (tests/reference.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rdrop.losses.functional import multi_pass_rdrop_loss, rdrop_loss, symmetric_kl

from reference import (
    golden_inputs,
    golden_value_by_hand,
    reference_mse_rdrop_loss,
    reference_rdrop_loss,
)

# (rtol, atol) for loss values and for gradients, per input dtype. The reference sees the same
# (rounded) inputs in float64, so the gap is only rdrop's float32 arithmetic (and, for bf16, the
# gradient being returned in bf16).
TOLERANCES = {
    torch.float64: {"value": (1e-10, 1e-12), "grad": (1e-9, 1e-12)},
    torch.float32: {"value": (1e-5, 1e-6), "grad": (1e-4, 1e-6)},
    torch.bfloat16: {"value": (1e-4, 1e-5), "grad": (2e-2, 2e-3)},
}
SHAPES = {"classification": (6, 5), "tokens": (2, 4, 7)}


def _make(shape, dtype, *, seed=0, ignore_frac=0.25, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    b = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, shape[-1], shape[:-1], generator=g)
    drop = torch.rand(shape[:-1], generator=g) < ignore_frac
    y[drop] = -100
    y.view(-1)[0] = 1  # at least one counted row
    return a, b, y


def _grads(fn, a, b):
    a = a.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True)
    out = fn(a, b)
    out["loss"].backward() if isinstance(out, dict) else out.loss.backward()
    return out, a.grad, b.grad


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("alpha", [0.0, 0.7, 5.0])
def test_values_and_gradients_match_reference(dtype, shape_name, label_smoothing, alpha):
    a, b, y = _make(SHAPES[shape_name], dtype)
    kw = {"alpha": alpha, "label_smoothing": label_smoothing}
    ours, ga, gb = _grads(lambda p, q: rdrop_loss(p, q, y, **kw), a, b)
    ref, ra, rb = _grads(
        lambda p, q: reference_rdrop_loss([p.double(), q.double()], y, **kw), a, b
    )
    rtol, atol = TOLERANCES[dtype]["value"]
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(
            getattr(ours, key).double(), ref[key].detach(), rtol=rtol, atol=atol
        )
    rtol, atol = TOLERANCES[dtype]["grad"]
    assert ga.dtype == dtype and gb.dtype == dtype
    torch.testing.assert_close(ga.double(), ra.double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(gb.double(), rb.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_other_reductions_match_reference(reduction):
    a, b, y = _make(SHAPES["tokens"], torch.float64)
    ours = rdrop_loss(a, b, y, alpha=2.0, reduction=reduction)
    ref = reference_rdrop_loss([a, b], y, alpha=2.0, reduction=reduction)
    assert ours.loss.shape == ref["loss"].shape
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(getattr(ours, key), ref[key], rtol=1e-10, atol=1e-12)


def test_js_matches_reference():
    a, b, y = _make(SHAPES["classification"], torch.float64)
    ours = rdrop_loss(a, b, y, alpha=1.5, consistency="js")
    ref = reference_rdrop_loss([a, b], y, alpha=1.5, consistency="js")
    torch.testing.assert_close(ours.loss, ref["loss"], rtol=1e-6, atol=1e-9)
    assert 0 < float(ours.consistency_loss) <= math.log(2)


def test_mse_matches_reference_for_regression_heads():
    g = torch.Generator().manual_seed(3)
    p1, p2, t = (torch.randn(8, 1, generator=g, dtype=torch.float64) for _ in range(3))
    ours = rdrop_loss(p1, p2, t.squeeze(-1), alpha=0.5, consistency="mse")
    ref = reference_mse_rdrop_loss(p1, p2, t, alpha=0.5)
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(getattr(ours, key), ref[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_multi_pass_matches_reference(m):
    g = torch.Generator().manual_seed(m)
    passes = torch.randn(m, 5, 6, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 5, -100, 2, 3])
    ours = multi_pass_rdrop_loss(passes, y, alpha=1.0, label_smoothing=0.1)
    ref = reference_rdrop_loss(list(passes), y, alpha=1.0, label_smoothing=0.1)
    for key in ("loss", "task_loss", "consistency_loss"):
        torch.testing.assert_close(getattr(ours, key), ref[key], rtol=1e-10, atol=1e-12)
    if m == 2:
        two = rdrop_loss(passes[0], passes[1], y, alpha=1.0, label_smoothing=0.1)
        torch.testing.assert_close(two.loss, ours.loss, rtol=0, atol=0)


def test_golden_value():
    a, b, y = golden_inputs()
    by_hand = golden_value_by_hand()
    out = rdrop_loss(a, b, y, alpha=1.0)
    assert math.isclose(float(out.loss), by_hand, rel_tol=1e-12)
    # The same number, written down once (computed with the math module, see reference.py).
    assert math.isclose(float(out.loss), 1.1301169432591458, rel_tol=1e-9)


# ------------------------------------------------------------------------------------ properties
def test_identical_passes_give_zero_consistency():
    a, _, y = _make(SHAPES["tokens"], torch.float32)
    out = rdrop_loss(a, a.clone(), y, alpha=3.0)
    assert float(out.consistency_loss) == pytest.approx(0.0, abs=1e-7)
    assert float(symmetric_kl(a, a.clone())) == pytest.approx(0.0, abs=1e-7)


def test_symmetric_and_non_negative():
    for seed in range(20):
        a, b, _ = _make((16, 9), torch.float64, seed=seed, scale=4.0)
        ab = symmetric_kl(a, b, reduction="none")
        ba = symmetric_kl(b, a, reduction="none")
        torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-14)
        assert bool((ab >= 0).all())


def test_masked_equals_truncated():
    a, b, y = _make((10, 6), torch.float64, ignore_frac=0.0)
    y_masked = y.clone()
    y_masked[6:] = -100
    masked = rdrop_loss(a, b, y_masked, alpha=2.0, label_smoothing=0.1)
    truncated = rdrop_loss(a[:6], b[:6], y[:6], alpha=2.0, label_smoothing=0.1)
    torch.testing.assert_close(masked.loss, truncated.loss, rtol=1e-12, atol=1e-14)
    keep = torch.zeros(10, dtype=torch.bool)
    keep[:6] = True
    torch.testing.assert_close(symmetric_kl(a, b, mask=keep), symmetric_kl(a[:6], b[:6]))


def test_all_padding_gives_zero_not_nan():
    a, b, _ = _make((3, 4, 5), torch.float32)
    y = torch.full((3, 4), -100)
    a.requires_grad_(True)
    out = rdrop_loss(a, b, y, alpha=1.0)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert bool(torch.isfinite(a.grad).all()) and float(a.grad.abs().sum()) == 0.0
    assert float(symmetric_kl(a.detach(), b, mask=torch.zeros(3, 4, dtype=torch.bool))) == 0.0


def test_minus_inf_classes_masked_in_both_passes():
    a, b, y = _make((6, 5), torch.float64, ignore_frac=0.0)
    y = y.clamp_max(3)
    a_inf, b_inf = a.clone(), b.clone()
    a_inf[:, 4] = -math.inf
    b_inf[:, 4] = -math.inf
    out = rdrop_loss(a_inf, b_inf, y, alpha=1.0)
    ref = rdrop_loss(a[:, :4], b[:, :4], y, alpha=1.0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    a, b, y = _make((3, 4), torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def fn(p, q):
        return rdrop_loss(p, q, y, alpha=1.3, label_smoothing=0.1).loss

    assert torch.autograd.gradcheck(fn, (a, b))


def test_num_items_in_batch_makes_accumulation_exact():
    a, b, y = _make((12, 5), torch.float64)
    full = rdrop_loss(a, b, y, alpha=1.0)
    n = int((y != -100).sum())
    halves = [
        rdrop_loss(a[s], b[s], y[s], alpha=1.0, num_items_in_batch=n)
        for s in (slice(0, 6), slice(6, 12))
    ]
    torch.testing.assert_close(halves[0].loss + halves[1].loss, full.loss, rtol=1e-12, atol=0)
    as_tensor = rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=torch.tensor(2 * n))
    torch.testing.assert_close(as_tensor.loss, full.loss / 2, rtol=1e-12, atol=0)


def test_alpha_does_not_depend_on_batch_size():
    a, b, y = _make((8, 5), torch.float64, ignore_frac=0.0)
    one = rdrop_loss(a, b, y, alpha=5.0)
    tiled = rdrop_loss(a.repeat(4, 1), b.repeat(4, 1), y.repeat(4), alpha=5.0)
    torch.testing.assert_close(one.loss, tiled.loss, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"alpha": -1.0}, ValueError, "alpha must be a finite number >= 0"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": "5"}, TypeError, "alpha must be a float"),
        ({"alpha": 1.0, "reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"alpha": 1.0, "consistency": "l2"}, ValueError, "consistency must be one of"),
        ({"alpha": 1.0, "label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"alpha": 1.0, "chunk_size": 0}, ValueError, "chunk_size"),
        ({"alpha": 1.0, "num_items_in_batch": -1}, ValueError, "num_items_in_batch"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, match):
    a, b, y = _make((4, 3), torch.float32)
    with pytest.raises(exc, match=match):
        rdrop_loss(a, b, y, **kwargs)


def test_shape_errors_say_how_to_fix():
    a, b, y = _make((4, 3), torch.float32)
    with pytest.raises(ValueError, match="same shape"):
        rdrop_loss(a, b[:3], y, alpha=1.0)
    with pytest.raises(ValueError, match=r"expected target of shape \(4,\)"):
        rdrop_loss(a, b, y[:3], alpha=1.0)
    with pytest.raises(TypeError, match="class indices"):
        rdrop_loss(a, b, y.float(), alpha=1.0)
    with pytest.raises(TypeError, match="floating tensor"):
        rdrop_loss(y, y, y, alpha=1.0)
    with pytest.raises(ValueError, match="at least 2 passes"):
        multi_pass_rdrop_loss([a], y, alpha=1.0)
    with pytest.raises(ValueError, match="mask shape"):
        symmetric_kl(a, b, mask=torch.ones(3, dtype=torch.bool))


def test_nan_logits_raise_clear_error():
    a, b, y = _make((4, 3), torch.float32, ignore_frac=0.0)
    b[1, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN in the logits of pass 2"):
        rdrop_loss(a, b, y, alpha=1.0)
    out = rdrop_loss(a, b, y, alpha=1.0, check_finite=False)
    assert math.isnan(float(out.loss))

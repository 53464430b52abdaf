"""Bad and unusual inputs to the losses: clear errors where the answer would be wrong, equal
results where an input is merely unusual (a uint8 target)."""

from __future__ import annotations

import pytest
import torch

from rdrop import RDropLoss
from rdrop.losses.functional import (
    compute_dtype,
    multi_pass_rdrop_loss,
    rdrop_loss,
    single_pass_loss,
    symmetric_kl,
)

from reference import reference_mse_rdrop_loss, reference_rdrop_loss


def _make(n=6, c=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, c, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    y[1] = -100
    return a, b, y


# ------------------------------------------------------------------------- num_items_in_batch
@pytest.mark.parametrize(
    ("value", "exc", "match"),
    [
        (0, ValueError, "num_items_in_batch must be >= 1, got 0"),
        (-3, ValueError, "num_items_in_batch must be >= 1, got -3"),
        (torch.tensor(0), ValueError, "num_items_in_batch must be >= 1, got 0"),
        (torch.tensor(-2), ValueError, "num_items_in_batch must be >= 1, got -2"),
        (2.5, TypeError, "num_items_in_batch must be an int, got float"),
        (4.0, TypeError, "num_items_in_batch must be an int, got float"),
        ("4", TypeError, "num_items_in_batch must be an int, got str"),
        (True, TypeError, "num_items_in_batch must be an int, got bool"),
        (torch.tensor(4.0), TypeError, r"integer tensor, got dtype torch.float32 \(use .long"),
        (torch.tensor([3, 4]), ValueError, "a single count"),
    ],
)
@pytest.mark.parametrize("entry", ["rdrop", "chunked", "mse", "single"])
def test_num_items_in_batch_refuses_non_counts(value, exc, match, entry):
    a, b, y = _make()
    with pytest.raises(exc, match=match):
        if entry == "rdrop":
            rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=value)
        elif entry == "chunked":
            rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=value, chunk_size=2)
        elif entry == "mse":
            rdrop_loss(a, b, a.detach() * 0.5, alpha=1.0, consistency="mse",
                       num_items_in_batch=value)
        else:
            single_pass_loss(a, y, num_items_in_batch=value)


@pytest.mark.parametrize("value", [7, torch.tensor(7), torch.tensor(7, dtype=torch.int32),
                                   torch.tensor([7])])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_num_items_in_batch_accepts_positive_counts(value, chunk_size):
    a, b, y = _make(dtype=torch.float64)
    out = rdrop_loss(a, b, y, alpha=0.5, num_items_in_batch=value, chunk_size=chunk_size)
    ref = reference_rdrop_loss([a, b], y, alpha=0.5, num_items_in_batch=7)
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-10, atol=1e-12)
    # Not clamped, not a sum: a count larger than the local rows scales the mean down.
    local = rdrop_loss(a, b, y, alpha=0.5)
    torch.testing.assert_close(out.loss * 7, local.loss * 5, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an accelerator")
def test_num_items_in_batch_on_device_is_checked_in_the_one_sync():
    a, b, y = (t.cuda() for t in _make())
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1, got 0"):
        rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=torch.tensor(0, device="cuda"))
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1, got -4"):
        rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=torch.tensor(-4, device="cuda"))
    out = rdrop_loss(a, b, y, alpha=1.0, num_items_in_batch=torch.tensor(5, device="cuda"))
    torch.testing.assert_close(out.loss, rdrop_loss(a, b, y, alpha=1.0).loss)


# ------------------------------------------------------------------------------------ targets
@pytest.mark.parametrize("bad", [4, 9, -1, -99])
@pytest.mark.parametrize(("chunk_size", "reduction"),
                         [(None, "mean"), (None, "sum"), (None, "none"), (2, "mean"), (2, "sum")])
def test_target_out_of_range_is_a_clear_error(bad, chunk_size, reduction):
    a, b, y = _make()
    y[3] = bad
    with pytest.raises(ValueError, match=r"target holds class indices outside \[0, 4\)"):
        rdrop_loss(a, b, y, alpha=1.0, chunk_size=chunk_size, reduction=reduction)


def test_target_out_of_range_in_single_pass_and_multi_pass():
    a, b, y = _make()
    y[0] = 4
    with pytest.raises(ValueError, match=r"min 4, max 4 .*ignore_index=-100"):
        single_pass_loss(a, y)
    with pytest.raises(ValueError, match="outside"):
        multi_pass_rdrop_loss([a, b, a.clone()], y, alpha=1.0)


def test_target_out_of_range_without_checks_still_fails_not_silently():
    # check_finite=False skips the sync, so the raw index reaches gather: PyTorch refuses it.
    a, b, y = _make()
    y[0] = 4
    with pytest.raises((RuntimeError, IndexError), match="out of bounds"):
        rdrop_loss(a, b, y, alpha=1.0, check_finite=False)


def test_ignore_index_other_than_default_is_not_out_of_range():
    a, b, y = _make(dtype=torch.float64)
    y[1] = 250
    out = rdrop_loss(a, b, y, alpha=1.0, ignore_index=250)
    ref = reference_rdrop_loss([a, b], y, alpha=1.0, ignore_index=250)
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_any_integer_target_dtype_equals_int64(dtype):
    a, b, y = _make(dtype=torch.float64)
    y[1] = 3  # uint8 cannot hold -100: use a real class
    want = rdrop_loss(a, b, y, alpha=1.0)
    got = rdrop_loss(a, b, y.to(dtype), alpha=1.0)
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    assert float(single_pass_loss(a, y.to(dtype)).loss) == float(single_pass_loss(a, y).loss)


def test_uint8_target_with_its_own_padding_value():
    # A uint8 target is compared as int64, so 255 is 255 (not -1 or -100 after a wrap-around).
    a, b, y = _make(dtype=torch.float64)
    y[1] = 255
    got = rdrop_loss(a, b, y.to(torch.uint8), alpha=1.0, ignore_index=255)
    ref = reference_rdrop_loss([a, b], y, alpha=1.0, ignore_index=255)
    torch.testing.assert_close(got.loss, ref["loss"], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="outside"):
        rdrop_loss(a, b, y.to(torch.uint8), alpha=1.0)  # 255 counts with ignore_index=-100


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool, torch.complex64])
def test_non_integer_target_is_a_type_error(target_dtype):
    a, b, y = _make()
    with pytest.raises(TypeError, match="class indices"):
        rdrop_loss(a, b, y.clamp_min(0).to(target_dtype), alpha=1.0)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"ignore_index": None}, TypeError, "ignore_index must be an int.*keep the default -100"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
        ({"label_smoothing": None}, TypeError, "label_smoothing must be a float.*use 0.0"),
        ({"label_smoothing": "0.1"}, TypeError, "label_smoothing must be a float"),
        ({"label_smoothing": -0.1}, ValueError, r"label_smoothing must be in \[0, 1\)"),
        ({"label_smoothing": float("nan")}, ValueError, "label_smoothing"),
        ({"chunk_size": True}, TypeError, "chunk_size must be a positive int"),
        ({"chunk_size": 2.0}, TypeError, "chunk_size must be a positive int"),
        ({"consistency": None}, ValueError, "consistency must be one of"),
        ({"reduction": None}, ValueError, "reduction must be one of"),
    ],
)
def test_bad_arguments_of_the_function(kwargs, exc, match):
    a, b, y = _make()
    with pytest.raises(exc, match=match):
        rdrop_loss(a, b, y, alpha=1.0, **kwargs)


# ------------------------------------------------------------------- RDropLoss construction
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"chunk_size": True}, TypeError, "chunk_size must be a positive int"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"chunk_size": 8.0}, TypeError, "chunk_size"),
        ({"chunk_size": 8, "consistency": "js"}, ValueError, "chunk_size supports"),
        ({"chunk_size": 8, "reduction": "none"}, ValueError, "chunk_size supports"),
        ({"alpha": None}, TypeError, "alpha must be a float"),
        ({"alpha": -1}, ValueError, "alpha must be a finite number >= 0"),
        ({"alpha": True}, TypeError, "alpha must be a float"),
        ({"ignore_index": None}, TypeError, "ignore_index must be an int"),
        ({"label_smoothing": None}, TypeError, "label_smoothing must be a float"),
        ({"label_smoothing": 1.0}, ValueError, "label_smoothing"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"consistency": "l2"}, ValueError, "consistency must be one of"),
        ({"consistency": "mse", "label_smoothing": 0.1}, ValueError, "does not apply"),
    ],
)
def test_rdrop_loss_module_validates_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RDropLoss(**kwargs)


def test_rdrop_loss_module_equals_the_function():
    a, b, y = _make(dtype=torch.float64)
    crit = RDropLoss(alpha=0.7, label_smoothing=0.1, chunk_size=2)
    out = crit(a, b, y, num_items_in_batch=9)
    ref = reference_rdrop_loss([a, b], y, alpha=0.7, label_smoothing=0.1, num_items_in_batch=9)
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-10, atol=1e-12)
    assert isinstance(crit.alpha, float) and crit.chunk_size == 2


# ------------------------------------------------- settings that would be silently ignored
def test_single_class_logits_are_refused():
    a = torch.randn(4, 1)
    with pytest.raises(ValueError, match=r"single class.*use two logits.*consistency=.mse."):
        rdrop_loss(a, a + 1, torch.zeros(4, dtype=torch.long), alpha=1.0)


def test_devices_must_match():
    a, b, y = _make()
    with pytest.raises(ValueError, match="target is on meta but the logits are on cpu"):
        rdrop_loss(a, b, y.to("meta"), alpha=1.0)
    with pytest.raises(ValueError, match="different devices"):
        rdrop_loss(a, b.to("meta"), y, alpha=1.0)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_num_items_in_batch_is_checked_but_ignored_without_the_mean(reduction):
    # Only "mean" divides by it (so loops can always pass it), but a bad value is still refused.
    a, b, y = _make(dtype=torch.float64)
    out = rdrop_loss(a, b, y, alpha=1.0, reduction=reduction, num_items_in_batch=4)
    ref = reference_rdrop_loss([a, b], y, alpha=1.0, reduction=reduction)
    torch.testing.assert_close(out.loss, ref["loss"], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1"):
        rdrop_loss(a, b, y, alpha=1.0, reduction=reduction, num_items_in_batch=0)
    with pytest.raises(ValueError, match="num_items_in_batch must be >= 1"):
        single_pass_loss(a, y, reduction=reduction, num_items_in_batch=0)


def test_label_smoothing_does_not_apply_to_mse():
    a, b, _ = _make()
    with pytest.raises(ValueError, match=r"label_smoothing=0\.1 does not apply to consistency"):
        rdrop_loss(a, b, a * 0.5, alpha=1.0, consistency="mse", label_smoothing=0.1)


def test_nan_regression_target_says_so():
    a, b, _ = _make()
    t = a.clone() * 0.5
    t[2, 1] = float("nan")
    with pytest.raises(ValueError, match="regression target holds NaN or inf"):
        rdrop_loss(a, b, t, alpha=1.0, consistency="mse")


def test_empty_batch_gives_zero_and_zero_gradients():
    a = torch.randn(0, 4, requires_grad=True)
    out = rdrop_loss(a, a.detach() + 1, torch.zeros(0, dtype=torch.long), alpha=1.0)
    out.loss.backward()
    assert float(out.loss.detach()) == 0.0 and a.grad.shape == (0, 4)


def test_classes_in_dim_1_get_a_hint():
    # F.cross_entropy takes (B, C, T); rdrop wants (B, T, C).
    a = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=r"classes in dim 1.*logits.movedim\(1, -1\)"):
        rdrop_loss(a, a + 1, torch.zeros(2, 3, dtype=torch.long), alpha=1.0)
    ok = rdrop_loss(a.movedim(1, -1), (a + 1).movedim(1, -1), torch.zeros(2, 3, dtype=torch.long),
                    alpha=1.0)
    assert bool(torch.isfinite(ok.loss))


def test_symmetric_kl_refuses_a_float_mask():
    a, b, _ = _make()
    with pytest.raises(TypeError, match=r"mask must be a bool.*reduction='none'"):
        symmetric_kl(a, b, mask=torch.full((6,), 0.5))
    ones = torch.ones(6, dtype=torch.long)
    assert float(symmetric_kl(a, b, mask=ones)) == float(symmetric_kl(a, b))


@pytest.mark.parametrize(("dtype", "expected"), [(torch.float16, torch.float32),
                                                 (torch.bfloat16, torch.float32),
                                                 (torch.float32, torch.float32),
                                                 (torch.float64, torch.float64)])
def test_compute_dtype_is_the_loss_dtype(dtype, expected):
    a, b, y = _make(dtype=dtype)
    assert compute_dtype(dtype) == expected
    assert rdrop_loss(a, b, y, alpha=1.0).loss.dtype == expected


def test_mse_num_items_in_batch_counts_samples_not_values():
    g = torch.Generator().manual_seed(4)
    p1, p2, t = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    local = rdrop_loss(p1, p2, t, alpha=1.0, consistency="mse")
    torch.testing.assert_close(
        rdrop_loss(p1, p2, t, alpha=1.0, consistency="mse", num_items_in_batch=6).loss,
        local.loss, rtol=1e-12, atol=0)
    ref = reference_mse_rdrop_loss(p1, p2, t, alpha=1.0)
    torch.testing.assert_close(local.loss, ref["loss"], rtol=1e-12, atol=1e-12)

"""rdrop.losses.checks (argument checks): each check accepts the valid values (returned in canonical
form) and refuses the rest with a message that names the argument (under the caller's name when
given) and the fix."""

from __future__ import annotations

import math

import pytest
import torch

from rdrop.losses import checks as ac


@pytest.mark.parametrize(
    ("check", "value", "expected"),
    [
        (ac.check_alpha, 0, 0.0),
        (ac.check_alpha, 5, 5.0),
        (ac.check_alpha, 0.25, 0.25),
        (ac.check_reduction, "none", "none"),
        (ac.check_consistency, "mse", "mse"),
        (ac.check_label_smoothing, 0, 0.0),
        (ac.check_label_smoothing, 0.999, 0.999),
        (ac.check_ignore_index, -100, -100),
        (ac.check_ignore_index, 0, 0),
        (ac.check_chunk_size, None, None),
        (ac.check_chunk_size, 1, 1),
        (ac.check_num_items_in_batch, None, None),
        (ac.check_num_items_in_batch, 1, 1),
    ],
)
def test_valid_values_come_back_canonical(check, value, expected):
    got = check(value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("check", "value", "exc", "match"),
    [
        (ac.check_alpha, "1", TypeError, "alpha must be a float, got str"),
        (ac.check_alpha, None, TypeError, "alpha must be a float, got NoneType"),
        (ac.check_alpha, False, TypeError, "alpha must be a float, got bool"),
        (ac.check_alpha, torch.tensor(1.0), TypeError, r"float\(t\)"),
        (ac.check_alpha, -0.1, ValueError, "use 0 to disable it"),
        (ac.check_alpha, math.inf, ValueError, "finite"),
        (ac.check_reduction, "batchmean", ValueError, r"reduction must be one of \('mean'"),
        (ac.check_reduction, None, ValueError, "got None"),
        (ac.check_consistency, "KL", ValueError, "consistency must be one of"),
        (ac.check_label_smoothing, None, TypeError, "use 0.0 for no smoothing"),
        (ac.check_label_smoothing, True, TypeError, "got bool"),
        (ac.check_label_smoothing, 1.0, ValueError, r"\[0, 1\), got 1.0"),
        (ac.check_ignore_index, None, TypeError, "keep the default -100"),
        (ac.check_ignore_index, -100.0, TypeError, "got float"),
        (ac.check_ignore_index, True, TypeError, "got bool"),
        (ac.check_chunk_size, True, TypeError, "got bool True"),
        (ac.check_chunk_size, "64", TypeError, "got str"),
        (ac.check_chunk_size, -1, ValueError, "got -1"),
        (ac.check_num_items_in_batch, 0, ValueError, "or None to use this batch's own count"),
        (ac.check_num_items_in_batch, 3.0, TypeError, "got float"),
        (ac.check_num_items_in_batch, torch.tensor(True), TypeError, "torch.bool"),
        (ac.check_num_items_in_batch, torch.tensor(0), ValueError, ">= 1, got 0"),
        (ac.check_num_items_in_batch, torch.zeros(2, dtype=torch.long), ValueError, r"\(2,\)"),
    ],
)
def test_bad_values_name_the_argument_and_the_fix(check, value, exc, match):
    with pytest.raises(exc, match=match):
        check(value)


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (ac.check_alpha, -1.0),
        (ac.check_reduction, "x"),
        (ac.check_consistency, "x"),
        (ac.check_label_smoothing, 2.0),
        (ac.check_ignore_index, None),
        (ac.check_chunk_size, 0),
        (ac.check_num_items_in_batch, 0),
    ],
)
def test_callers_name_appears_in_the_message(check, value):
    with pytest.raises((TypeError, ValueError), match=r"^rdrop_thing "):
        check(value, name="rdrop_thing")


def test_check_positive_int():
    assert ac.check_positive_int("every_k_steps", 3, 1) == 3
    assert ac.check_positive_int("alpha_warmup_steps", 0, 0) == 0
    with pytest.raises(ValueError, match="num_passes must be >= 2, got 1"):
        ac.check_positive_int("num_passes", 1, 2)
    with pytest.raises(TypeError, match="every_k_steps must be an int, got float"):
        ac.check_positive_int("every_k_steps", 2.0, 1)
    with pytest.raises(TypeError, match="got bool"):
        ac.check_positive_int("every_k_steps", True, 1)


def test_integer_like_values_are_accepted():
    np = pytest.importorskip("numpy")
    assert ac.check_chunk_size(np.int64(16)) == 16
    assert ac.check_ignore_index(np.int32(-100)) == -100
    assert ac.check_alpha(np.float32(0.5)) == 0.5
    assert ac.check_num_items_in_batch(np.int64(4)) == 4


def test_integer_tensor_count_is_returned_unchanged():
    n = torch.tensor(12, dtype=torch.int32)
    assert ac.check_num_items_in_batch(n) is n


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"consistency": "mse", "label_smoothing": 0.1}, "does not apply to consistency='mse'"),
        ({"chunk_size": 8, "consistency": "js"}, "consistency='js'"),
        ({"chunk_size": 8, "reduction": "none"}, "reduction='none'"),
        ({"chunk_size": 8, "num_passes": 3}, "num_passes=3"),
    ],
)
def test_check_loss_combination_refuses(kwargs, match):
    settings = {"consistency": "kl", "reduction": "mean", "label_smoothing": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        ac.check_loss_combination(**settings)


def test_check_loss_combination_accepts():
    ac.check_loss_combination(consistency="mse", reduction="sum", label_smoothing=0.0)
    ac.check_loss_combination(consistency="kl", reduction="sum", label_smoothing=0.2,
                              chunk_size=4)
    ac.check_loss_combination(consistency="js", reduction="none", label_smoothing=0.2,
                              num_passes=4)


# ------------------------------------------------------------------------------ tensor checks
def test_logits_whose_class_dim_is_ambiguous_warn_once_per_shape(monkeypatch):
    import warnings

    import torch

    from rdrop import rdrop_loss

    from reference import reference_rdrop_loss

    monkeypatch.setattr(ac, "_WARNED_LAYOUTS", set())
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 4, generator=g)  # C == T
    y = torch.randint(0, 4, (2, 4), generator=g)
    with pytest.warns(UserWarning, match=r"fit two layouts.*logits.movedim\(1, -1\)"):
        out = rdrop_loss(l1, l2, y, alpha=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rdrop_loss(l1, l2, y, alpha=1.0)  # once per shape
    # read as classes last, as the message says
    ref = reference_rdrop_loss([l1, l2], y, alpha=1.0)
    torch.testing.assert_close(out.loss.double(), ref["loss"], rtol=1e-5, atol=1e-6)
    # (B, C, H, W) with C == H == W: the same
    with pytest.warns(UserWarning, match="fit two layouts"):
        rdrop_loss(torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3),
                   torch.zeros(2, 3, 3, dtype=torch.long), alpha=1.0)


def test_unambiguous_layouts_do_not_warn():
    import warnings

    import torch

    from rdrop import rdrop_loss

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rdrop_loss(torch.randn(2, 5, 7), torch.randn(2, 5, 7),
                   torch.zeros(2, 5, dtype=torch.long), alpha=1.0)
    with pytest.raises(ValueError, match="movedim"):  # channels-first only: a clear error
        rdrop_loss(torch.randn(2, 7, 5), torch.randn(2, 7, 5),
                   torch.zeros(2, 5, dtype=torch.long), alpha=1.0)


@pytest.mark.parametrize("path", ["plain", "chunked", "single", "mse", "fused", "wrapper"])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_num_items_smaller_than_the_batch_count_is_refused(path, as_tensor):
    import torch

    from rdrop import RDrop, rdrop_loss
    from rdrop.losses.functional import single_pass_loss
    from rdrop.losses.fused_linear import fused_linear_rdrop_loss

    g = torch.Generator().manual_seed(1)
    l1, l2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, -100, 1])  # 5 counted rows

    def call(n):
        n = torch.tensor(n) if as_tensor else n
        if path == "plain":
            return rdrop_loss(l1, l2, y, alpha=1.0, num_items_in_batch=n)
        if path == "chunked":
            return rdrop_loss(l1, l2, y, alpha=1.0, num_items_in_batch=n, chunk_size=2)
        if path == "single":
            return single_pass_loss(l1, y, num_items_in_batch=n)
        if path == "mse":  # 6 samples count
            return rdrop_loss(l1, l2, torch.randn(6, 4), alpha=1.0, consistency="mse",
                              num_items_in_batch=n + 1)
        if path == "fused":
            head = torch.nn.Linear(4, 5)
            return fused_linear_rdrop_loss(l1, l2, head, y, alpha=1.0, num_items_in_batch=n)
        net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.2))
        return RDrop(net, alpha=1.0)(l1, target=y, num_items_in_batch=n)

    with pytest.raises(ValueError, match=r"smaller than this batch's own count of counted"):
        call(4)
    call(5)  # exactly this batch's count: accepted (a single-batch step)
    call(50)  # the count of a larger accumulated batch

"""The checks every loss owns (issue 33, item 6), against literal float64 references:

* one count check: a ``num_items_in_batch`` (or ``num_items_in_subset``) below the batch's own
  count is refused by every loss, not only ``rdrop_loss``; a count at or above it divides;
* ``pos_weight`` of the wrong length is named; CTC logits in torch's (T, N, C) layout are named
  as such; ``zero_infinity=True`` drops an unalignable utterance's consistency term too.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from rdrop import RDrop, ctc_rdrop_loss, multilabel_rdrop_loss, rdrop_loss
from rdrop.losses.ctc import ctc_consistency
from rdrop.losses.subset import subset_rdrop_loss
from reference_heads import ctc_reference, multilabel_reference

from reference import reference_subset_loss

torch.set_num_threads(1)

SHORT = r"smaller than this batch's own count"


def _classes(seed: int = 0):
    """8 rows, 5 classes, row 3 padding: 7 counted targets; the first 4 rows hold 3."""
    g = torch.Generator().manual_seed(seed)
    l1 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    l2 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    y[3] = -100
    return l1, l2, y


def _labels(seed: int = 0):
    """8 rows, 5 labels of 0/1 targets; the mask keeps 6 rows."""
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (8, 5), generator=g).double()
    mask = torch.tensor([True, True, False, True, True, False, True, True])
    return z1, z2, y, mask


# 3 utterances of 5 frames over 3 symbols (blank 0): the reference enumerates 3^5 alignments.
TARGETS = [[1, 2], [2, 2], [1]]
INPUT_LENGTHS = [5, 4, 3]


def _ctc(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    z2 = torch.randn(3, 5, 3, generator=g, dtype=torch.float64)
    padded = torch.tensor([[1, 2], [2, 2], [1, 0]])
    return z1, z2, padded, torch.tensor(INPUT_LENGTHS), torch.tensor([2, 2, 1])


def _dropout_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.Dropout(0.3)).double()


# ------------------------------------------------------------------- one count for every loss
def _call(loss: str, count: int):
    """``loss`` with ``num_items_in_batch=count`` (the subset count at its own, correct value)."""
    if loss == "rdrop_loss":
        l1, l2, y = _classes()
        return rdrop_loss(l1, l2, y, alpha=1.0, num_items_in_batch=count)
    if loss == "subset_rdrop_loss":
        l1, l2, y = _classes()
        return subset_rdrop_loss(l1, l2[:4], y, alpha=1.0, num_items_in_batch=count,
                                 num_items_in_subset=3)
    if loss == "RDrop(second_pass_fraction=0.5)":
        l1, _, y = _classes()
        return RDrop(_dropout_net(), alpha=1.0, second_pass_fraction=0.5)(
            l1, target=y, num_items_in_batch=count, num_items_in_subset=3)
    if loss == "multilabel_rdrop_loss":
        z1, z2, y, mask = _labels()
        return multilabel_rdrop_loss(z1, z2, y, alpha=1.0, mask=mask, num_items_in_batch=count)
    if loss == "RDrop(consistency='bernoulli')":
        z1, _, y, _ = _labels()
        return RDrop(_dropout_net(), alpha=1.0, consistency="bernoulli")(
            z1, target=y, num_items_in_batch=count)
    z1, z2, y, lengths, target_lengths = _ctc()
    return ctc_rdrop_loss(z1, z2, y, lengths, target_lengths, alpha=1.0,
                          num_items_in_batch=count)


# each loss and its batch's own count: counted targets, counted (mask) rows, utterances
OWN_COUNTS = {
    "rdrop_loss": 7,
    "subset_rdrop_loss": 7,
    "RDrop(second_pass_fraction=0.5)": 7,
    "multilabel_rdrop_loss": 6,
    "RDrop(consistency='bernoulli')": 8,
    "ctc_rdrop_loss": 3,
}


@pytest.mark.parametrize("loss", list(OWN_COUNTS))
def test_a_count_below_the_batch_own_is_refused_by_every_loss(loss):
    own = OWN_COUNTS[loss]
    with pytest.raises(ValueError, match=rf"num_items_in_batch={own - 1} is {SHORT}") as err:
        _call(loss, own - 1)
    assert f"({own})" in str(err.value) and "pass None" in str(err.value)
    assert torch.isfinite(_call(loss, own).loss)  # exactly the batch's own: one micro-batch
    assert torch.isfinite(_call(loss, 10 * own).loss)  # a larger accumulated batch


@pytest.mark.parametrize("as_tensor", [False, True], ids=["int", "tensor"])
def test_a_subset_count_below_the_subset_own_is_refused(as_tensor):
    l1, l2, y = _classes()  # the first 4 rows hold 3 counted targets
    n_s = torch.tensor(2) if as_tensor else 2
    with pytest.raises(ValueError, match=rf"num_items_in_subset=2 is {SHORT} .*\(3\)"):
        subset_rdrop_loss(l1, l2[:4], y, alpha=1.0, num_items_in_batch=7, num_items_in_subset=n_s)
    with pytest.raises(ValueError, match=rf"num_items_in_subset=2 is {SHORT}"):
        RDrop(_dropout_net(), alpha=1.0, second_pass_fraction=0.5)(
            l1, target=y, num_items_in_batch=7, num_items_in_subset=n_s)
    with pytest.raises(ValueError, match="num_items_in_subset must be >= 1, got 0"):
        subset_rdrop_loss(l1, l2[:4], y, alpha=1.0, num_items_in_batch=torch.tensor(7),
                          num_items_in_subset=torch.tensor(0))


def test_accepted_counts_divide_as_the_literal_formulas():
    l1, l2, y = _classes()
    out = subset_rdrop_loss(l1, l2[:4], y, alpha=0.7, num_items_in_batch=20,
                            num_items_in_subset=9)
    want = reference_subset_loss(l1, l2[:4], y, [0, 1, 2, 3], alpha=0.7, n_b=20, n_s=9)
    for got, ref in zip((out.loss, out.task_loss, out.consistency_loss), want, strict=True):
        assert torch.allclose(got, ref, atol=1e-12, rtol=1e-12)

    z1, z2, t, mask = _labels()
    out = multilabel_rdrop_loss(z1, z2, t, alpha=0.7, mask=mask, num_items_in_batch=15)
    ref = multilabel_reference([z1, z2], t, 0.7, mask)[0] * 6 / 15  # the reference divides by 6
    assert torch.allclose(out.loss, ref, atol=1e-12, rtol=1e-12)

    z1, z2, yc, lengths, target_lengths = _ctc()
    out = ctc_rdrop_loss(z1, z2, yc, lengths, target_lengths, alpha=0.7, num_items_in_batch=12)
    ref = ctc_reference(z1, z2, TARGETS, INPUT_LENGTHS, 0.7)[0] * 3 / 12  # it divides by 3
    assert torch.allclose(out.loss, ref, atol=1e-10, rtol=1e-10)


def test_check_finite_false_skips_the_count_check_as_rdrop_loss_does():
    z1, z2, y, _ = _labels()
    out = multilabel_rdrop_loss(z1, z2, y, alpha=1.0, num_items_in_batch=2, check_finite=False)
    assert torch.allclose(out.loss, multilabel_reference([z1, z2], y, 1.0)[0] * 8 / 2)


# --------------------------------------------------------------------------------- pos_weight
def test_pos_weight_of_the_wrong_length_is_named():
    z1, z2, y, _ = _labels()
    with pytest.raises(ValueError, match=r"pos_weight has shape \(3,\).*5 labels.*shape \(5,\)"):
        multilabel_rdrop_loss(z1, z2, y, alpha=1.0, pos_weight=torch.ones(3))
    with pytest.raises(TypeError, match=r"pos_weight must be a tensor of shape \(5,\)"):
        multilabel_rdrop_loss(z1, z2, y, alpha=1.0, pos_weight=[1.0] * 5)  # type: ignore[arg-type]
    w = torch.tensor([0.5, 1.0, 2.0, 3.0, 1.5], dtype=torch.float64)
    out = multilabel_rdrop_loss(z1, z2, y, alpha=0.4, pos_weight=w)
    ref = multilabel_reference([z1, z2], y, 0.4, pos_weight=w)[0]
    assert torch.allclose(out.loss, ref, atol=1e-12, rtol=1e-12)


# -------------------------------------------------------------------------------- CTC layout
def test_time_first_ctc_logits_are_named_with_the_fix():
    z1, z2, y, lengths, target_lengths = _ctc()
    t1, t2 = z1.transpose(0, 1), z2.transpose(0, 1)  # torch's (T, N, C) = (5, 3, 3)
    for call in (lambda: ctc_rdrop_loss(t1, t2, y, lengths, target_lengths, alpha=1.0),
                 lambda: ctc_consistency(t1, t2, lengths)):
        with pytest.raises(ValueError, match=r"time-first.*\(T, N, C\)") as err:
            call()
        assert "transpose(0, 1)" in str(err.value)
        assert "input_lengths must" not in str(err.value)


def test_square_ctc_logits_warn_that_they_are_read_batch_first():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 4, 3, generator=g, dtype=torch.float64)  # N == T: both layouts fit
    y = torch.tensor([[1], [2], [1], [2]])
    with pytest.warns(UserWarning, match=r"batch-first \(N, T, C\).*transpose\(0, 1\)"):
        ctc_rdrop_loss(z, z, y, torch.tensor([4, 4, 4, 4]), torch.tensor([1, 1, 1, 1]),
                       alpha=1.0)
    with warnings.catch_warnings():  # once per shape, and never for a rectangular batch
        warnings.simplefilter("error")
        ctc_rdrop_loss(z, z, y, torch.tensor([4, 4, 4, 4]), torch.tensor([1, 1, 1, 1]),
                       alpha=1.0)
        z1, z2, yc, lengths, target_lengths = _ctc()
        ctc_rdrop_loss(z1, z2, yc, lengths, target_lengths, alpha=1.0)


# ----------------------------------------------------------------------- CTC zero_infinity
def test_zero_infinity_drops_the_consistency_term_of_an_unalignable_utterance():
    z1, z2, y, _, target_lengths = _ctc()
    z1.requires_grad_()
    z2.requires_grad_()
    short = torch.tensor([1, 4, 3])  # utterance 0 needs 2 frames for [1, 2]: no alignment
    out = ctc_rdrop_loss(z1, z2, y, short, target_lengths, alpha=0.9, zero_infinity=True)
    # the two alignable utterances, summed, over all 3 utterances (the mean's count)
    kept = ctc_reference(z1[1:], z2[1:], TARGETS[1:], [4, 3], 0.9)
    for got, want in zip((out.loss, out.task_loss, out.consistency_loss), kept, strict=True):
        assert torch.allclose(got, want * 2 / 3, atol=1e-10, rtol=1e-10)
    rows = ctc_rdrop_loss(z1, z2, y, short, target_lengths, alpha=0.9, zero_infinity=True,
                          reduction="none")
    assert float(rows.loss[0].detach()) == 0.0 == float(rows.consistency_loss[0].detach())
    grad = torch.autograd.grad(out.loss, (z1, z2))
    assert all(torch.equal(g[0], torch.zeros(5, 3, dtype=torch.float64)) for g in grad)
    assert all(not math.isnan(float(g.abs().sum())) for g in grad)

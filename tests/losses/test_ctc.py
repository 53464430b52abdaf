"""CTC R-Drop (rdrop.losses.ctc) against the literal float64 reference (every alignment enumerated):
values and gradients, symmetric and detached-target (CR-CTC) forms, frame masking, errors."""

from __future__ import annotations

import pytest
import torch

from rdrop import ctc_rdrop_loss
from rdrop.losses.ctc import ctc_consistency
from reference_heads import ctc_reference

torch.set_num_threads(1)

# 3 utterances, 5 frames, 3 symbols (blank 0): 3^5 = 243 alignments each in the reference.
TARGETS = [[1, 2], [2, 2], [1]]
INPUT_LENGTHS = [5, 4, 3]


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    z2 = torch.randn(3, 5, 3, generator=g, dtype=torch.float64).requires_grad_()
    padded = torch.zeros(3, 2, dtype=torch.long)
    for n, y in enumerate(TARGETS):
        padded[n, :len(y)] = torch.tensor(y)
    return z1, z2, padded, torch.tensor(INPUT_LENGTHS), torch.tensor([len(y) for y in TARGETS])


@pytest.mark.parametrize("detach_target", [False, True], ids=["symmetric", "cr-ctc"])
def test_values_and_gradients_match_the_enumerated_reference(detach_target):
    z1, z2, y, lengths, target_lengths = batch()
    out = ctc_rdrop_loss(z1, z2, y, lengths, target_lengths, alpha=0.7,
                         detach_target=detach_target)
    ref = ctc_reference(z1, z2, TARGETS, INPUT_LENGTHS, 0.7, detach_target=detach_target)
    for got, want in zip((out.loss, out.task_loss, out.consistency_loss), ref, strict=True):
        assert torch.allclose(got, want, atol=1e-10, rtol=1e-10)
    got = torch.autograd.grad(out.loss, (z1, z2))
    want = torch.autograd.grad(ref[0], (z1, z2))
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-10, rtol=1e-8)
    # frames past an utterance's length get no gradient at all
    assert torch.equal(got[0][1, 4:], torch.zeros(1, 3, dtype=torch.float64))
    assert torch.equal(got[0][2, 3:], torch.zeros(2, 3, dtype=torch.float64))


def test_detached_target_has_the_same_value_and_a_different_gradient():
    z1, z2, _, lengths, _ = batch()
    sym = ctc_consistency(z1, z2, lengths)
    cr = ctc_consistency(z1, z2, lengths, detach_target=True)
    assert torch.allclose(sym, cr, atol=1e-14)
    g_sym = torch.autograd.grad(sym, z1)[0]
    g_cr = torch.autograd.grad(cr, z1)[0]
    assert not torch.allclose(g_sym, g_cr, atol=1e-6)


def test_gradcheck_of_the_symmetric_form():
    """(The detached form is a stop-gradient, not the derivative of its value: gradcheck does
    not apply; its gradient is checked against the reference's autograd above.)"""
    z1, z2, y, lengths, target_lengths = batch(seed=1)
    assert torch.autograd.gradcheck(
        lambda a, b: ctc_rdrop_loss(a, b, y, lengths, target_lengths, alpha=1.1).loss, (z1, z2))


def test_identical_passes_give_zero_and_reductions_agree():
    z1, _, y, lengths, target_lengths = batch()
    out = ctc_rdrop_loss(z1, z1, y, lengths, target_lengths, alpha=5.0)
    assert float(out.consistency_loss.detach()) == 0.0
    rows = ctc_rdrop_loss(z1, z1, y, lengths, target_lengths, alpha=5.0, reduction="none")
    assert rows.loss.shape == (3,)
    assert torch.allclose(rows.loss.mean(), out.loss)
    half = ctc_rdrop_loss(z1, z1, y, lengths, target_lengths, alpha=5.0, num_items_in_batch=6)
    assert torch.allclose(half.loss, out.loss / 2)


def test_an_unalignable_target_raises_or_is_zeroed():
    z1, z2, y, _, target_lengths = batch()
    short = torch.tensor([1, 4, 3])  # utterance 0 needs 2 frames for [1, 2]
    with pytest.raises(FloatingPointError, match="cannot be aligned"):
        ctc_rdrop_loss(z1, z2, y, short, target_lengths, alpha=1.0)
    out = ctc_rdrop_loss(z1, z2, y, short, target_lengths, alpha=1.0, zero_infinity=True)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize(("change", "match"), [
    ({"logits": torch.randn(5, 3)}, r"batch-first \(N, T, C\)"),
    ({"lengths": torch.tensor([5, 6, 3])}, r"input_lengths must lie in \[0, 5\]"),
    ({"lengths": torch.tensor([5, 4])}, r"one integer per utterance"),
])
def test_bad_input_is_refused_with_the_fix(change, match):
    z1, z2, y, lengths, target_lengths = batch()
    if "logits" in change:
        z1 = z2 = change["logits"]
    lengths = change.get("lengths", lengths)
    with pytest.raises(ValueError, match=match):
        ctc_rdrop_loss(z1, z2, y, lengths, target_lengths, alpha=1.0)

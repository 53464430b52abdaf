r"""R-Drop for CTC heads (speech, handwriting): both passes' CTC losses plus a frame-level
consistency between their per-frame posteriors (CR-CTC, Yao et al., ICLR 2025).

A CTC model emits, per utterance ``n`` and frame ``t < T_n`` (its input length), a distribution
:math:`P_{nt}` over the ``C`` symbols (blank included). Per utterance:

.. math::
    task_n = CTC(P^1_n, y_n) + CTC(P^2_n, y_n), \qquad
    consistency_n = \sum_{t < T_n} \tfrac12\big(KL(P^1_{nt}\|P^2_{nt})
        + KL(P^2_{nt}\|P^1_{nt})\big)

with :math:`CTC(P, y) = -\log \sum_{\pi \in \mathcal{B}^{-1}(y)} \prod_t P_{t\pi_t}` the
negative log-likelihood over the alignments that collapse to ``y`` (PyTorch's ``ctc_loss`` with
``reduction="none"``). Both terms are sums over the utterance's frames, so ``alpha`` weighs
them as CR-CTC's scale does. Frames at or past the input length do not count.

``detach_target=True`` is CR-CTC's form: each pass is pulled towards the other's *detached*
posterior, :math:`\tfrac12(KL(\mathrm{sg}(P^2)\|P^1) + KL(\mathrm{sg}(P^1)\|P^2))`: the same value,
a different gradient (each KL reaches only the pass it is not conditioned on). CR-CTC writes the
sum without the ``1/2``: its scale ``lambda`` (0.2 for Zipformer) is ``alpha = 2 * lambda`` here.

``reduction="mean"`` divides both sums over utterances by the number of utterances (or by
``num_items_in_batch``), as rdrop's normalization does for rows: note that PyTorch's
``ctc_loss(reduction="mean")`` divides each utterance by its target length instead.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from rdrop.losses.checks import Count, check_alpha, check_counts, check_reduction, raise_count
from rdrop.losses.functional import RDropOutput, compute_dtype, mean_denominator

__all__ = ["ctc_consistency", "ctc_rdrop_loss"]


def _check_logits(logits1: Tensor, logits2: Tensor) -> None:
    for name, t in (("logits1", logits1), ("logits2", logits2)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name} must be a floating tensor of CTC logits, got {what}.")
    if logits1.dim() != 3:
        raise ValueError(
            f"CTC logits must be batch-first (N, T, C), got shape {tuple(logits1.shape)}. "
            "From PyTorch's (T, N, C) layout pass logits.transpose(0, 1)."
        )
    if logits1.shape != logits2.shape or logits1.device != logits2.device:
        raise ValueError(f"the two passes must have one shape and device, got "
                         f"{tuple(logits1.shape)} and {tuple(logits2.shape)}.")


_WARNED_SQUARE: set[tuple[int, ...]] = set()


def _frame_mask(input_lengths: Tensor, logits: Tensor) -> Tensor:
    n, frames = logits.shape[:2]
    lengths = torch.as_tensor(input_lengths, device=logits.device)
    if tuple(lengths.shape) == (frames,) != (n,):
        raise ValueError(
            f"CTC logits of shape {tuple(logits.shape)} look time-first, PyTorch's (T, N, C) "
            f"layout for F.ctc_loss: input_lengths has {frames} entries, the size of dim 1, not "
            "of dim 0. rdrop's CTC losses take batch-first (N, T, C) logits: pass "
            "logits.transpose(0, 1) for both passes."
        )
    if lengths.is_floating_point() or tuple(lengths.shape) != (n,):
        raise ValueError(f"input_lengths must hold one integer per utterance, shape ({n},), got "
                         f"{tuple(lengths.shape)} of {lengths.dtype}.")
    if bool(((lengths < 0) | (lengths > frames)).any()):
        raise ValueError(f"input_lengths must lie in [0, {frames}] (the logits' frames), got "
                         f"{lengths.tolist()}.")
    if n == frames > 1 and tuple(logits.shape) not in _WARNED_SQUARE:
        # (T, N, C) with T == N fits every shape check: say how rdrop reads it, once per shape.
        _WARNED_SQUARE.add(tuple(logits.shape))
        warnings.warn(
            f"CTC logits of shape {tuple(logits.shape)} have as many utterances as frames, so "
            "they fit both batch-first (N, T, C), rdrop's reading, and PyTorch's time-first "
            "(T, N, C). If yours are time-first (the layout F.ctc_loss takes), pass "
            "logits.transpose(0, 1) for both passes. (Warned once per shape.)",
            UserWarning, stacklevel=3)
    return torch.arange(frames, device=logits.device) < lengths.unsqueeze(1)


def _sym_kl_frames(logp1: Tensor, logp2: Tensor, detach_target: bool) -> Tensor:
    """0.5 * (KL(P1||P2) + KL(P2||P1)) per frame; with ``detach_target`` each KL's conditioning
    distribution is detached: 0.5 * (KL(sg P2 || P1) + KL(sg P1 || P2))."""
    if not detach_target:
        return 0.5 * ((logp1.exp() - logp2.exp()) * (logp1 - logp2)).sum(-1)
    t1, t2 = logp1.detach(), logp2.detach()
    kl_to_1 = (t2.exp() * (t2 - logp1)).sum(-1)  # KL(sg P2 || P1): gradient into pass 1
    kl_to_2 = (t1.exp() * (t1 - logp2)).sum(-1)  # KL(sg P1 || P2): gradient into pass 2
    return 0.5 * (kl_to_1 + kl_to_2)


def ctc_consistency(
    logits1: Tensor,
    logits2: Tensor,
    input_lengths: Tensor,
    *,
    detach_target: bool = False,
    reduction: str = "mean",
) -> Tensor:
    r"""The frame-level symmetric KL between two passes' CTC posteriors, summed over each
    utterance's frames ``t < input_lengths[n]`` (module docstring).

    Args:
        logits1, logits2: batch-first CTC logits ``(N, T, C)`` (softmax over ``C``, blank
            included), any floating dtype (computed in float32; float64 stays float64).
        input_lengths: ``(N,)`` valid frames per utterance.
        detach_target: CR-CTC's gradient (each pass against the other's detached posterior).
        reduction: ``"mean"`` over utterances, ``"sum"``, or ``"none"`` (per utterance).

    Returns:
        A scalar, or ``(N,)`` for ``"none"``.

    Raises:
        TypeError: non-floating logits.
        ValueError: logits not ``(N, T, C)`` or of different shapes (time-first ``(T, N, C)``
            logits are named as such where ``input_lengths`` tells them apart; with ``T == N``
            a warning, once per shape, says how they are read); input lengths of the wrong
            shape or outside ``[0, T]``; an unknown reduction.

    Example:
        >>> import torch
        >>> from rdrop.losses.ctc import ctc_consistency
        >>> z = torch.randn(2, 5, 4)
        >>> lengths = torch.tensor([5, 3])
        >>> float(ctc_consistency(z, z, lengths))
        0.0
        >>> w = z.clone(); w[1, 3:] = 9.0               # frames past the length do not count
        >>> float(ctc_consistency(z, w, lengths))
        0.0
    """
    _check_logits(logits1, logits2)
    reduction = check_reduction(reduction)
    frames = _frame_mask(input_lengths, logits1)
    dtype = compute_dtype(logits1.dtype)
    logp1, logp2 = (torch.log_softmax(z.to(dtype), -1) for z in (logits1, logits2))
    per_frame = _sym_kl_frames(logp1, logp2, detach_target)
    rows = torch.where(frames, per_frame, 0.0).sum(-1)  # type: ignore[arg-type]
    if reduction == "none":
        return rows
    return rows.sum() / (rows.shape[0] if reduction == "mean" and rows.shape[0] else 1.0)


def ctc_rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    *,
    alpha: float,
    blank: int = 0,
    detach_target: bool = False,
    zero_infinity: bool = False,
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop (or CR-CTC with ``detach_target=True``) for a CTC head.

    Per utterance ``n``:

    .. math::
        \mathcal{L}_n = CTC(P^1_n, y_n) + CTC(P^2_n, y_n)
            + \alpha \sum_{t < T_n} \tfrac12\big(KL(P^1_{nt}\|P^2_{nt})
            + KL(P^2_{nt}\|P^1_{nt})\big)

    averaged over utterances for ``reduction="mean"`` (module docstring: the CR-CTC form, and
    how its scale maps to ``alpha``).

    Args:
        logits1, logits2: batch-first CTC logits ``(N, T, C)`` of the two passes (two noisy
            views: dropout, or CR-CTC's two SpecAugment draws).
        targets: as for ``torch.nn.functional.ctc_loss``: ``(N, S)`` padded, or the targets of
            all utterances concatenated (1-D).
        input_lengths, target_lengths: ``(N,)`` each.
        alpha: consistency weight ``>= 0``.
        blank: the blank symbol's index.
        detach_target: CR-CTC's gradient (see :func:`ctc_consistency`).
        zero_infinity: give 0 loss (and gradient) to utterances no alignment can produce
            (``ctc_loss``'s option), task and consistency terms alike; otherwise their loss is
            infinite and ``check_finite`` raises.
        reduction: ``"mean"`` over utterances, ``"sum"``, or ``"none"`` (per utterance).
        num_items_in_batch: for ``"mean"``: the utterances of the whole accumulated batch (at
            least this batch's ``N``: a smaller count would scale the loss up, and is refused
            by ``check_finite``'s sync).
        check_finite: one device sync: raise if the loss is not finite, saying why, or if
            ``num_items_in_batch`` is below this batch's ``N``.

    Returns:
        :class:`rdrop.RDropOutput` (``task_loss`` sums both passes' CTC losses).

    Raises:
        TypeError, ValueError: as :func:`ctc_consistency`; ``alpha < 0``; with
            ``check_finite``, ``num_items_in_batch`` below this batch's number of utterances.
        FloatingPointError: with ``check_finite``, a loss that is not finite (an utterance
            whose target cannot be aligned in its frames, NaN logits).

    Example:
        >>> import torch
        >>> from rdrop import ctc_rdrop_loss
        >>> z1, z2 = torch.randn(2, 6, 5), torch.randn(2, 6, 5)  # 2 utterances, 6 frames, 5 symbols
        >>> y = torch.tensor([[1, 2, 2], [3, 4, 0]])
        >>> out = ctc_rdrop_loss(z1, z2, y, torch.tensor([6, 5]), torch.tensor([3, 2]), alpha=0.4,
        ...                      detach_target=True)
        >>> bool(torch.isclose(out.loss, out.task_loss + 0.4 * out.consistency_loss))
        True
    """
    _check_logits(logits1, logits2)
    alpha = check_alpha(alpha)
    reduction = check_reduction(reduction)
    frames = _frame_mask(input_lengths, logits1)
    dtype = compute_dtype(logits1.dtype)
    logp1, logp2 = (torch.log_softmax(z.to(dtype), -1) for z in (logits1, logits2))
    lengths = torch.as_tensor(input_lengths, device=logits1.device)

    def ctc(lp: Tensor, zero: bool) -> Tensor:
        return torch.nn.functional.ctc_loss(lp.transpose(0, 1), targets, lengths, target_lengths,
                                            blank=blank, reduction="none", zero_infinity=zero)

    task_rows = ctc(logp1, zero_infinity) + ctc(logp2, zero_infinity)
    if zero_infinity:
        # The utterances whose CTC loss zero_infinity zeroes leave the consistency term too.
        # Found on an extra forward without zero_infinity: the zeroed loss itself cannot say
        # (a confident pass's loss may round to 0), and no gradient flows through it.
        with torch.no_grad():
            frames = frames & (torch.isfinite(ctc(logp1.detach(), False))
                               & torch.isfinite(ctc(logp2.detach(), False))).unsqueeze(1)
    cons_rows = torch.where(frames, _sym_kl_frames(logp1, logp2, detach_target), 0.0).sum(-1)  # type: ignore[arg-type]
    counts: list[Count] = []
    if reduction == "none":
        task, cons = task_rows, cons_rows
    else:
        keep = torch.ones(logits1.shape[0], dtype=torch.bool, device=logits1.device)
        denom = mean_denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
        task, cons = task_rows.sum() / denom, cons_rows.sum() / denom
        if reduction == "mean" and num_items_in_batch is not None:
            counts.append(Count("num_items_in_batch", denom, keep, what="utterances",
                                how="count the utterances (logits.shape[0] of each micro-batch)"))
    loss = task + alpha * cons  # type: ignore[operator]
    if check_finite:
        _check_finite(loss, logits1, logits2, counts)  # type: ignore[arg-type]
    return RDropOutput(loss=loss, task_loss=task, consistency_loss=cons)  # type: ignore[arg-type]


def _check_finite(loss: Tensor, logits1: Tensor, logits2: Tensor, counts: list[Count]) -> None:
    ok = torch.isfinite(loss.detach()).all()
    enough = check_counts(counts)
    if bool(ok if enough is None else ok & enough):  # the one device sync
        return
    raise_count(counts)
    nan = [f"pass {k + 1}" for k, z in enumerate((logits1, logits2))
           if bool(torch.isnan(z.detach()).any())]
    why = (f"NaN in the logits of {', '.join(nan)}: the model diverged" if nan else
           "an utterance's target cannot be aligned in its frames (a CTC alignment needs "
           "at least target length + repeated symbols frames); check input_lengths and "
           "target_lengths, or pass zero_infinity=True")
    raise FloatingPointError(f"CTC R-Drop loss is not finite ({why}). Pass "
                             "check_finite=False to skip this check.")

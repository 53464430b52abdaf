r"""R-Drop for multi-label (sigmoid) heads: the Bernoulli symmetric KL between passes.

A multi-label head predicts, per row ``i`` and label ``c``, an independent Bernoulli
:math:`p_{ic} = \sigma(z_{ic})`. Its task loss is ``BCEWithLogits``; the divergence between two
passes is the KL between their Bernoulli distributions, label by label. Symmetrized, it has a
closed form in the logits (``logit(p) = z``):

.. math::
    \tfrac12\big(KL(B(p)\|B(q)) + KL(B(q)\|B(p))\big) = \tfrac12 (p - q)\,(z_p - z_q)

finite for every finite logit, with no ``log`` of a probability that could underflow. Per row
that counts (``mask``), over ``m`` passes, with ``C`` labels:

.. math::
    task_i = \sum_{k=1}^{m} \frac1C \sum_c BCE(z^k_{ic}, y_{ic}), \qquad
    consistency_i = \binom{m}{2}^{-1} \sum_{j<k} \frac1C \sum_c
        \tfrac12 (p^j_{ic} - p^k_{ic})(z^j_{ic} - z^k_{ic})

and ``reduction="mean"`` divides both sums over rows by the number of counted rows (or by
``num_items_in_batch``), as :func:`rdrop.rdrop_loss` does: the labels are averaged, as
``BCEWithLogitsLoss`` averages them, so ``alpha`` weighs a per-row divergence against a per-row
BCE and does not depend on the number of labels, rows or the batch size. With one pass
(``m = 1``) it is the plain BCE task loss (``consistency_loss = 0``), for evaluation and the
steps R-Drop skips. Computed in float32 (float64 stays float64).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rdrop.losses.checks import Count, check_alpha, check_counts, check_reduction, raise_count
from rdrop.losses.functional import RDropOutput, compute_dtype, mean_denominator

__all__ = [
    "MultiLabelLoss",
    "bernoulli_symmetric_kl",
    "multi_pass_multilabel_loss",
    "multilabel_rdrop_loss",
]


def _check_passes(passes: Sequence[Tensor]) -> None:
    for k, t in enumerate(passes):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"pass {k + 1}: multi-label logits must be a floating tensor, got "
                            f"{what}.")
        if t.shape != passes[0].shape or t.device != passes[0].device:
            raise ValueError(
                f"the passes must have one shape and device, got {tuple(passes[0].shape)} on "
                f"{passes[0].device} and {tuple(t.shape)} on {t.device}. Pass the outputs of the "
                "same model on the same batch."
            )
    if passes[0].dim() < 1 or passes[0].shape[-1] < 1:
        raise ValueError(f"multi-label logits need the labels last, (N, C) or (..., C), got "
                         f"shape {tuple(passes[0].shape)}.")


def _keep(mask: Tensor | None, logits: Tensor) -> Tensor:
    rows = tuple(logits.shape[:-1])
    if mask is None:
        return torch.ones(rows, dtype=torch.bool, device=logits.device)
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"mask must be a bool tensor marking the rows that count, got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}.")
    if tuple(mask.shape) != rows:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal logits.shape[:-1] = {rows} "
                         "(one flag per row; a row is all labels of one sample).")
    return mask.to(device=logits.device, dtype=torch.bool)


def _target(target: Tensor, logits: Tensor) -> Tensor:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"multi-label target shape {tuple(target.shape)} must equal the logits' "
            f"{tuple(logits.shape)}: one 0/1 (or soft, in [0, 1]) value per row and label. "
            "For class indices use rdrop.rdrop_loss."
        )
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but the logits are on {logits.device}.")
    return target.to(compute_dtype(logits.dtype))


def _pos_weight(pos_weight: Tensor | None, logits: Tensor) -> Tensor | None:
    if pos_weight is None:
        return None
    if not isinstance(pos_weight, Tensor):
        raise TypeError(f"pos_weight must be a tensor of shape ({logits.shape[-1]},) (one weight "
                        f"per label), got {type(pos_weight).__name__}; wrap it in "
                        "torch.tensor(...).")
    shape = tuple(logits.shape)
    try:
        fits = torch.broadcast_shapes(tuple(pos_weight.shape), shape) == shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"pos_weight has shape {tuple(pos_weight.shape)} but the logits have "
            f"{shape[-1]} labels (shape {shape}): pass one weight per label, shape "
            f"({shape[-1]},), as for BCEWithLogitsLoss(pos_weight=...)."
        )
    return pos_weight.to(device=logits.device, dtype=compute_dtype(logits.dtype))


def _bernoulli_sym_kl(z1: Tensor, z2: Tensor) -> Tensor:
    """0.5 * (p1 - p2) * (z1 - z2) per element = the symmetric Bernoulli KL (module docstring)."""
    return 0.5 * (torch.sigmoid(z1) - torch.sigmoid(z2)) * (z1 - z2)


def multi_pass_multilabel_loss(
    passes: Sequence[Tensor] | Tensor,
    target: Tensor,
    *,
    alpha: float,
    mask: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop for a multi-label head over ``m >= 1`` passes (math in the module docstring).

    Args:
        passes: ``m`` logit tensors of one shape ``(N, C)`` or ``(..., C)``, or one tensor
            stacked on dim 0 ``(m, ..., C)``.
        target: 0/1 (or soft) labels of the logits' shape, any dtype (read as floats).
        alpha: consistency weight ``>= 0``.
        mask: optional bool tensor of shape ``logits.shape[:-1]``; ``False`` rows do not count
            (their loss and gradient are 0, whatever their logits).
        pos_weight: optional weight of the positive term of each label's BCE, shape ``(C,)``,
            as ``BCEWithLogitsLoss(pos_weight=...)`` (any shape that broadcasts to the logits').
        reduction: ``"mean"`` over counted rows, ``"sum"``, or ``"none"`` (per-row values).
        num_items_in_batch: for ``"mean"``: the counted rows of the whole accumulated batch (at
            least this batch's: a smaller count would scale the loss up, and is refused by
            ``check_finite``'s sync).
        check_finite: one device sync per call: raise if the loss is not finite, a counted
            target lies outside ``[0, 1]`` or ``num_items_in_batch`` is below this batch's
            count of counted rows, saying which.

    Returns:
        :class:`rdrop.RDropOutput` (``task_loss`` sums the passes' BCE).

    Raises:
        TypeError: non-floating logits, a non-bool mask, a non-tensor target.
        ValueError: passes of different shapes, a target of another shape than the logits, a
            mask or ``pos_weight`` of the wrong shape, ``alpha < 0``, an unknown reduction; with
            ``check_finite``, a counted target outside ``[0, 1]``, NaN/inf logits at a counted
            row, or ``num_items_in_batch`` below this batch's count of counted rows.

    Example:
        >>> import torch
        >>> from rdrop.losses.multilabel import multi_pass_multilabel_loss
        >>> z = torch.randn(3, 4, 5)                      # 3 passes, 4 rows, 5 labels
        >>> y = torch.randint(0, 2, (4, 5)).float()
        >>> one = multi_pass_multilabel_loss(z[:1], y, alpha=1.0)
        >>> bce = torch.nn.functional.binary_cross_entropy_with_logits(z[0], y)
        >>> bool(torch.isclose(one.loss, bce)), float(one.consistency_loss)
        (True, 0.0)
    """
    passes = list(passes.unbind(0)) if isinstance(passes, Tensor) else list(passes)
    if not passes:
        raise ValueError("multi-label R-Drop needs at least one pass, got none.")
    _check_passes(passes)
    alpha = check_alpha(alpha)
    reduction = check_reduction(reduction)
    keep = _keep(mask, passes[0])
    y = _target(target, passes[0])
    dtype = compute_dtype(passes[0].dtype)
    # Rows that do not count enter as logit 0: loss 0 there, and (through where) gradient 0,
    # even for NaN or inf logits at padding rows.
    zs = [torch.where(keep.unsqueeze(-1), z.to(dtype), 0.0) for z in passes]
    weight = _pos_weight(pos_weight, passes[0])
    task_rows = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(
            z, y, pos_weight=weight, reduction="none").mean(-1) for z in zs)
    pairs = list(itertools.combinations(range(len(zs)), 2))
    cons_rows = (sum(_bernoulli_sym_kl(zs[a], zs[b]).mean(-1) for a, b in pairs) / len(pairs)
                 if pairs else torch.zeros_like(task_rows))
    task_rows = torch.where(keep, task_rows, 0.0)  # type: ignore[arg-type]
    cons_rows = torch.where(keep, cons_rows, 0.0)  # type: ignore[arg-type]
    counts: list[Count] = []
    if reduction == "none":
        task, cons = task_rows, cons_rows
    else:
        denom = mean_denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
        task, cons = task_rows.sum() / denom, cons_rows.sum() / denom
        if reduction == "mean" and num_items_in_batch is not None:
            counts.append(Count("num_items_in_batch", denom, keep, what="counted rows",
                                how="count the rows that mask= keeps (every row without one)"))
    loss = task + alpha * cons
    if check_finite:
        _check_finite(loss, passes, y, keep, counts)
    return RDropOutput(loss=loss, task_loss=task, consistency_loss=cons)


def _check_finite(loss: Tensor, passes: list[Tensor], y: Tensor, keep: Tensor,
                  counts: list[Count]) -> None:
    counted = keep.unsqueeze(-1).expand_as(y)
    bad_target = counted & ((y < 0) | (y > 1) | torch.isnan(y))
    ok = torch.isfinite(loss.detach()).all() & ~bad_target.any()
    enough = check_counts(counts)
    if enough is not None:
        ok = ok & enough
    if bool(ok):  # the one device sync
        return
    raise_count(counts)
    if bool(bad_target.any()):
        found = y[bad_target]
        raise ValueError(
            f"multi-label targets must lie in [0, 1] (0/1 labels, or soft labels) at the rows "
            f"that count; found {found.numel()} value(s) outside, e.g. {float(found[0])}. Mask "
            "padding rows with mask= instead of marking them with -100."
        )
    bad = [f"pass {k + 1}" for k, z in enumerate(passes)
           if not bool(torch.isfinite(z.detach()[keep]).all())]
    raise FloatingPointError(
        f"multi-label R-Drop loss is not finite (NaN or inf logits at counted rows of "
        f"{', '.join(bad) or 'the passes'}). The model diverged or produced invalid outputs: "
        "lower the learning rate, clip gradients, and check the inputs. Pass "
        "check_finite=False to skip this check."
    )


def multilabel_rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    *,
    alpha: float,
    mask: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop for a multi-label (sigmoid) head: both passes' ``BCEWithLogits`` plus alpha times
    the per-label symmetric KL between the passes' Bernoulli distributions.

    Per counted row ``i`` with ``C`` labels, :math:`p = \sigma(z)`:

    .. math::
        \mathcal{L}_i = \frac1C\sum_c \big[BCE(z^1_{ic}, y_{ic}) + BCE(z^2_{ic}, y_{ic})\big]
            + \alpha\,\frac1C\sum_c \tfrac12 (p^1_{ic} - p^2_{ic})(z^1_{ic} - z^2_{ic})

    (the second term is :math:`\tfrac12(KL(B(p^1)\|B(p^2)) + KL(B(p^2)\|B(p^1)))`), averaged
    over counted rows for ``reduction="mean"``. More passes:
    :func:`multi_pass_multilabel_loss`.

    Args:
        logits1, logits2: the two passes, ``(N, C)`` or ``(..., C)``.
        target: 0/1 or soft labels of the logits' shape.
        alpha, mask, pos_weight, reduction, num_items_in_batch, check_finite: as in
            :func:`multi_pass_multilabel_loss`.

    Returns:
        :class:`rdrop.RDropOutput`.

    Raises:
        TypeError, ValueError, FloatingPointError: as :func:`multi_pass_multilabel_loss`.

    Example:
        >>> import torch
        >>> from rdrop import multilabel_rdrop_loss
        >>> z1, z2 = torch.randn(4, 6), torch.randn(4, 6)
        >>> y = torch.randint(0, 2, (4, 6)).float()
        >>> rows = torch.tensor([True, True, True, False])   # the last row is padding
        >>> out = multilabel_rdrop_loss(z1, z2, y, alpha=1.0, mask=rows)
        >>> same = multilabel_rdrop_loss(z1, z1, y, alpha=1.0)
        >>> bool(out.consistency_loss > 0), float(same.consistency_loss)
        (True, 0.0)
    """
    return multi_pass_multilabel_loss(
        [logits1, logits2], target, alpha=alpha, mask=mask, pos_weight=pos_weight,
        reduction=reduction, num_items_in_batch=num_items_in_batch, check_finite=check_finite)


def bernoulli_symmetric_kl(
    logits1: Tensor,
    logits2: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Per-label symmetric KL between the Bernoulli distributions of two sigmoid heads, averaged
    over labels per row.

    .. math::
        D_i = \frac1C \sum_c \tfrac12\big(KL(B(p^1_{ic})\|B(p^2_{ic}))
            + KL(B(p^2_{ic})\|B(p^1_{ic}))\big)
            = \frac1C \sum_c \tfrac12 (p^1_{ic} - p^2_{ic})(z^1_{ic} - z^2_{ic})

    Args:
        logits1, logits2: sigmoid logits, ``(..., C)``.
        mask: optional bool rows that count, shape ``logits1.shape[:-1]``.
        reduction: ``"mean"`` over counted rows (0 if none), ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or per-row values for ``"none"`` (0 at masked rows).

    Raises:
        TypeError, ValueError: as :func:`multi_pass_multilabel_loss`.

    Example:
        >>> import torch
        >>> from rdrop.losses.multilabel import bernoulli_symmetric_kl
        >>> z = torch.tensor([[0.0, 2.0]])
        >>> round(float(bernoulli_symmetric_kl(z, -z)), 4)   # (0 + 0.5 * 0.7616 * 4) / 2
        0.7616
    """
    _check_passes([logits1, logits2])
    reduction = check_reduction(reduction)
    keep = _keep(mask, logits1)
    dtype = compute_dtype(logits1.dtype)
    z1, z2 = (torch.where(keep.unsqueeze(-1), z.to(dtype), 0.0) for z in (logits1, logits2))
    rows = _bernoulli_sym_kl(z1, z2).mean(-1)
    if reduction == "none":
        return rows
    return rows.sum() / (mean_denominator(keep, None) if reduction == "mean" else 1.0)


@dataclass(frozen=True)
class MultiLabelLoss:
    """The loss of a training step's passes for a multi-label head (the step's ``loss=``, as
    :class:`rdrop.training.step.LogitsLoss` is for softmax heads):
    :func:`multi_pass_multilabel_loss` of the passes, one pass giving the plain BCE.
    ``loss(passes, target, alpha, num_items)``.

    The function runs with ``alpha=1`` and the step's alpha is applied after it, so a warm-up
    alpha never enters a compiled graph as a constant.

    Attributes:
        reduction, check_finite: as in :func:`multi_pass_multilabel_loss`.
        pos_weight: optional ``(C,)`` weight of each label's positive term.

    Example:
        >>> import torch
        >>> z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
        >>> y = torch.randint(0, 2, (4, 3)).float()
        >>> out = MultiLabelLoss()([z1, z2], y, 0.5, None)
        >>> bool(torch.isclose(out.loss, multilabel_rdrop_loss(z1, z2, y, alpha=0.5).loss))
        True
    """

    reduction: str = "mean"
    check_finite: bool = True
    pos_weight: Tensor | None = None

    def __post_init__(self) -> None:
        check_reduction(self.reduction)
        if not isinstance(self.check_finite, bool):
            raise TypeError(
                f"check_finite must be a bool, got {type(self.check_finite).__name__}.")

    def __call__(self, passes: list[Tensor], target: Tensor, alpha: float,
                 num_items_in_batch: int | Tensor | None = None) -> RDropOutput:
        out = multi_pass_multilabel_loss(
            passes, target, alpha=1.0, pos_weight=self.pos_weight, reduction=self.reduction,
            num_items_in_batch=num_items_in_batch, check_finite=self.check_finite)
        return RDropOutput(out.task_loss + alpha * out.consistency_loss, out.task_loss,
                           out.consistency_loss)

r"""R-Drop with the second pass on a subset of the rows (``second_pass_fraction``).

The first pass runs on all ``B`` rows of the batch, the second pass only on the first
``n = ceil(r * B)`` rows ``S`` (loaders shuffle, so ``S`` is a random subset), and the
consistency term compares the two passes on ``S``:

.. math::
    \mathcal{L} = \frac{1}{N_B} \sum_{i \in B} CE(P^1_i, y_i)
        + \frac{1}{N_S} \sum_{i \in S} \Big[ CE(P^2_i, y_i)
        + \alpha \cdot \tfrac12\big(KL(P^1_i \| P^2_i) + KL(P^2_i \| P^1_i)\big) \Big]

``N_B`` and ``N_S`` count the targets that are not ``ignore_index`` (tokens of a sequence
model, samples of a classifier) in ``B`` and in ``S``. Each term is a per-counted-row mean, so
``alpha`` means what it means in :func:`rdrop.rdrop_loss`, and at ``r = 1`` (``S = B``) the
loss *is* :func:`rdrop.rdrop_loss`. A forward over ``(1 + r) B`` rows replaces the ``2B`` of
full R-Drop: at ``r = 0.25`` a step costs about ``1.25x`` a plain step instead of ``2x``.

Gradient accumulation: pass ``num_items_in_batch`` (the counted targets of *all* rows of the
accumulated batch) and ``num_items_in_subset`` (the counted targets of the subset rows of every
micro-batch, :func:`subset_count`); the sum of the micro-batches' gradients is then the
gradient of the formula over the whole accumulated batch with ``S`` the union of the
micro-batches' subsets. Under DDP the same rule as ``num_items_in_batch`` applies to both counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rdrop.losses._rows import js_rows, log_probs, nll_rows, sym_kl_rows, upcast
from rdrop.losses.checks import (
    IGNORE_INDEX,
    Count,
    Targets,
    check_alpha,
    check_class_target,
    check_consistency,
    check_ignore_index,
    check_label_smoothing,
    check_loss_combination,
    check_num_items_in_batch,
    check_pair,
    check_result,
)
from rdrop.losses.functional import RDropOutput, mean_denominator, multi_pass_rdrop_loss

__all__ = ["check_second_pass_fraction", "subset_count", "subset_rdrop_loss", "subset_size"]


def check_second_pass_fraction(fraction: float, *, name: str = "second_pass_fraction") -> float:
    """Check ``0 < fraction <= 1`` (a real number, not a bool) and return it as a float.

    Raises:
        TypeError: not a real number.
        ValueError: outside ``(0, 1]`` or not finite.

    Example:
        >>> check_second_pass_fraction(0.25)
        0.25
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"{name} must be a float in (0, 1], got {type(fraction).__name__}.")
    if not math.isfinite(fraction) or not 0.0 < fraction <= 1.0:
        raise ValueError(
            f"{name} must lie in (0, 1], got {fraction}: the second pass runs on the first "
            f"ceil({name} * B) rows of each batch (1 = every row, full R-Drop)."
        )
    return float(fraction)


def subset_size(batch_size: int, fraction: float) -> int:
    r"""Rows of the second pass: :math:`n = \lceil r B \rceil` (at least 1, at most ``B``).

    ``r * B`` is rounded to 9 decimals before the ceiling, so a product such as
    ``0.1 * 30 = 3.0000000000000004`` gives 3, not 4.

    Args:
        batch_size: ``B >= 1``, the rows of the first pass.
        fraction: ``r`` in ``(0, 1]``.

    Returns:
        ``n``.

    Raises:
        ValueError: ``fraction < 1`` and ``B = 1``: one row cannot be subset (a batch of one
            sequence, or a packed batch of many sequences in one row), so the fraction would
            silently be 1.

    Example:
        >>> subset_size(16, 0.25), subset_size(10, 0.25), subset_size(30, 0.1), subset_size(1, 1.0)
        (4, 3, 3, 1)
    """
    fraction = check_second_pass_fraction(fraction)
    if batch_size < 1:
        raise ValueError(f"the batch needs at least one row, got {batch_size}.")
    if fraction < 1.0 and batch_size == 1:
        raise ValueError(
            f"second_pass_fraction={fraction} needs a batch of at least 2 rows to take a subset "
            "of, got 1 row (a single sequence, or packed sequences laid out in one row). Use a "
            "padded batch of several rows, second_pass_fraction=1.0, or disable packing / "
            "padding_free."
        )
    return max(1, min(batch_size, math.ceil(round(fraction * batch_size, 9))))


def subset_count(target: Tensor, fraction: float, *, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Counted targets (``!= ignore_index``) in the first :func:`subset_size` rows of ``target``.

    Sum it over the micro-batches of an accumulated step to get ``num_items_in_subset``.

    Example:
        >>> import torch
        >>> y = torch.tensor([[1, 2, -100], [3, -100, -100], [4, 5, 6], [7, 8, 9]])
        >>> int(subset_count(y, 0.5))   # rows 0 and 1: 2 + 1 counted tokens
        3
    """
    n = subset_size(target.shape[0], fraction)
    return (target[:n] != ignore_index).sum()


def _check_counts(num_items_in_batch: int | Tensor | None,
                  num_items_in_subset: int | Tensor | None) -> None:
    check_num_items_in_batch(num_items_in_batch)
    check_num_items_in_batch(num_items_in_subset, name="num_items_in_subset")
    if (num_items_in_batch is None) != (num_items_in_subset is None):
        raise ValueError(
            "pass num_items_in_batch and num_items_in_subset together (the counted targets of "
            "all rows, and of the second pass's rows, over the whole accumulated batch; "
            "rdrop.losses.subset.subset_count counts one micro-batch's subset), or neither to use "
            "this batch's own counts."
        )
    if isinstance(num_items_in_batch, int) and isinstance(num_items_in_subset, int) and (
        num_items_in_subset > num_items_in_batch
    ):
        raise ValueError(
            f"num_items_in_subset ({num_items_in_subset}) cannot exceed num_items_in_batch "
            f"({num_items_in_batch}): the subset's rows are rows of the batch."
        )


def subset_rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    *,
    alpha: float,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    consistency: str = "kl",
    num_items_in_batch: int | Tensor | None = None,
    num_items_in_subset: int | Tensor | None = None,
    stop_gradient: bool = False,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop whose second pass covers only the first ``n`` rows of the batch.

    With ``S`` the first ``n = logits2.shape[0]`` rows and ``N_B``, ``N_S`` the counted targets
    of ``B`` and ``S``:

    .. math::
        \mathcal{L} = \frac{1}{N_B}\sum_{i \in B} CE(P^1_i, y_i)
            + \frac{1}{N_S}\sum_{i \in S}\big[CE(P^2_i, y_i) + \alpha\, D(P^1_i, P^2_i)\big]

    with ``D`` the symmetric KL (``"js"``: Jensen-Shannon; ``"mse"``: the squared difference,
    CE then being the MSE to the target, a row being one sample). With ``n = B`` (and the two
    counts both ``None``, or the same object) it *is* :func:`rdrop.rdrop_loss`
    (``reduction="mean"``): the same call, bit for bit. ``stop_gradient=True`` is the
    stop-gradient variant on the subset: ``P^2`` is a detached target and its CE term is left
    out (it has no gradient), so
    :math:`\mathcal{L} = \frac{1}{N_B}\sum_B CE(P^1) + \frac{\alpha}{N_S}\sum_S D(P^1, \bar P^2)`.

    An all-padding subset gives a 0 second term (``N_S`` is clamped to 1, as in
    :func:`rdrop.losses.functional.mean_denominator`). Computed in float32 (float64 stays float64)
    from ``log_softmax``; the plain (unchunked) path.

    Args:
        logits1: the first pass over all rows, ``(B, C)`` or ``(B, T, V)``, classes last.
        logits2: the second pass over the first ``n`` rows, ``(n, C)`` or ``(n, T, V)``,
            ``1 <= n <= B``.
        target: ``logits1.shape[:-1]`` class indices (any integer dtype); for ``"mse"``
            floating values shaped like ``logits1`` (or ``(B,)`` for a ``(B, 1)`` head).
        alpha: consistency weight ``>= 0``.
        ignore_index, label_smoothing, consistency: as in :func:`rdrop.rdrop_loss`.
        num_items_in_batch: ``N_B`` over the whole accumulated (under DDP, global) batch;
            ``None`` counts this batch's rows. Give it together with ``num_items_in_subset``.
        num_items_in_subset: ``N_S`` over the whole accumulated batch: the sum over its
            micro-batches of :func:`subset_count`. Gradient accumulation then gives the gradient
            of the formula over the whole accumulated batch, ``S`` being the union of the
            micro-batches' subsets.
        stop_gradient: treat the second pass as a detached target (see above).
        check_finite: the one device sync of :func:`rdrop.rdrop_loss` (a non-finite loss,
            counted targets outside ``[0, C)``, non-positive tensor counts, a count smaller
            than this batch's own (``num_items_in_batch`` below ``N_B`` or
            ``num_items_in_subset`` below ``N_S``: it would scale the loss up), NaN logits at
            ignored rows), with the same messages.

    Returns:
        :class:`rdrop.RDropOutput`: ``task_loss`` the CE terms (``1/N_B`` and ``1/N_S``
        parts), ``consistency_loss`` the ``1/N_S`` mean of ``D`` before alpha.

    Raises:
        TypeError, ValueError, FloatingPointError: as :func:`rdrop.rdrop_loss`; ``logits2``
            with more rows than ``logits1`` or another shape after the rows; only one of the
            two counts given, or ``num_items_in_subset > num_items_in_batch``.

    Example:
        >>> import torch
        >>> from rdrop import rdrop_loss
        >>> from rdrop.losses.subset import subset_rdrop_loss
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> l1, l2, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
        >>> out = subset_rdrop_loss(l1, l2[:2], y, alpha=1.0)   # second pass on 2 of 8 rows
        >>> full = subset_rdrop_loss(l1, l2, y, alpha=1.0)      # n = B: rdrop_loss
        >>> bool(torch.allclose(full.loss, rdrop_loss(l1, l2, y, alpha=1.0).loss))
        True
    """
    alpha = check_alpha(alpha)
    consistency = check_consistency(consistency)
    label_smoothing = check_label_smoothing(label_smoothing)
    check_loss_combination(consistency=consistency, reduction="mean",
                           label_smoothing=label_smoothing)
    return _subset_rdrop_loss(
        logits1, logits2, target, alpha=alpha, ignore_index=ignore_index,
        label_smoothing=label_smoothing, consistency=consistency, stop_gradient=stop_gradient,
        num_items_in_batch=num_items_in_batch, num_items_in_subset=num_items_in_subset,
        check_finite=check_finite)


def _subset_rdrop_loss(logits1: Tensor, logits2: Tensor, target: Tensor, *, alpha: float,
                       ignore_index: int, label_smoothing: float, consistency: str,
                       stop_gradient: bool, num_items_in_batch: int | Tensor | None,
                       num_items_in_subset: int | Tensor | None, check_finite: bool
                       ) -> RDropOutput:
    """:func:`subset_rdrop_loss` after its settings were checked (once, by the caller that
    owns them: :class:`rdrop.training.step.LogitsLoss` checks its own at construction); the
    tensors and counts are checked here, every call."""
    for name, t in (("logits1", logits1), ("logits2", logits2)):
        if not isinstance(t, Tensor) or t.dim() < 1:
            raise TypeError(f"{name} must be a torch.Tensor with a row dimension first.")
    n, rows = logits2.shape[0], logits1.shape[0]
    if not 1 <= n <= rows or logits2.shape[1:] != logits1.shape[1:]:
        raise ValueError(
            f"logits2 must hold the second pass of the first n rows of the batch, 1 <= n <= "
            f"{rows}, shaped like logits1 after dim 0; got logits1 {tuple(logits1.shape)} and "
            f"logits2 {tuple(logits2.shape)}."
        )
    _check_counts(num_items_in_batch, num_items_in_subset)
    if n == rows and not stop_gradient and num_items_in_subset is num_items_in_batch:
        # S = B: exactly rdrop_loss (same code path, bit for bit, including its lean path).
        return multi_pass_rdrop_loss([logits1, logits2], target, alpha=alpha,
                                     ignore_index=ignore_index, label_smoothing=label_smoothing,
                                     consistency=consistency,
                                     num_items_in_batch=num_items_in_batch,
                                     check_finite=check_finite)
    first = logits1[:n]
    check_pair(first, logits2)
    second = logits2.detach() if stop_gradient else logits2
    if consistency == "mse":
        return _mse(logits1, second, target, alpha=alpha, stop_gradient=stop_gradient,
                    num_items_in_batch=num_items_in_batch,
                    num_items_in_subset=num_items_in_subset, check_finite=check_finite)
    ignore_index = check_ignore_index(ignore_index)
    check_class_target(logits1, target)
    targets = Targets(target, logits1.shape[-1], ignore_index, check=check_finite)
    # check=check_finite: an out-of-range index becomes 0 here too (the batch's targets raise).
    sub = Targets(target[:n], logits1.shape[-1], ignore_index, check=check_finite)
    logp1 = log_probs(logits1)
    logp2 = log_probs(second)
    nll1 = nll_rows(logp1, targets.index, label_smoothing)
    pair = sym_kl_rows if consistency == "kl" else js_rows
    cons_rows = pair(logp1[:n], logp2)
    # A row that does not count but holds NaN/+inf logits (either pass) has loss 0 and a NaN
    # gradient: flag it for the one sync, as rdrop_loss does.
    bad = torch.isnan(nll1)
    bad[:n] = bad[:n] | ~torch.isfinite(cons_rows)
    targets.note_padding(bad)
    zero = torch.zeros((), dtype=nll1.dtype, device=nll1.device)
    denom_b = mean_denominator(targets.keep, num_items_in_batch)
    denom_s = mean_denominator(sub.keep, num_items_in_subset)
    task = torch.where(targets.keep, nll1, zero).sum() / denom_b
    if not stop_gradient:
        nll2 = nll_rows(logp2, sub.index, label_smoothing)
        task = task + torch.where(sub.keep, nll2, zero).sum() / denom_s
    cons = torch.where(sub.keep, cons_rows, zero).sum() / denom_s
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        check_result(out.loss, [logits1, logits2], denom=denom_b, targets=targets,
                     label_smoothing=label_smoothing,
                     counts=_counts(num_items_in_batch, denom_b, denom_s, targets.keep, sub.keep))
    return out


def _counts(num_items_in_batch: int | Tensor | None, denom_b: Tensor | float,
            denom_s: Tensor | float, keep_b: Tensor, keep_s: Tensor) -> list[Count]:
    """The two given counts and the rows each must cover (none when the counts are local)."""
    if num_items_in_batch is None:  # then num_items_in_subset is None too (_check_counts)
        return []
    return [Count("num_items_in_batch", denom_b, keep_b),
            Count("num_items_in_subset", denom_s, keep_s,
                  what="counted targets of the second pass's rows",
                  how="sum rdrop.losses.subset.subset_count over the micro-batches")]


def _mse(logits1: Tensor, second: Tensor, target: Tensor, *, alpha: float, stop_gradient: bool,
         num_items_in_batch: int | Tensor | None, num_items_in_subset: int | Tensor | None,
         check_finite: bool) -> RDropOutput:
    if not isinstance(target, Tensor) or not target.is_floating_point():
        raise TypeError("consistency='mse' needs a floating target of regression values.")
    shape = tuple(logits1.shape)
    if tuple(target.shape) != shape:
        if shape[-1:] == (1,) and tuple(target.shape) == shape[:-1]:
            target = target.unsqueeze(-1)
        else:
            raise ValueError(
                f"regression target shape {tuple(target.shape)} does not match predictions "
                f"{shape}; expected {shape} (or {shape[:-1]} for a (N, 1) head)."
            )
    rows, n = shape[0], second.shape[0]
    p1 = upcast(logits1).reshape(rows, -1)
    p2 = upcast(second).reshape(n, -1)
    y = upcast(target).reshape(rows, -1)
    keep_b = torch.ones(rows, dtype=torch.bool, device=y.device)
    denom_b = mean_denominator(keep_b, num_items_in_batch)
    denom_s = mean_denominator(keep_b[:n], num_items_in_subset)
    task = ((p1 - y) ** 2).mean(-1).sum() / denom_b
    if not stop_gradient:
        task = task + ((p2 - y[:n]) ** 2).mean(-1).sum() / denom_s
    cons = ((p1[:n] - p2) ** 2).mean(-1).sum() / denom_s
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        check_result(out.loss, [logits1, second], denom=denom_b, targets=None,
                     label_smoothing=0.0, values=target,
                     counts=_counts(num_items_in_batch, denom_b, denom_s, keep_b, keep_b[:n]))
    return out

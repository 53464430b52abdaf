"""The R-Drop loss: pure functions and their module (``RDropLoss``). The math lives here once;
modules and integrations call it.

Normalization (the one rdrop documents and every entry point shares)
--------------------------------------------------------------------
A *row* is one prediction: one sample of an ``(N, C)`` classifier, one token of ``(B, T, V)``
sequence logits. A row *counts* when its target is not ``ignore_index``. Per counted row ``i``::

    task_i        = CE(P1_i, y_i) + CE(P2_i, y_i)          # both passes, summed (paper eq. 3)
    consistency_i = 0.5 * (KL(P1_i || P2_i) + KL(P2_i || P1_i))
    loss          = task + alpha * consistency

and ``reduction="mean"`` divides each summed term by the number of counted rows (or by
``num_items_in_batch`` when given, for gradient accumulation). So ``alpha`` weighs a per-row KL
against a per-row CE: it does not change with batch size or sequence length.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rdrop.losses._rows import (
    ce_rows,
    compute_dtype,
    denominator,
    js_rows,
    log_probs,
    nll_rows,
    reduce_rows,
    sym_kl_rows,
    upcast,
)
from rdrop.losses.checks import (
    ALPHA,
    CHUNK_SIZE,
    CONSISTENCIES,
    IGNORE_INDEX,
    REDUCTIONS,
    Targets,
    check_alpha,
    check_class_target,
    check_loss_arguments,
    check_num_items_in_batch,
    check_pair,
    check_reduction,
    check_result,
    non_finite_rows,
)

__all__ = [
    "CONSISTENCIES",
    "REDUCTIONS",
    "RDropLoss",
    "RDropOutput",
    "compute_dtype",
    "mean_denominator",
    "multi_pass_rdrop_loss",
    "rdrop_loss",
    "single_pass_loss",
    "symmetric_kl",
]


@dataclass(frozen=True)
class RDropOutput:
    """What every rdrop loss returns: the total and its two parts, so each can be logged.

    Attributes:
        loss: ``task_loss + alpha * consistency_loss`` (differentiable).
        task_loss: the supervised term, summed over passes, reduced as asked.
        consistency_loss: the divergence between passes, reduced the same way (before alpha).
        logits: the first pass's output, attached by :class:`rdrop.RDrop` (``None`` from the
            functions), for metrics such as accuracy.
    """

    loss: Tensor
    task_loss: Tensor
    consistency_loss: Tensor
    logits: Tensor | None = None


def mean_denominator(keep: Tensor, num_items_in_batch: int | Tensor | None) -> Tensor | float:
    r"""The count that ``reduction="mean"`` divides every summed term by.

    .. math::
        n = \begin{cases} \max(1, \sum_i \mathrm{keep}_i) & \text{num\_items\_in\_batch is None}
            \\ \text{num\_items\_in\_batch} & \text{otherwise} \end{cases}

    The ``max(1, .)`` makes an all-padding batch give ``0 / 1 = 0`` rather than NaN. A given
    ``num_items_in_batch`` is used as is (it must be ``>= 1``): clamping it would silently turn
    a mean into a sum.

    Args:
        keep: bool tensor, ``True`` at the rows that count.
        num_items_in_batch: ``None``, a positive int, or an integer scalar tensor (see
            :func:`rdrop.losses.checks.check_num_items_in_batch`).

    Returns:
        A float32 scalar tensor on ``keep``'s device, or a Python float for an int count. A
        tensor count on an accelerator is not read here (no sync): its sign is checked by the
        loss's finiteness check.

    Raises:
        TypeError, ValueError: as :func:`rdrop.losses.checks.check_num_items_in_batch`.

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import mean_denominator
        >>> keep = torch.tensor([True, False, True])
        >>> float(mean_denominator(keep, None)), mean_denominator(keep, 8)
        (2.0, 8.0)
    """
    return denominator(keep, check_num_items_in_batch(num_items_in_batch))


def _counted(keep: Tensor, num_items_in_batch: int | Tensor | None,
             reduction: str) -> Tensor | None:
    """The rows a given ``num_items_in_batch`` must cover (a mean's count is at least this
    batch's), for the one sync of :func:`rdrop.losses.checks.check_result`."""
    return keep if reduction == "mean" and num_items_in_batch is not None else None


def _finish(
    task_rows: Tensor,
    cons_rows: Tensor,
    *,
    alpha: float,
    reduction: str,
    denom: Tensor | float,
    check_finite: bool,
    inputs: Sequence[Tensor],
    targets: Targets | None = None,
    label_smoothing: float = 0.0,
    values: Tensor | None = None,
    counted: Tensor | None = None,
) -> RDropOutput:
    task = reduce_rows(task_rows, reduction, denom)
    cons = reduce_rows(cons_rows, reduction, denom)
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        check_result(out.loss if reduction != "none" else None, inputs, denom=denom,
                     targets=targets, label_smoothing=label_smoothing, values=values,
                     counted=counted)
    return out


# ------------------------------------------------------------------------------------- public API
def symmetric_kl(
    logits1: Tensor,
    logits2: Tensor,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Symmetric KL divergence between the softmax distributions of two sets of logits.

    .. math::
        D_i = \tfrac12\big(KL(P^1_i \| P^2_i) + KL(P^2_i \| P^1_i)\big)
            = \tfrac12 \sum_c (p^1_{ic} - p^2_{ic})(\log p^1_{ic} - \log p^2_{ic})

    per row ``i`` over the last dimension, computed from ``log_softmax`` in float32 whatever
    the input dtype (float64 inputs stay float64). Classes whose logit is ``-inf`` in both
    inputs contribute 0.

    Args:
        logits1: logits of the first pass, shape ``(..., C)``, any floating dtype.
        logits2: logits of the second pass, same shape.
        mask: optional bool tensor of shape ``logits1.shape[:-1]``; ``True`` marks rows that count.
        reduction: ``"mean"`` over counted rows (0 if none count), ``"sum"``, or ``"none"``
            (per-row values, 0 at rows the mask excludes).

    Returns:
        A float32 tensor: a scalar, or shape ``logits1.shape[:-1]`` for ``reduction="none"``.

    Raises:
        TypeError: if the inputs are not floating tensors.
        ValueError: on a shape mismatch, a mask of the wrong shape, or an unknown reduction.

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import symmetric_kl
        >>> a = torch.tensor([[2.0, 0.0, -1.0]])
        >>> round(symmetric_kl(a, a).item(), 6)
        0.0
        >>> b = torch.tensor([[0.0, 2.0, -1.0]])
        >>> symmetric_kl(a, b).item() > 0
        True
    """
    check_pair(logits1, logits2)
    check_reduction(reduction)
    row_shape = tuple(logits1.shape[:-1])
    if mask is None:
        rows = sym_kl_rows(log_probs(logits1), log_probs(logits2))
        return reduce_rows(rows, reduction, float(max(rows.numel(), 1)))
    if not isinstance(mask, Tensor) or mask.is_floating_point() or mask.is_complex():
        raise TypeError(
            "mask must be a bool (or 0/1 integer) tensor marking the rows that count, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}. For per-row weights, multiply "
            "the values of reduction='none' instead."
        )
    if tuple(mask.shape) != row_shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal logits.shape[:-1] = {row_shape}."
        )
    keep = mask.to(device=logits1.device, dtype=torch.bool)
    rows = sym_kl_rows(log_probs(logits1), log_probs(logits2))
    rows = torch.where(keep, rows, torch.zeros_like(rows))
    return reduce_rows(rows, reduction, denominator(keep, None))


def rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    *,
    alpha: float,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    consistency: str = "kl",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""The R-Drop loss of two dropout passes over the same batch (Liang et al., 2021, eq. 3).

    Per row ``i`` whose target is not ``ignore_index``:

    .. math::
        \mathcal{L}_i = CE(P^1_i, y_i) + CE(P^2_i, y_i)
            + \alpha \cdot \tfrac12\big(KL(P^1_i \| P^2_i) + KL(P^2_i \| P^1_i)\big)

    ``reduction="mean"`` averages task and consistency terms over the counted rows (or divides
    their sums by ``num_items_in_batch``), so ``alpha`` does not depend on batch size or length.
    Everything is computed in float32 from ``log_softmax``.

    Alternatives (``consistency=``):
        * ``"js"``: Jensen-Shannon divergence instead of the symmetric KL (bounded by log 2),
          computed in log space: finite values and gradients when a probability underflows or
          a class is ``-inf`` in one or both passes.
        * ``"mse"``: regression heads. ``logits`` are predictions ``(N,)`` or ``(N, D)`` and
          ``target`` real values of the same shape; task = MSE(p1, y) + MSE(p2, y) and
          consistency = MSE(p1, p2) per row (mean over ``D``); ``ignore_index`` does not
          apply and ``label_smoothing`` must be 0. A row is one sample, so
          ``num_items_in_batch`` counts samples (``N``), not values (``N * D``).

    Args:
        logits1: first pass, ``(N, C)`` or ``(B, T, V)`` (classes last), any floating dtype.
        logits2: second pass, same shape (same batch, its own dropout masks).
        target: class indices of shape ``logits1.shape[:-1]``, any integer dtype (read as int64,
            so a ``uint8`` target works, with an ``ignore_index`` it can hold).
        alpha: weight of the consistency term, ``>= 0``.
        ignore_index: target value of rows that do not count (padding).
        label_smoothing: applied to each CE term, in ``[0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row values, 0 on ignored rows).
        consistency: ``"kl"`` (paper), ``"js"`` or ``"mse"``.
        num_items_in_batch: for ``"mean"``: divide by this count instead of the local number of
            counted rows. Pass the number of counted rows of the whole accumulated batch, so
            gradient accumulation gives the full-batch gradient. **Under DDP** (``W``
            processes, which DDP's gradient all-reduce *averages*): pass the global count (the
            sum over all processes' accumulated batches, e.g. ``all_reduce`` of the local
            counts) and multiply the loss by ``W`` before ``backward``; the averaged gradient is
            then the global batch's (the Hugging Face trainers do exactly this). A positive int
            or integer scalar tensor, at least this batch's own count (a smaller one is refused
            by ``check_finite``'s sync: it would scale the loss up); 0 is refused (it is not
            clamped to 1, which would silently turn the mean into a sum). ``"sum"`` and
            ``"none"`` ignore it.
        chunk_size: if set (``"kl"``, ``"mean"``/``"sum"``), compute over chunks of this many
            rows with a memory-lean autograd function: same values and gradients, no full
            ``(N, V)`` float32 intermediates. Worth it for large vocabularies.
        check_finite: one fused device sync per call that raises if the reduced loss is NaN/inf,
            a counted target is outside ``[0, C)``, a tensor ``num_items_in_batch`` is ``< 1``
            or ``num_items_in_batch`` is smaller than this batch's count of counted rows,
            or an ignored row's logits would give a NaN gradient (NaN/+inf logits at padding:
            its loss is 0, but the NaN would reach the weights); the error says which (and why:
            NaN logits, a ``-inf`` logit with label smoothing, a ``-inf`` target class...).
            ``False`` skips it: no sync, an out-of-range target then fails in PyTorch's own
            index check. The check runs on per-row values only, so it costs no extra pass.

    Returns:
        :class:`RDropOutput` with ``loss = task_loss + alpha * consistency_loss``.

    Raises:
        TypeError: non-tensor or non-floating logits; non-integer target for ``"kl"``/``"js"``;
            ``None`` (or another non-number) for ``ignore_index``, ``label_smoothing``, ``alpha``.
        ValueError: mismatched shapes, ``alpha < 0``, unknown ``reduction``/``consistency``,
            ``label_smoothing`` outside ``[0, 1)``, bad ``chunk_size``, ``num_items_in_batch <
            1``, a counted target outside ``[0, C)``, an infinite loss from ``-inf`` logits (with
            label smoothing, at the target class, or in one pass only).
        FloatingPointError: the loss is not finite (NaN or +inf logits, divergence), or an
            ignored row would give NaN gradients.

    Example:
        >>> import torch
        >>> from rdrop import rdrop_loss
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> logits1, logits2 = torch.randn(4, 10), torch.randn(4, 10)
        >>> target = torch.tensor([1, 0, 9, -100])      # the last row is padding
        >>> out = rdrop_loss(logits1, logits2, target, alpha=1.0)
        >>> bool(torch.isclose(out.loss, out.task_loss + 1.0 * out.consistency_loss))
        True
        >>> float(rdrop_loss(logits1, logits1, target, alpha=5.0).consistency_loss)
        0.0
    """
    return multi_pass_rdrop_loss(
        [logits1, logits2],
        target,
        alpha=alpha,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction=reduction,
        consistency=consistency,
        num_items_in_batch=num_items_in_batch,
        chunk_size=chunk_size,
        check_finite=check_finite,
    )


def multi_pass_rdrop_loss(
    logits: Sequence[Tensor] | Tensor,
    target: Tensor,
    *,
    alpha: float,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    consistency: str = "kl",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop over ``m >= 2`` dropout passes (the paper's m-pass ablation).

    .. math::
        \mathcal{L}_i = \sum_{k=1}^{m} CE(P^k_i, y_i)
            + \alpha \cdot \binom{m}{2}^{-1} \sum_{j<k} \tfrac12\big(KL(P^j_i\|P^k_i)
            + KL(P^k_i\|P^j_i)\big)

    The task term sums the passes; the consistency is the mean pairwise divergence, so ``m=2``
    is exactly :func:`rdrop_loss`. Normalization and arguments as in :func:`rdrop_loss`.

    Args:
        logits: a list of ``m`` tensors of equal shape, or one tensor stacked on dim 0 ``(m, ...)``.
        target: as in :func:`rdrop_loss`.
        alpha, ignore_index, label_smoothing, reduction, consistency, num_items_in_batch,
            chunk_size, check_finite: as in :func:`rdrop_loss` (``chunk_size`` needs ``m=2``).

    Returns:
        :class:`RDropOutput`.

    Raises:
        ValueError: fewer than two passes, or as :func:`rdrop_loss`.

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import multi_pass_rdrop_loss, rdrop_loss
        >>> passes = torch.randn(3, 8, 5)                     # m=3 passes, 8 rows, 5 classes
        >>> y = torch.randint(0, 5, (8,))
        >>> out = multi_pass_rdrop_loss(passes, y, alpha=1.0)
        >>> two = multi_pass_rdrop_loss(passes[:2], y, alpha=1.0)
        >>> bool(torch.allclose(two.loss, rdrop_loss(passes[0], passes[1], y, alpha=1.0).loss))
        True
    """
    passes = list(logits.unbind(0)) if isinstance(logits, Tensor) else list(logits)
    alpha = check_alpha(alpha)
    check_loss_arguments(ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction, consistency=consistency, chunk_size=chunk_size,
                         num_passes=len(passes))
    return _multi_pass(passes, target, alpha=alpha, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, reduction=reduction,
                       consistency=consistency,
                       num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
                       chunk_size=chunk_size, check_finite=check_finite)


class RDropLoss(nn.Module):
    r"""R-Drop loss module: ``CE(P1, y) + CE(P2, y) + alpha * 0.5 * (KL(P1||P2) + KL(P2||P1))``.

    A thin module over :func:`rdrop_loss`; see there for the normalization
    (per counted row mean by default, so ``alpha`` is independent of batch size and length).
    Hyperparameters are validated here, at construction, not at the first step.

    Args:
        alpha: consistency weight ``>= 0``.
        ignore_index: target value of rows that do not count.
        label_smoothing: on each CE term, ``[0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        consistency: ``"kl"``, ``"js"`` or ``"mse"``.
        chunk_size: memory-lean chunked computation (see :func:`rdrop_loss`);
            needs ``consistency="kl"`` and a ``"mean"``/``"sum"`` reduction.
        check_finite: the one device sync per call that checks the loss and the targets (see
            :func:`rdrop_loss`); ``False`` to skip it.

    Raises:
        TypeError, ValueError: invalid hyperparameters, with the valid choices in the message.

    Example:
        >>> import torch
        >>> from rdrop import RDropLoss
        >>> criterion = RDropLoss(alpha=0.5, label_smoothing=0.1)
        >>> logits1, logits2 = torch.randn(3, 4), torch.randn(3, 4)
        >>> out = criterion(logits1, logits2, torch.tensor([0, 3, 1]))
        >>> out.loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        alpha: float = ALPHA,
        *,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        consistency: str = "kl",
        chunk_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        check_loss_arguments(ignore_index=ignore_index, label_smoothing=label_smoothing,
                             reduction=reduction, consistency=consistency, chunk_size=chunk_size)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.consistency = consistency
        self.chunk_size = chunk_size
        self.check_finite = bool(check_finite)

    def forward(
        self,
        logits1: Tensor,
        logits2: Tensor,
        target: Tensor,
        *,
        num_items_in_batch: int | Tensor | None = None,
    ) -> RDropOutput:
        """Compute the loss of two passes; see :func:`rdrop_loss`."""
        # The hyperparameters were checked at construction; the call checks its count.
        return _multi_pass(
            [logits1, logits2],
            target,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            consistency=self.consistency,
            num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
            chunk_size=self.chunk_size,
            check_finite=self.check_finite,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, consistency={self.consistency!r}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"chunk_size={self.chunk_size}, check_finite={self.check_finite}"
        )


def _multi_pass(passes: list[Tensor], target: Tensor, *, alpha: float, ignore_index: int,
                label_smoothing: float, reduction: str, consistency: str,
                num_items_in_batch: int | Tensor | None, chunk_size: int | None,
                check_finite: bool) -> RDropOutput:
    """:func:`multi_pass_rdrop_loss` of validated arguments (:mod:`rdrop.losses.checks`); the
    tensors are checked here."""
    if len(passes) < 2:
        raise ValueError(f"R-Drop needs at least 2 passes, got {len(passes)}.")
    for other in passes[1:]:
        check_pair(passes[0], other)
    if consistency == "mse":
        return _mse_rdrop(passes, target, alpha=alpha, reduction=reduction,
                          num_items_in_batch=num_items_in_batch, check_finite=check_finite)
    check_class_target(passes[0], target)

    targets = Targets(target, passes[0].shape[-1], ignore_index, check=check_finite)
    denom = denominator(targets.keep, num_items_in_batch) if reduction == "mean" else 1.0
    if chunk_size is None and _lean_by_default(passes, consistency, reduction):
        chunk_size = CHUNK_SIZE
    if chunk_size is not None:
        return _chunked(passes, targets, alpha=alpha, label_smoothing=label_smoothing,
                        reduction=reduction, denom=denom, chunk_size=chunk_size,
                        check_finite=check_finite,
                        counted=_counted(targets.keep, num_items_in_batch, reduction))

    logps = [log_probs(p) for p in passes]
    task_rows = sum(ce_rows(lp, targets.index, targets.keep, label_smoothing) for lp in logps)
    pair_fn = sym_kl_rows if consistency == "kl" else js_rows
    pairs = list(itertools.combinations(range(len(logps)), 2))
    cons_rows = sum(pair_fn(logps[a], logps[b]) for a, b in pairs) / len(pairs)
    # Not finite at a row that does not count: NaN/+inf logits there, or (KL) a class masked in
    # one pass only. Its loss is masked to 0 below, but its gradient would be NaN.
    targets.note_padding(~torch.isfinite(cons_rows))
    cons_rows = torch.where(targets.keep, cons_rows, torch.zeros_like(cons_rows))
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes, targets=targets,
                   label_smoothing=label_smoothing,
                   counted=_counted(targets.keep, num_items_in_batch, reduction))


def _lean_by_default(passes: list[Tensor], consistency: str, reduction: str) -> bool:
    # Large two-pass KL losses take the chunked path with its compiled kernels: at N 4096,
    # V 32000 it is 2.6x faster than the eager plain formula at the memory floor (the two input
    # gradients), see benchmarks/README.md. Small ones (and any under torch.compile, a dispatch
    # mode or RDROP_COMPILE=never) keep the plain path.
    from rdrop.losses.kernels.compiled import compile_wanted

    return (len(passes) == 2 and consistency == "kl" and reduction in ("mean", "sum")
            and compile_wanted(passes[0].numel()))


def _chunked(
    passes: list[Tensor],
    targets: Targets,
    *,
    alpha: float,
    label_smoothing: float,
    reduction: str,
    denom: Tensor | float,
    chunk_size: int,
    check_finite: bool,
    counted: Tensor | None,
) -> RDropOutput:
    from rdrop.losses.kernels.chunked import chunked_rdrop_sums  # local: the plain path stays light

    target = targets.raw
    if targets.bad is not None:
        # Out-of-range rows are left out of the arithmetic; check_result raises on them.
        target = torch.where(targets.bad, targets.ignore_index, target)
    if targets.check:
        # NaN / +inf logits at ignored rows leave the loss finite but the gradient NaN; the plain
        # path sees them in its per-row values, here a row sum finds them (no full-size
        # temporary) and they join the one sync of _check_result.
        targets.note_padding(non_finite_rows(passes))
    task_sum, cons_sum = chunked_rdrop_sums(
        passes[0], passes[1], target, ignore_index=targets.ignore_index,
        label_smoothing=label_smoothing, chunk_size=chunk_size,
    )
    scale = 1.0 if reduction == "sum" else denom
    task, cons = task_sum / scale, cons_sum / scale
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        check_result(out.loss, passes, denom=denom, targets=targets,
                     label_smoothing=label_smoothing, counted=counted)
    return out


def _mse_rdrop(
    passes: list[Tensor],
    target: Tensor,
    *,
    alpha: float,
    reduction: str,
    num_items_in_batch: int | Tensor | None,
    check_finite: bool,
) -> RDropOutput:
    if not isinstance(target, Tensor) or not target.is_floating_point():
        raise TypeError("consistency='mse' needs a floating target of regression values.")
    pred_shape = tuple(passes[0].shape)
    if tuple(target.shape) != pred_shape:
        if pred_shape[-1:] == (1,) and tuple(target.shape) == pred_shape[:-1]:
            target = target.unsqueeze(-1)
        else:
            raise ValueError(
                f"regression target shape {tuple(target.shape)} does not match predictions "
                f"{pred_shape}; expected {pred_shape} (or {pred_shape[:-1]} for a (N, 1) head)."
            )
    n = pred_shape[0] if len(pred_shape) else 1
    preds = [upcast(p).reshape(n, -1) for p in passes]
    y = upcast(target).reshape(n, -1)
    task_rows = sum(((p - y) ** 2).mean(-1) for p in preds)
    pairs = list(itertools.combinations(range(len(preds)), 2))
    cons_rows = sum(((preds[a] - preds[b]) ** 2).mean(-1) for a, b in pairs) / len(pairs)
    keep = torch.ones(n, dtype=torch.bool, device=y.device)
    denom = denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes, values=target,
                   counted=_counted(keep, num_items_in_batch, reduction))


def single_pass_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    consistency: str = "kl",
    num_items_in_batch: int | Tensor | None = None,
    check_finite: bool = True,
) -> RDropOutput:
    r"""The plain task loss of one pass, under the same normalization as :func:`rdrop_loss`.

    For the steps on which R-Drop is off (``every_k_steps``) or a single-pass evaluation: per
    counted row, :math:`CE(P_i, y_i)` (or :math:`MSE(p_i, y_i)` for ``consistency="mse"``),
    reduced as in :func:`rdrop_loss`; the consistency term is 0. So the same ``reduction`` and
    ``num_items_in_batch`` give a loss on the scale of one pass of :func:`rdrop_loss`'s task term.

    Args:
        logits: one pass, ``(N, C)`` or ``(B, T, V)``; ``(N,)``/``(N, D)`` for ``"mse"``.
        target: as in :func:`rdrop_loss`.
        ignore_index, label_smoothing, reduction, consistency, num_items_in_batch, check_finite:
            as in :func:`rdrop_loss` (``consistency`` only picks CE or MSE).

    Returns:
        :class:`RDropOutput` with ``loss == task_loss`` and ``consistency_loss == 0``.

    Raises:
        TypeError, ValueError, FloatingPointError: as :func:`rdrop_loss`.

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import single_pass_loss
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, -100])
        >>> out = single_pass_loss(logits, y)
        >>> ce = torch.nn.functional.cross_entropy(logits, y)
        >>> bool(torch.isclose(out.loss, ce)), float(out.consistency_loss)
        (True, 0.0)
    """
    check_loss_arguments(ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction, consistency=consistency)
    return _single_pass(logits, target, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction,
                        consistency=consistency,
                        num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
                        check_finite=check_finite)


def _single_pass(logits: Tensor, target: Tensor, *, ignore_index: int, label_smoothing: float,
                 reduction: str, consistency: str, num_items_in_batch: int | Tensor | None,
                 check_finite: bool) -> RDropOutput:
    """:func:`single_pass_loss` of validated arguments; the tensors are checked here."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
    check_pair(logits, logits)
    if consistency == "mse":
        # MSE of a single pass = half the two-pass task term of identical passes.
        out = _mse_rdrop([logits, logits], target, alpha=0.0, reduction=reduction,
                         num_items_in_batch=num_items_in_batch, check_finite=check_finite)
        task = out.task_loss / 2
    else:
        check_class_target(logits, target)
        targets = Targets(target, logits.shape[-1], ignore_index, check=check_finite)
        denom = denominator(targets.keep, num_items_in_batch) if reduction == "mean" else 1.0
        nll = nll_rows(log_probs(logits), targets.index, label_smoothing)
        # NaN only from a row of NaN/+inf/all -inf logits (a masked class 0 gives +inf, harmless).
        targets.note_padding(torch.isnan(nll))
        rows = torch.where(targets.keep, nll, torch.zeros_like(nll))
        task = reduce_rows(rows, reduction, denom)
        if check_finite:
            check_result(task if reduction != "none" else None, [logits], denom=denom,
                         targets=targets, label_smoothing=label_smoothing,
                         counted=_counted(targets.keep, num_items_in_batch, reduction))
    return RDropOutput(loss=task, task_loss=task, consistency_loss=torch.zeros_like(task))

"""The R-Drop loss as pure functions. The math lives here once; modules and integrations call it.

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
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CONSISTENCIES",
    "REDUCTIONS",
    "RDropOutput",
    "multi_pass_rdrop_loss",
    "rdrop_loss",
    "symmetric_kl",
]

REDUCTIONS = ("mean", "sum", "none")
CONSISTENCIES = ("kl", "js", "mse")


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


# ----------------------------------------------------------------------------- validation helpers
def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a float, got {type(alpha).__name__}.")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(
            f"alpha must be a finite number >= 0, got {alpha}. alpha weighs the consistency term; "
            "use 0 to disable it (paper values: 5 translation, 1 language modeling, 0.1-1 GLUE)."
        )


def _check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")


def _check_pair(logits1: Tensor, logits2: Tensor) -> None:
    for name, t in (("logits1", logits1), ("logits2", logits2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor of logits, got dtype {t.dtype}.")
    if logits1.shape != logits2.shape:
        raise ValueError(
            f"the two passes must have the same shape, got {tuple(logits1.shape)} and "
            f"{tuple(logits2.shape)}. Pass the outputs of the same model on the same batch."
        )
    if logits1.dim() < 1 or logits1.shape[-1] < 1:
        raise ValueError(f"logits need a class dimension last, got shape {tuple(logits1.shape)}.")


def _check_class_target(logits: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer tensor), got dtype {target.dtype}. "
            "For regression heads use consistency='mse'."
        )
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: expected target of shape {tuple(logits.shape[:-1])} "
            "(logits are (N, C) or (B, T, V) with the classes last; shift causal-LM labels first)."
        )


# ---------------------------------------------------------------------------------- math helpers
def _upcast(t: Tensor) -> Tensor:
    # At least fp32 whatever the input dtype: bf16/fp16 log-probs lose the small differences the
    # KL measures (float64 inputs stay float64).
    return t if t.dtype == torch.float64 else t.float()


def _log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(_upcast(logits), dim=-1)


def _sym_kl_rows(logp1: Tensor, logp2: Tensor) -> Tensor:
    """0.5 * (KL(P1||P2) + KL(P2||P1)) per row = 0.5 * sum_c (p1 - p2) * (log p1 - log p2)."""
    diff = logp1 - logp2
    # Classes masked with -inf in both passes give (-inf) - (-inf) = nan; their probability is 0 in
    # both, so their true contribution is 0. A NaN in the logits still propagates through p1 - p2.
    diff = torch.nan_to_num(diff, nan=0.0, posinf=math.inf, neginf=-math.inf)
    return 0.5 * ((logp1.exp() - logp2.exp()) * diff).sum(-1)


def _js_rows(logp1: Tensor, logp2: Tensor) -> Tensor:
    """Jensen-Shannon per row: 0.5 * KL(P1||M) + 0.5 * KL(P2||M), M = (P1 + P2) / 2."""
    p1, p2 = logp1.exp(), logp2.exp()
    logm = torch.log(0.5 * (p1 + p2))
    kl1 = torch.where(p1 > 0, p1 * (logp1 - logm), torch.zeros_like(p1)).sum(-1)
    kl2 = torch.where(p2 > 0, p2 * (logp2 - logm), torch.zeros_like(p2)).sum(-1)
    return 0.5 * (kl1 + kl2)


def _ce_rows(logp: Tensor, target: Tensor, keep: Tensor, label_smoothing: float) -> Tensor:
    """Label-smoothed CE per row (PyTorch's definition); 0 where the row does not count."""
    safe = torch.where(keep, target, torch.zeros_like(target))
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return torch.where(keep, nll, torch.zeros_like(nll))


def _reduce(rows: Tensor, reduction: str, denom: Tensor | float) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / denom


def _mean_denom(keep: Tensor, num_items_in_batch: int | Tensor | None) -> Tensor | float:
    if num_items_in_batch is None:
        # clamp: an all-padding batch has a zero sum, so 0 / 1 = 0 rather than 0 / 0 = nan.
        return keep.sum().clamp_min(1).to(torch.float32)
    if isinstance(num_items_in_batch, Tensor):
        return num_items_in_batch.to(device=keep.device, dtype=torch.float32).clamp_min(1)
    if num_items_in_batch < 0:
        raise ValueError(f"num_items_in_batch must be >= 0, got {num_items_in_batch}.")
    return float(max(num_items_in_batch, 1))


def _finish(
    task_rows: Tensor,
    cons_rows: Tensor,
    *,
    alpha: float,
    reduction: str,
    denom: Tensor | float,
    check_finite: bool,
    inputs: Sequence[Tensor],
) -> RDropOutput:
    task = _reduce(task_rows, reduction, denom)
    cons = _reduce(cons_rows, reduction, denom)
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite and reduction != "none":
        _raise_if_not_finite(out.loss, inputs)
    return out


def _raise_if_not_finite(loss: Tensor, inputs: Sequence[Tensor]) -> None:
    # One device sync per call; pass check_finite=False to skip it once training is known good.
    if bool(torch.isfinite(loss.detach()).all()):
        return
    bad = [f"pass {i + 1}" for i, t in enumerate(inputs) if bool(torch.isnan(t.detach()).any())]
    where = f"NaN in the logits of {', '.join(bad)}" if bad else "overflow in the loss"
    raise FloatingPointError(
        f"R-Drop loss is not finite ({where}). The model diverged or produced invalid outputs: "
        "lower the learning rate, clip gradients, prefer bf16 over fp16, and check the inputs. "
        "Pass check_finite=False to skip this check."
    )


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
        >>> from rdrop.functional import symmetric_kl
        >>> a = torch.tensor([[2.0, 0.0, -1.0]])
        >>> round(symmetric_kl(a, a).item(), 6)
        0.0
        >>> b = torch.tensor([[0.0, 2.0, -1.0]])
        >>> symmetric_kl(a, b).item() > 0
        True
    """
    _check_pair(logits1, logits2)
    _check_reduction(reduction)
    rows = _sym_kl_rows(_log_probs(logits1), _log_probs(logits2))
    if mask is None:
        keep = torch.ones_like(rows, dtype=torch.bool)
    else:
        if tuple(mask.shape) != tuple(rows.shape):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal logits.shape[:-1] = "
                f"{tuple(rows.shape)}."
            )
        keep = mask.to(device=rows.device, dtype=torch.bool)
        rows = torch.where(keep, rows, torch.zeros_like(rows))
    return _reduce(rows, reduction, _mean_denom(keep, None))


def rdrop_loss(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    *,
    alpha: float,
    ignore_index: int = -100,
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
        * ``"js"``: Jensen-Shannon divergence instead of the symmetric KL (bounded by log 2).
        * ``"mse"``: regression heads. ``logits`` are predictions ``(N,)`` or ``(N, D)`` and
          ``target`` real values of the same shape; task = MSE(p1, y) + MSE(p2, y) and
          consistency = MSE(p1, p2) per row (mean over ``D``); ``ignore_index`` and
          ``label_smoothing`` do not apply.

    Args:
        logits1: first pass, ``(N, C)`` or ``(B, T, V)`` (classes last), any floating dtype.
        logits2: second pass, same shape (same batch, its own dropout masks).
        target: class indices of shape ``logits1.shape[:-1]``.
        alpha: weight of the consistency term, ``>= 0``.
        ignore_index: target value of rows that do not count (padding).
        label_smoothing: applied to each CE term, in ``[0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row values, 0 on ignored rows).
        consistency: ``"kl"`` (paper), ``"js"`` or ``"mse"``.
        num_items_in_batch: for ``"mean"``: divide by this count instead of the local number of
            counted rows. Pass the number of counted rows of the whole accumulated (and, under
            DDP, global) batch so gradient accumulation gives the full-batch gradient.
        chunk_size: if set (``"kl"``, ``"mean"``/``"sum"``), compute over chunks of this many
            rows with a memory-lean autograd function: same values and gradients, no full
            ``(N, V)`` float32 intermediates. Worth it for large vocabularies.
        check_finite: raise if the reduced loss is NaN/inf (costs one device sync).

    Returns:
        :class:`RDropOutput` with ``loss = task_loss + alpha * consistency_loss``.

    Raises:
        TypeError: non-tensor or non-floating logits; non-integer target for ``"kl"``/``"js"``.
        ValueError: mismatched shapes, ``alpha < 0``, unknown ``reduction``/``consistency``,
            ``label_smoothing`` outside ``[0, 1)``, bad ``chunk_size``.
        FloatingPointError: the loss is not finite (NaN logits, divergence).

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
    ignore_index: int = -100,
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
        >>> from rdrop.functional import multi_pass_rdrop_loss, rdrop_loss
        >>> passes = torch.randn(3, 8, 5)                     # m=3 passes, 8 rows, 5 classes
        >>> y = torch.randint(0, 5, (8,))
        >>> out = multi_pass_rdrop_loss(passes, y, alpha=1.0)
        >>> two = multi_pass_rdrop_loss(passes[:2], y, alpha=1.0)
        >>> bool(torch.allclose(two.loss, rdrop_loss(passes[0], passes[1], y, alpha=1.0).loss))
        True
    """
    passes = list(logits.unbind(0)) if isinstance(logits, Tensor) else list(logits)
    if len(passes) < 2:
        raise ValueError(f"R-Drop needs at least 2 passes, got {len(passes)}.")
    for other in passes[1:]:
        _check_pair(passes[0], other)
    _check_alpha(alpha)
    _check_reduction(reduction)
    if consistency not in CONSISTENCIES:
        raise ValueError(f"consistency must be one of {CONSISTENCIES}, got {consistency!r}.")
    if consistency == "mse":
        return _mse_rdrop(passes, target, alpha=alpha, reduction=reduction,
                          num_items_in_batch=num_items_in_batch, check_finite=check_finite)
    _check_label_smoothing(label_smoothing)
    _check_class_target(passes[0], target)

    keep = target != ignore_index
    denom = _mean_denom(keep, num_items_in_batch) if reduction == "mean" else 1.0
    if chunk_size is not None:
        return _chunked(passes, target, alpha=alpha, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction,
                        consistency=consistency, denom=denom, chunk_size=chunk_size,
                        check_finite=check_finite)

    logps = [_log_probs(p) for p in passes]
    task_rows = sum(_ce_rows(lp, target, keep, label_smoothing) for lp in logps)
    pair_fn = _sym_kl_rows if consistency == "kl" else _js_rows
    pairs = list(itertools.combinations(range(len(logps)), 2))
    cons_rows = sum(pair_fn(logps[a], logps[b]) for a, b in pairs) / len(pairs)
    cons_rows = torch.where(keep, cons_rows, torch.zeros_like(cons_rows))
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes)


def _chunked(
    passes: list[Tensor],
    target: Tensor,
    *,
    alpha: float,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    consistency: str,
    denom: Tensor | float,
    chunk_size: int,
    check_finite: bool,
) -> RDropOutput:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
    if len(passes) != 2 or consistency != "kl" or reduction == "none":
        raise ValueError(
            "chunk_size supports two passes, consistency='kl' and reduction 'mean' or 'sum'; "
            "use chunk_size=None for the other settings."
        )
    from rdrop._chunked import chunked_rdrop_sums  # local: keeps the plain path import-light

    task_sum, cons_sum = chunked_rdrop_sums(
        passes[0], passes[1], target, ignore_index=ignore_index,
        label_smoothing=label_smoothing, chunk_size=chunk_size,
    )
    scale = 1.0 if reduction == "sum" else denom
    task, cons = task_sum / scale, cons_sum / scale
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        _raise_if_not_finite(out.loss, passes)
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
    preds = [_upcast(p).reshape(n, -1) for p in passes]
    y = _upcast(target).reshape(n, -1)
    task_rows = sum(((p - y) ** 2).mean(-1) for p in preds)
    pairs = list(itertools.combinations(range(len(preds)), 2))
    cons_rows = sum(((preds[a] - preds[b]) ** 2).mean(-1) for a, b in pairs) / len(pairs)
    keep = torch.ones(n, dtype=torch.bool, device=y.device)
    denom = _mean_denom(keep, num_items_in_batch) if reduction == "mean" else 1.0
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes)


def _single_pass_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
    consistency: str,
    num_items_in_batch: int | Tensor | None,
) -> RDropOutput:
    """The plain task loss of one pass (R-Drop's off-steps under ``every_k_steps``), under the
    same normalization: CE (or MSE for ``consistency="mse"``) per counted row, consistency 0."""
    if consistency == "mse":
        # MSE of a single pass = half the two-pass task term of identical passes.
        out = _mse_rdrop([logits, logits], target, alpha=0.0, reduction=reduction,
                         num_items_in_batch=num_items_in_batch, check_finite=False)
        task = out.task_loss / 2
    else:
        _check_class_target(logits, target)
        keep = target != ignore_index
        denom = _mean_denom(keep, num_items_in_batch) if reduction == "mean" else 1.0
        rows = _ce_rows(_log_probs(logits), target, keep, label_smoothing)
        task = _reduce(rows, reduction, denom)
    return RDropOutput(loss=task, task_loss=task, consistency_loss=torch.zeros_like(task))

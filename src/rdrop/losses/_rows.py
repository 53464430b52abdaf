"""Row math shared by the losses and the kernels: the compute dtype and per-row terms.

A *row* is one prediction (one sample of ``(N, C)`` logits, one token of ``(B, T, V)``); every
function here maps log-probabilities (or logits) to one value per row, or reduces rows. No
argument or tensor checks: callers pass validated values (:mod:`rdrop.losses.checks`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ce_rows", "compute_dtype", "denominator", "js_rows", "log_probs", "nll_rows",
           "pair_rows", "reduce_rows", "sym_kl_rows", "upcast"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every rdrop loss computes in: float64 for float64 inputs, float32 otherwise.

    bf16/fp16 log-probabilities lose the small differences between passes that the KL measures,
    so lower precisions are upcast; float64 (used by the tests' references) stays float64.

    Example:
        >>> import torch
        >>> from rdrop.losses._rows import compute_dtype
        >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(t: Tensor) -> Tensor:
    return t.to(compute_dtype(t.dtype))


def log_probs(logits: Tensor) -> Tensor:
    return torch.log_softmax(upcast(logits), dim=-1)


def sym_kl_rows(logp1: Tensor, logp2: Tensor) -> Tensor:
    """0.5 * (KL(P1||P2) + KL(P2||P1)) per row = 0.5 * sum_c (p1 - p2) * (log p1 - log p2)."""
    diff = logp1 - logp2
    # Classes masked with -inf in both passes give (-inf) - (-inf) = nan; their probability is 0 in
    # both, so their true contribution is 0. A NaN in the logits still propagates through p1 - p2.
    diff = torch.nan_to_num(diff, nan=0.0, posinf=math.inf, neginf=-math.inf)
    return 0.5 * ((logp1.exp() - logp2.exp()) * diff).sum(-1)


def js_rows(logp1: Tensor, logp2: Tensor) -> Tensor:
    """Jensen-Shannon per row: 0.5 * KL(P1||M) + 0.5 * KL(P2||M), M = (P1 + P2) / 2, in log space.

    ``log m = logaddexp(log p1, log p2) - log 2`` stays finite when a probability underflows to
    0 (``log(0.5 * (p1 + p2))`` would be -inf there, and its gradient NaN). A -inf log-prob (a
    masked class) is clamped to the lowest finite value first: its probability is still exactly
    0, so it contributes ``0 * finite = 0``, and ``-inf - -inf`` never occurs, in the value or in
    the gradient (which the clamp sends to 0 for the masked class, its true value).
    """
    lowest = torch.finfo(logp1.dtype).min
    logp1, logp2 = logp1.clamp_min(lowest), logp2.clamp_min(lowest)
    logm = torch.logaddexp(logp1, logp2) - math.log(2.0)
    kl1 = (logp1.exp() * (logp1 - logm)).sum(-1)
    kl2 = (logp2.exp() * (logp2 - logm)).sum(-1)
    return 0.5 * (kl1 + kl2)


def nll_rows(logp: Tensor, index: Tensor, label_smoothing: float) -> Tensor:
    """Label-smoothed CE per row (PyTorch's definition), at every row (``index`` 0 where
    ignored)."""
    nll = -logp.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return nll


def ce_rows(logp: Tensor, index: Tensor, keep: Tensor, label_smoothing: float) -> Tensor:
    """Label-smoothed CE per row; 0 where the row does not count (``keep`` False)."""
    nll = nll_rows(logp, index, label_smoothing)
    return torch.where(keep, nll, torch.zeros_like(nll))


def pair_rows(logp1: Tensor, logp2: Tensor, index: Tensor, keep: Tensor,
              label_smoothing: float) -> tuple[Tensor, Tensor]:
    """Per row of two passes: the task term ``CE(P1) + CE(P2)`` and the symmetric KL, both 0
    where the row does not count; differentiable (twice) by autograd."""
    task = ce_rows(logp1, index, keep, label_smoothing) + ce_rows(logp2, index, keep,
                                                                    label_smoothing)
    cons = sym_kl_rows(logp1, logp2)
    return task, torch.where(keep, cons, torch.zeros_like(cons))


def reduce_rows(rows: Tensor, reduction: str, denom: Tensor | float) -> Tensor:
    """``rows`` as they are (``"none"``), summed, or summed and divided by ``denom``."""
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / denom


def denominator(keep: Tensor, num_items_in_batch: int | Tensor | None) -> Tensor | float:
    """The count ``reduction="mean"`` divides by (see
    :func:`rdrop.losses.functional.mean_denominator`): the counted rows (at least 1), or the given,
    already checked, ``num_items_in_batch``."""
    if num_items_in_batch is None:
        # clamp: an all-padding batch has a zero sum, so 0 / 1 = 0 rather than 0 / 0 = nan.
        return keep.sum().clamp_min(1).to(torch.float32)
    if isinstance(num_items_in_batch, Tensor):
        return num_items_in_batch.reshape(()).to(device=keep.device, dtype=torch.float32)
    return float(num_items_in_batch)

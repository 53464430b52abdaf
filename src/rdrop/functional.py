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

from rdrop.argchecks import (
    CONSISTENCIES,
    REDUCTIONS,
    check_alpha,
    check_chunk_size,
    check_consistency,
    check_ignore_index,
    check_label_smoothing,
    check_loss_combination,
    check_num_items_in_batch,
    check_reduction,
)

__all__ = [
    "CONSISTENCIES",
    "REDUCTIONS",
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


# ----------------------------------------------------------------------------- validation helpers
# The argument checks live in rdrop.argchecks; these check tensors.


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
    if logits1.device != logits2.device:
        raise ValueError(
            f"the two passes are on different devices ({logits1.device} and {logits2.device}); "
            "compute both with the same model on the same device."
        )


def _check_class_target(logits: Tensor, target: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold class indices (an integer tensor), got dtype {target.dtype}. "
            "For regression heads use consistency='mse'."
        )
    channels_first = (logits.shape[0], *logits.shape[2:])
    if logits.dim() >= 3 and tuple(target.shape) == channels_first != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} matches logits {tuple(logits.shape)} with the "
            "classes in dim 1 (F.cross_entropy's layout); rdrop wants the classes last: pass "
            "logits.movedim(1, -1)."
        )
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits shape "
            f"{tuple(logits.shape)}: expected target of shape {tuple(logits.shape[:-1])} "
            "(logits are (N, C) or (B, T, V) with the classes last; shift causal-LM labels first)."
        )
    if logits.shape[-1] == 1:
        # softmax over one class is 1 whatever the logit: CE and KL would be 0, silently.
        raise ValueError(
            f"logits have a single class (shape {tuple(logits.shape)}): its softmax is 1 "
            "whatever the logit, so the loss would be 0. For a binary head use two logits; for "
            "a regression head (or one logit) use consistency='mse' with a floating target."
        )
    if target.device != logits.device:
        raise ValueError(
            f"target is on {target.device} but the logits are on {logits.device}; move it with "
            "target.to(logits.device)."
        )


def _check_loss_settings(reduction: str, consistency: str, label_smoothing: float,
                         num_items_in_batch: int | Tensor | None) -> None:
    # Each setting alone, then combinations that would be silently ignored.
    check_reduction(reduction)
    check_consistency(consistency)
    check_label_smoothing(label_smoothing)
    if reduction != "mean":
        # Checked whatever the reduction (only "mean" divides by it, in mean_denominator, which
        # checks it there; "sum" and "none" ignore it, so that loops can always pass it).
        check_num_items_in_batch(num_items_in_batch)
    check_loss_combination(consistency=consistency, reduction=reduction,
                           label_smoothing=label_smoothing)


class _Targets:
    """Class targets read once: int64 indices, the rows that count, and the out-of-range rows.

    Any integer dtype is accepted (uint8, int32...) and read as int64 before it is compared with
    ``ignore_index`` (so a uint8 target cannot wrap around to -100). With ``check``, a counted
    target outside ``[0, C)`` is replaced by 0 for the arithmetic and flagged in ``bad``, which
    the one finiteness sync turns into a clear error; without it, ``gather`` sees the raw index
    and PyTorch raises its own index error, so no wrong row is ever silently computed.
    """

    def __init__(self, target: Tensor, num_classes: int, ignore_index: int, check: bool) -> None:
        target = target.long()
        self.keep = target != ignore_index
        if check:
            self.bad: Tensor | None = self.keep & ((target < 0) | (target >= num_classes))
            self.index = torch.where(self.keep & ~self.bad, target, torch.zeros_like(target))
        else:
            self.bad = None
            self.index = torch.where(self.keep, target, torch.zeros_like(target))
        self.raw = target
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.check = check
        self.padding_bad: Tensor | None = None

    def note_padding(self, bad_rows: Tensor) -> None:
        """Flag rows that do not count but whose gradient would be NaN (checked in the sync)."""
        if self.check:
            self.padding_bad = bad_rows & ~self.keep


# ---------------------------------------------------------------------------------- math helpers
def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every rdrop loss computes in: float64 for float64 inputs, float32 otherwise.

    bf16/fp16 log-probabilities lose the small differences between passes that the KL measures,
    so lower precisions are upcast; float64 (used by the tests' references) stays float64.

    Example:
        >>> import torch
        >>> from rdrop.functional import compute_dtype
        >>> compute_dtype(torch.bfloat16), compute_dtype(torch.float64)
        (torch.float32, torch.float64)
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _upcast(t: Tensor) -> Tensor:
    return t.to(compute_dtype(t.dtype))


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


def _nll_rows(logp: Tensor, targets: _Targets, label_smoothing: float) -> Tensor:
    """Label-smoothed CE per row (PyTorch's definition), at every row (class 0 where ignored)."""
    nll = -logp.gather(-1, targets.index.unsqueeze(-1)).squeeze(-1)
    if label_smoothing > 0:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    return nll


def _ce_rows(logp: Tensor, targets: _Targets, label_smoothing: float) -> Tensor:
    """Label-smoothed CE per row; 0 where the row does not count."""
    nll = _nll_rows(logp, targets, label_smoothing)
    return torch.where(targets.keep, nll, torch.zeros_like(nll))


def _reduce(rows: Tensor, reduction: str, denom: Tensor | float) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / denom


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
            :func:`rdrop.argchecks.check_num_items_in_batch`).

    Returns:
        A float32 scalar tensor on ``keep``'s device, or a Python float for an int count. A
        tensor count on an accelerator is not read here (no sync): its sign is checked by the
        loss's finiteness check.

    Raises:
        TypeError, ValueError: as :func:`rdrop.argchecks.check_num_items_in_batch`.

    Example:
        >>> import torch
        >>> from rdrop.functional import mean_denominator
        >>> keep = torch.tensor([True, False, True])
        >>> float(mean_denominator(keep, None)), mean_denominator(keep, 8)
        (2.0, 8.0)
    """
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    if num_items_in_batch is None:
        # clamp: an all-padding batch has a zero sum, so 0 / 1 = 0 rather than 0 / 0 = nan.
        return keep.sum().clamp_min(1).to(torch.float32)
    if isinstance(num_items_in_batch, Tensor):
        return num_items_in_batch.reshape(()).to(device=keep.device, dtype=torch.float32)
    return float(num_items_in_batch)




def _finish(
    task_rows: Tensor,
    cons_rows: Tensor,
    *,
    alpha: float,
    reduction: str,
    denom: Tensor | float,
    check_finite: bool,
    inputs: Sequence[Tensor],
    targets: _Targets | None = None,
    label_smoothing: float = 0.0,
    values: Tensor | None = None,
) -> RDropOutput:
    task = _reduce(task_rows, reduction, denom)
    cons = _reduce(cons_rows, reduction, denom)
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        _check_result(out.loss if reduction != "none" else None, inputs, denom=denom,
                      targets=targets, label_smoothing=label_smoothing, values=values)
    return out


def _check_result(
    loss: Tensor | None,
    inputs: Sequence[Tensor],
    *,
    denom: Tensor | float,
    targets: _Targets | None,
    label_smoothing: float,
    values: Tensor | None = None,
) -> None:
    """The one device sync of ``check_finite``: the reduced loss is finite, the targets that
    count are in range, a tensor ``num_items_in_batch`` is positive; all in one fused ``bool``.
    Only when that fails are the inputs read again, to say which of these went wrong."""
    ok: Tensor | None = None
    if loss is not None:
        ok = torch.isfinite(loss.detach()).all()
    if isinstance(denom, Tensor):
        ok = denom > 0 if ok is None else ok & (denom > 0)
    if targets is not None and targets.bad is not None:
        good = ~targets.bad.any()
        ok = good if ok is None else ok & good.to(ok.device)
    if targets is not None and targets.padding_bad is not None:
        good = ~targets.padding_bad.any()
        ok = good if ok is None else ok & good.to(ok.device)
    if ok is None or bool(ok):
        return
    _raise_diagnosis(loss, inputs, denom=denom, targets=targets,
                     label_smoothing=label_smoothing, values=values)


def _raise_diagnosis(
    loss: Tensor | None,
    inputs: Sequence[Tensor],
    *,
    denom: Tensor | float,
    targets: _Targets | None,
    label_smoothing: float,
    values: Tensor | None = None,
) -> None:
    # Slow path, reached only when the check failed: find the first cause the user can fix.
    if isinstance(denom, Tensor) and not bool(denom > 0):
        raise ValueError(
            f"num_items_in_batch must be >= 1, got {int(denom)}. It is the number of counted "
            "(non-ignored) targets of the whole accumulated batch; pass None to use this "
            "batch's own count."
        )
    if targets is not None and targets.bad is not None and bool(targets.bad.any()):
        found = targets.raw[targets.bad]
        raise ValueError(
            f"target holds class indices outside [0, {targets.num_classes}) at rows that count: "
            f"min {int(found.min())}, max {int(found.max())} ({found.numel()} rows). Targets must "
            f"be class indices below the number of classes (logits.shape[-1]); padding rows must "
            f"equal ignore_index={targets.ignore_index} (set ignore_index to your padding value)."
        )
    loss_finite = loss is None or bool(torch.isfinite(loss.detach()).all())
    padding_bad = targets.padding_bad if targets is not None else None
    if loss_finite and padding_bad is not None and bool(padding_bad.any()):
        n = int(padding_bad.sum())
        raise FloatingPointError(
            f"R-Drop loss is finite, but {n} row(s) that do not count (target == ignore_index) "
            "hold NaN or +inf logits (or, for 'kl', a class masked with "
            "-inf in one pass only): their loss is 0 but their gradient would be NaN (as with "
            "F.cross_entropy), and would reach the weights. Fix the model's output at padding "
            "positions (e.g. a fully masked attention row), or pass check_finite=False."
        )
    detached = [t.detach() for t in inputs]
    nan = [f"pass {i + 1}" for i, t in enumerate(detached) if bool(torch.isnan(t).any())]
    if nan:
        raise FloatingPointError(
            f"R-Drop loss is not finite (NaN in the logits of {', '.join(nan)}). The model "
            "diverged or produced invalid outputs: lower the learning rate, clip gradients, "
            "prefer bf16 over fp16, and check the inputs. Pass check_finite=False to skip "
            "this check."
        )
    if values is not None and not bool(torch.isfinite(values.detach()).all()):
        raise ValueError(
            "R-Drop loss is not finite: the regression target holds NaN or inf. Drop or "
            "impute those samples before the loss."
        )
    posinf = [f"pass {i + 1}" for i, t in enumerate(detached) if bool(torch.isposinf(t).any())]
    if posinf:
        raise FloatingPointError(
            f"R-Drop loss is not finite (+inf in the logits of {', '.join(posinf)}): softmax of "
            "+inf is undefined. Clamp the logits or check the model's output layer."
        )
    neginf = [torch.isneginf(t) for t in detached]
    if any(bool(m.any()) for m in neginf):
        if targets is not None and label_smoothing > 0:
            raise ValueError(
                f"R-Drop loss is infinite: a logit is -inf and label_smoothing={label_smoothing}"
                " > 0. Label smoothing gives every class some target mass, so a class with "
                "probability 0 makes the cross-entropy infinite. Mask with a large finite "
                "negative value (e.g. torch.finfo(logits.dtype).min) instead of -inf, or use "
                "label_smoothing=0."
            )
        if targets is not None and any(
            m.shape[-1] == targets.num_classes  # logits (not the fused path's hidden states)
            and bool((m.gather(-1, targets.index.unsqueeze(-1)).squeeze(-1) & targets.keep).any())
            for m in neginf
        ):
            raise ValueError(
                "R-Drop loss is infinite: the target class of a counted row has logit -inf "
                "(probability 0). Do not mask a row's own target class; set that row's target "
                "to ignore_index if it should not count."
            )
        if any(bool((m != neginf[0]).any()) for m in neginf[1:]):
            raise ValueError(
                "R-Drop loss is infinite: a class is masked (-inf) in one pass but not in "
                "another, so the KL between the passes is infinite. Mask the same classes in "
                "every pass."
            )
    raise FloatingPointError(
        "R-Drop loss is not finite (overflow in the loss). The model diverged or produced "
        "invalid outputs: lower the learning rate, clip gradients, prefer bf16 over fp16, and "
        "check the inputs. Pass check_finite=False to skip this check."
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
    check_reduction(reduction)
    row_shape = tuple(logits1.shape[:-1])
    if mask is None:
        rows = _sym_kl_rows(_log_probs(logits1), _log_probs(logits2))
        return _reduce(rows, reduction, float(max(rows.numel(), 1)))
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
    rows = _sym_kl_rows(_log_probs(logits1), _log_probs(logits2))
    rows = torch.where(keep, rows, torch.zeros_like(rows))
    return _reduce(rows, reduction, mean_denominator(keep, None))


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
            counted rows. Pass the number of counted rows of the whole accumulated (and, under
            DDP, global) batch so gradient accumulation gives the full-batch gradient. A positive
            int or integer scalar tensor; 0 is refused (it is not clamped to 1, which would
            silently turn the mean into a sum). ``"sum"`` and ``"none"`` ignore it.
        chunk_size: if set (``"kl"``, ``"mean"``/``"sum"``), compute over chunks of this many
            rows with a memory-lean autograd function: same values and gradients, no full
            ``(N, V)`` float32 intermediates. Worth it for large vocabularies.
        check_finite: one fused device sync per call that raises if the reduced loss is NaN/inf,
            a counted target is outside ``[0, C)``, a tensor ``num_items_in_batch`` is ``< 1``,
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
    alpha = check_alpha(alpha)
    _check_loss_settings(reduction, consistency, label_smoothing, num_items_in_batch)
    chunk_size = check_chunk_size(chunk_size)
    if consistency == "mse":
        return _mse_rdrop(passes, target, alpha=alpha, reduction=reduction,
                          num_items_in_batch=num_items_in_batch, check_finite=check_finite)
    ignore_index = check_ignore_index(ignore_index)
    _check_class_target(passes[0], target)

    targets = _Targets(target, passes[0].shape[-1], ignore_index, check=check_finite)
    denom = mean_denominator(targets.keep, num_items_in_batch) if reduction == "mean" else 1.0
    if chunk_size is None and _lean_by_default(passes, consistency, reduction):
        chunk_size = AUTO_CHUNK_ROWS
    if chunk_size is not None:
        return _chunked(passes, targets, alpha=alpha, label_smoothing=label_smoothing,
                        reduction=reduction, consistency=consistency, denom=denom,
                        chunk_size=chunk_size, check_finite=check_finite)

    logps = [_log_probs(p) for p in passes]
    task_rows = sum(_ce_rows(lp, targets, label_smoothing) for lp in logps)
    pair_fn = _sym_kl_rows if consistency == "kl" else _js_rows
    pairs = list(itertools.combinations(range(len(logps)), 2))
    cons_rows = sum(pair_fn(logps[a], logps[b]) for a, b in pairs) / len(pairs)
    # Not finite at a row that does not count: NaN/+inf logits there, or (KL) a class masked in
    # one pass only. Its loss is masked to 0 below, but its gradient would be NaN.
    targets.note_padding(~torch.isfinite(cons_rows))
    cons_rows = torch.where(targets.keep, cons_rows, torch.zeros_like(cons_rows))
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes, targets=targets,
                   label_smoothing=label_smoothing)


AUTO_CHUNK_ROWS = 512


def _lean_by_default(passes: list[Tensor], consistency: str, reduction: str) -> bool:
    # Large two-pass KL losses take the chunked path with its compiled kernels: at N 4096,
    # V 32000 it is 2.6x faster than the eager plain formula at the memory floor (the two input
    # gradients), see benchmarks/README.md. Small ones (and any under torch.compile, a dispatch
    # mode or RDROP_COMPILE=never) keep the plain path.
    from rdrop._compiled import compile_wanted

    return (len(passes) == 2 and consistency == "kl" and reduction in ("mean", "sum")
            and compile_wanted(passes[0].numel()))


@torch.no_grad()
def _non_finite_rows(passes: list[Tensor]) -> Tensor:
    """Rows where any pass holds a NaN or +inf logit (-inf is a masked class, allowed).

    One fp32 row sum per pass, no full-size temporary: the sum is NaN or +inf exactly when the
    row holds a NaN or a +inf (a +inf beside a -inf sums to NaN), -inf when only -inf."""
    sums = torch.stack([x.detach().sum(-1, dtype=torch.float32) for x in passes])
    return (torch.isnan(sums) | (sums == float("inf"))).any(0)


def _chunked(
    passes: list[Tensor],
    targets: _Targets,
    *,
    alpha: float,
    label_smoothing: float,
    reduction: str,
    consistency: str,
    denom: Tensor | float,
    chunk_size: int,
    check_finite: bool,
) -> RDropOutput:
    check_loss_combination(consistency=consistency, reduction=reduction,
                           label_smoothing=label_smoothing, chunk_size=chunk_size,
                           num_passes=len(passes))
    from rdrop._chunked import chunked_rdrop_sums  # local: keeps the plain path import-light

    target = targets.raw
    if targets.bad is not None:
        # Out-of-range rows are left out of the arithmetic; _check_result raises on them.
        target = torch.where(targets.bad, targets.ignore_index, target)
    if targets.check:
        # NaN / +inf logits at ignored rows leave the loss finite but the gradient NaN; the plain
        # path sees them in its per-row values, here a row sum finds them (no full-size
        # temporary) and they join the one sync of _check_result.
        targets.note_padding(_non_finite_rows(passes))
    task_sum, cons_sum = chunked_rdrop_sums(
        passes[0], passes[1], target, ignore_index=targets.ignore_index,
        label_smoothing=label_smoothing, chunk_size=chunk_size,
    )
    scale = 1.0 if reduction == "sum" else denom
    task, cons = task_sum / scale, cons_sum / scale
    out = RDropOutput(loss=task + alpha * cons, task_loss=task, consistency_loss=cons)
    if check_finite:
        _check_result(out.loss, passes, denom=denom, targets=targets,
                      label_smoothing=label_smoothing)
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
    denom = mean_denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
    return _finish(task_rows, cons_rows, alpha=alpha, reduction=reduction, denom=denom,
                   check_finite=check_finite, inputs=passes, values=target)


def single_pass_loss(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
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
        >>> from rdrop.functional import single_pass_loss
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, -100])
        >>> out = single_pass_loss(logits, y)
        >>> ce = torch.nn.functional.cross_entropy(logits, y)
        >>> bool(torch.isclose(out.loss, ce)), float(out.consistency_loss)
        (True, 0.0)
    """
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
    _check_pair(logits, logits)
    _check_loss_settings(reduction, consistency, label_smoothing, num_items_in_batch)
    if consistency == "mse":
        # MSE of a single pass = half the two-pass task term of identical passes.
        out = _mse_rdrop([logits, logits], target, alpha=0.0, reduction=reduction,
                         num_items_in_batch=num_items_in_batch, check_finite=check_finite)
        task = out.task_loss / 2
    else:
        ignore_index = check_ignore_index(ignore_index)
        _check_class_target(logits, target)
        targets = _Targets(target, logits.shape[-1], ignore_index, check=check_finite)
        denom = mean_denominator(targets.keep, num_items_in_batch) if reduction == "mean" else 1.0
        nll = _nll_rows(_log_probs(logits), targets, label_smoothing)
        # NaN only from a row of NaN/+inf/all -inf logits (a masked class 0 gives +inf, harmless).
        targets.note_padding(torch.isnan(nll))
        rows = torch.where(targets.keep, nll, torch.zeros_like(nll))
        task = _reduce(rows, reduction, denom)
        if check_finite:
            _check_result(task if reduction != "none" else None, [logits], denom=denom,
                          targets=targets, label_smoothing=label_smoothing)
    return RDropOutput(loss=task, task_loss=task, consistency_loss=torch.zeros_like(task))



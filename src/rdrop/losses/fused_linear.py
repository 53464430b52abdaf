"""R-Drop fused with the output projection: the loss of two passes' hidden states and the output
layer, without ever building the full ``(N, V)`` logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rdrop.losses._rows import compute_dtype, denominator
from rdrop.losses.checks import (
    ALPHA,
    CHUNK_SIZE,
    IGNORE_INDEX,
    Targets,
    check_alpha,
    check_fused_inputs,
    check_ignore_index,
    check_label_smoothing,
    check_num_items_in_batch,
    check_positive_int,
    check_reduction,
    check_result,
    non_finite_hidden_rows,
)
from rdrop.losses.functional import RDropOutput
from rdrop.losses.kernels.fused import FusedLinearRDrop, gathered

__all__ = ["FusedLinearRDropLoss", "fused_linear_rdrop_loss"]


def _resolve_head(
    weight: Tensor | nn.Module, bias: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """``(weight, bias)`` from a weight tensor (and optional bias) or an output-layer module."""
    if not isinstance(weight, nn.Module):
        return weight, bias
    if bias is not None:
        raise ValueError(
            "bias is taken from the module when weight is a module; drop the bias argument "
            "(or pass module.weight and the bias tensor)."
        )
    w = getattr(weight, "weight", None)
    if not isinstance(w, Tensor):
        raise TypeError(
            f"weight is a {type(weight).__name__} without a .weight tensor; pass the output "
            "layer (an nn.Linear, or any module with .weight of shape (V, H)) or its weight."
        )
    b = getattr(weight, "bias", None)
    return w, b if isinstance(b, Tensor) else None


def fused_linear_rdrop_loss(
    hidden1: Tensor,
    hidden2: Tensor,
    weight: Tensor | nn.Module,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    alpha: float,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int = CHUNK_SIZE,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop loss of two passes' last hidden states through the output layer, never building
    the full logits.

    With ``z^k = h^k W^\top + b`` (the projection of pass ``k``), per row ``i`` whose target is
    not ``ignore_index``:

    .. math::
        \mathcal{L}_i = CE(P^1_i, y_i) + CE(P^2_i, y_i)
            + \alpha \cdot \tfrac12 \sum_c (p^1_{ic} - p^2_{ic})(\log p^1_{ic} - \log p^2_{ic})

    reduced as :func:`rdrop.rdrop_loss` does (per counted row mean by default). The
    value and gradients equal ``rdrop_loss(F.linear(hidden1, weight, bias), F.linear(hidden2,
    weight, bias), target, ...)``, but rows are processed ``chunk_size`` at a time: each chunk is
    projected, its loss and its logits' closed-form gradient computed in float32, and the
    gradients of ``hidden1``, ``hidden2``, ``weight`` and ``bias`` accumulated. Memory beyond the
    inputs and their gradients is a few ``(chunk_size, V)`` blocks instead of several ``(N, V)``
    ones. Those gradients are computed during the forward call (the coefficients of ``loss`` are
    known then), so ``out.loss.backward()`` does not project twice; differentiating
    ``task_loss`` or ``consistency_loss`` separately is supported and recomputes.

    The per-chunk loss and gradient math runs as a ``torch.compile``-d kernel when the call is
    large (at least ``2**22`` logits per pass; environment variable ``RDROP_COMPILE``:
    ``auto``/``always``/``never``), else, or where no compiler works, as eager PyTorch: the same
    values either way.

    Args:
        hidden1: last hidden states of the first pass, ``(N, H)`` or ``(B, T, H)``.
        hidden2: second pass, same shape (same batch, its own dropout masks).
        weight: the output layer itself (an ``nn.Linear(H, V)``, or any module with ``.weight``
            of shape ``(V, H)`` and optionally ``.bias``; its bias is used), or its weight
            tensor ``(V, H)``; same dtype as the hidden states. It may be sharded by FSDP2
            (``torch.distributed.fsdp.fully_shard``; outside the owner's forward its parameters
            are ``DTensor`` shards): the full weight is all-gathered for the call and its
            gradient reduce-scattered back to each rank's shard, averaged over the mesh as FSDP2
            averages data-parallel gradients. That gather and reduce-scatter run at every call
            (also during ``set_requires_gradient_sync(False)`` accumulation), and the weight is
            gathered in its stored dtype (a ``MixedPrecisionPolicy`` param dtype does not apply:
            cast the hidden states to the weight's dtype).
        target: class indices of shape ``hidden1.shape[:-1]``.
        bias: optional ``(V,)`` bias of the projection, with a weight tensor only.
        alpha: weight of the consistency term, ``>= 0``.
        ignore_index: target value of rows that do not count (padding).
        label_smoothing: applied to each CE term, in ``[0, 1)``.
        reduction: ``"mean"`` (per counted row) or ``"sum"``.
        num_items_in_batch: for ``"mean"``, divide by this count instead (gradient accumulation).
        chunk_size: rows per chunk; one fp32 ``(chunk_size, V)`` block is ``4 * chunk_size * V``
            bytes (256 rows at V=32k: 33 MB). A few such blocks live at once; the default keeps
            them well under the weight gradient's size for large vocabularies while the
            matmuls stay efficient (N 2048, V 64000, H 256 on one CPU thread: 0.62x the time of
            the compiled linear + loss at 0.13x its extra memory).
        check_finite: one device sync that raises if the loss is NaN/inf, a counted target
            is outside ``[0, V)``, or an ignored row's hidden state is NaN/inf (its loss is
            masked, its gradient would be NaN).

    Returns:
        :class:`~rdrop.RDropOutput` (``logits`` is ``None``: they never exist).

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, non-integer target, a
            module without a ``.weight`` tensor.
        ValueError: mismatched shapes, ``alpha < 0``, ``reduction="none"`` or unknown,
            ``label_smoothing`` outside ``[0, 1)``, ``chunk_size < 1``, ``bias`` given with a
            module, a ``DTensor`` weight with placements other than Shard/Replicate.
        FloatingPointError: the loss is not finite, or (``check_finite``) an ignored row's
            hidden state is NaN/inf.
        ValueError (``check_finite``): a counted target is outside ``[0, V)``.

    Example:
        >>> import torch
        >>> from rdrop import rdrop_loss
        >>> from rdrop.losses.fused_linear import fused_linear_rdrop_loss
        >>> _ = torch.manual_seed(0)
        >>> head = torch.nn.Linear(8, 50)
        >>> h1, h2 = torch.randn(6, 8), torch.randn(6, 8)
        >>> y = torch.tensor([3, 7, 0, 49, -100, 12])
        >>> fused = fused_linear_rdrop_loss(h1, h2, head.weight, y, bias=head.bias, alpha=1.0,
        ...                                 chunk_size=4)
        >>> plain = rdrop_loss(head(h1), head(h2), y, alpha=1.0)
        >>> bool(torch.allclose(fused.loss, plain.loss))
        True
        >>> fused.loss.backward()
        >>> head.weight.grad.shape
        torch.Size([50, 8])
        >>> same = fused_linear_rdrop_loss(h1, h2, head, y, alpha=1.0)  # the module itself
        >>> bool(torch.allclose(same.loss, plain.loss))
        True
    """
    alpha, label_smoothing, reduction, ignore_index, chunk_size = _check_arguments(
        alpha, label_smoothing, reduction, ignore_index, chunk_size)
    return _fused(hidden1, hidden2, weight, target, bias=bias, alpha=alpha,
                  ignore_index=ignore_index, label_smoothing=label_smoothing,
                  reduction=reduction,
                  num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
                  chunk_size=chunk_size, check_finite=check_finite)


def _check_arguments(alpha: float, label_smoothing: float, reduction: str, ignore_index: int,
                     chunk_size: int) -> tuple[float, float, str, int, int]:
    """The fused loss's settings, checked once (at a call, or a module's construction)."""
    reduction = check_reduction(reduction)
    if reduction == "none":
        raise ValueError(
            "fused_linear_rdrop_loss reduces over rows: use reduction 'mean' or 'sum' (per-row "
            "values need the logits; project and call rdrop_loss for reduction='none')."
        )
    return (check_alpha(alpha), check_label_smoothing(label_smoothing), reduction,
            check_ignore_index(ignore_index), check_positive_int("chunk_size", chunk_size, 1))


def _fused(hidden1: Tensor, hidden2: Tensor, weight: Tensor | nn.Module, target: Tensor, *,
           bias: Tensor | None, alpha: float, ignore_index: int, label_smoothing: float,
           reduction: str, num_items_in_batch: int | Tensor | None, chunk_size: int,
           check_finite: bool) -> RDropOutput:
    """:func:`fused_linear_rdrop_loss` of validated arguments; the tensors are checked here."""
    weight, bias = _resolve_head(weight, bias)
    check_fused_inputs(hidden1, hidden2, weight, bias, target)
    weight, bias = gathered(weight, "weight"), gathered(bias, "bias")

    h = hidden1.shape[-1]
    h1, h2 = hidden1.reshape(-1, h), hidden2.reshape(-1, h)
    # Targets read once (any integer dtype); with check_finite a counted target outside [0, V)
    # is computed as class 0 and flagged, and the one sync below raises on it.
    targets = Targets(target.reshape(-1).to(device=h1.device), weight.shape[0], ignore_index,
                      check_finite)
    if check_finite:
        # A NaN/inf hidden state at an ignored row gives NaN logits there: their loss is masked
        # to 0 but their gradient reaches the weight as NaN. Flag such rows for the same sync.
        targets.note_padding(non_finite_hidden_rows(h1, h2))
    keep, y = targets.keep, targets.index
    cd = compute_dtype(h1.dtype)
    denom = denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
    scale = 1.0 / torch.as_tensor(denom, dtype=cd, device=h1.device)
    loss, task, cons = FusedLinearRDrop.apply(
        h1, h2, weight, bias, y, keep, scale, float(alpha), float(label_smoothing), chunk_size,
        torch.is_grad_enabled(),
    )
    out = RDropOutput(loss=loss, task_loss=task, consistency_loss=cons)
    if check_finite:
        counted = keep if reduction == "mean" and num_items_in_batch is not None else None
        check_result(out.loss, [hidden1, hidden2], denom=denom, targets=targets,
                     label_smoothing=label_smoothing, counted=counted)
    return out


class FusedLinearRDropLoss(nn.Module):
    r"""Module form of :func:`fused_linear_rdrop_loss`, hyperparameters validated at construction.

    Call it with the two passes' hidden states and the head (module, or weight and bias); it
    returns an :class:`~rdrop.RDropOutput` without building full logits.

    Args:
        alpha: consistency weight ``>= 0``.
        ignore_index, label_smoothing, reduction, chunk_size: as in
            :func:`fused_linear_rdrop_loss`.

    Raises:
        TypeError, ValueError: invalid hyperparameters.

    Example:
        >>> import torch
        >>> from rdrop.losses.fused_linear import FusedLinearRDropLoss
        >>> head = torch.nn.Linear(8, 50, bias=False)
        >>> criterion = FusedLinearRDropLoss(alpha=1.0, chunk_size=256)
        >>> out = criterion(torch.randn(2, 3, 8), torch.randn(2, 3, 8), head.weight,
        ...                 torch.randint(0, 50, (2, 3)))
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
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        super().__init__()
        alpha, label_smoothing, reduction, ignore_index, chunk_size = _check_arguments(
            alpha, label_smoothing, reduction, ignore_index, chunk_size)
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.chunk_size = chunk_size

    def forward(
        self,
        hidden1: Tensor,
        hidden2: Tensor,
        weight: Tensor | nn.Module,
        target: Tensor,
        bias: Tensor | None = None,
        *,
        num_items_in_batch: int | Tensor | None = None,
    ) -> RDropOutput:
        """Compute the loss; see :func:`fused_linear_rdrop_loss`."""
        return _fused(
            hidden1, hidden2, weight, target, bias=bias, alpha=self.alpha,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
            chunk_size=self.chunk_size, check_finite=True,
        )

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}, "
                f"chunk_size={self.chunk_size}")

"""R-Drop fused with the output projection: the loss of two passes' hidden states and the output
layer, without ever building the full ``(N, V)`` logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rdrop import _compiled
from rdrop._chunked import chunk_forward, chunk_grads
from rdrop.argchecks import (
    check_alpha,
    check_ignore_index,
    check_label_smoothing,
    check_num_items_in_batch,
    check_positive_int,
    check_reduction,
)
from rdrop.functional import (
    RDropOutput,
    _check_result,
    _Targets,
    compute_dtype,
    mean_denominator,
)

__all__ = ["FusedLinearRDropLoss", "fused_linear_rdrop_loss"]


def _fused_pass(
    h1: Tensor,
    h2: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    keep: Tensor,
    *,
    eps: float,
    chunk_size: int,
    coef_task: Tensor | None,
    coef_cons: Tensor | None,
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """One sweep over row chunks: summed task and consistency terms, and (when coefficients are
    given) the gradients of ``coef_task * task_sum + coef_cons * cons_sum`` w.r.t. h1, h2, w, b.

    Per chunk only ``(rows, V)`` blocks exist: the two logits blocks, which are overwritten by
    their gradients, plus two log-prob temporaries.
    """
    cd = compute_dtype(h1.dtype)
    n = h1.shape[0]
    task = torch.zeros((), dtype=cd, device=h1.device)
    cons = torch.zeros_like(task)
    grads: list[Tensor | None] = [None, None, None, None]
    if coef_task is not None and coef_cons is not None:
        grads = [
            torch.empty_like(h1),
            torch.empty_like(h2),
            torch.zeros(w.shape, dtype=cd, device=w.device),  # fp32 accumulator over chunks
            torch.zeros(w.shape[0], dtype=cd, device=w.device) if b is not None else None,
        ]
        w_t, w_c = keep.to(cd) * coef_task.to(cd), keep.to(cd) * coef_cons.to(cd)
    compiled = _compiled.compile_wanted(n * w.shape[0])
    gbuf = None  # the compiled path's gradient blocks, reused by every chunk
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        a1, a2 = h1[s:e], h2[s:e]
        z1, z2 = nn.functional.linear(a1, w, b), nn.functional.linear(a2, w, b)
        if grads[0] is None:
            forward = _compiled.fwd if compiled else chunk_forward
            t, c = forward(z1, z2, y[s:e], keep[s:e], eps)[:2]
            task += t
            cons += c
            continue
        direct = z1.dtype == cd  # the logits block is dead once read: overwrite it
        if compiled:  # two kernels (sums and lse; gradients in the input dtype) that keep no
            # (rows, V) temporaries; one kernel for both materializes the log-probs.
            t, c, lse1, lse2, s1, s2 = _compiled.fwd(z1, z2, y[s:e], keep[s:e], eps)
            if gbuf is None:
                gbuf = torch.empty((2, min(chunk_size, n), w.shape[0]), dtype=z1.dtype,
                                   device=z1.device)
            g1, g2 = gbuf[0, : e - s], gbuf[1, : e - s]
            _compiled.grads(z1, z2, lse1, lse2, s1, s2, y[s:e], w_t[s:e], w_c[s:e], eps, g1,
                            g2)
            del z1, z2
        else:
            t, c, lse1, lse2 = chunk_forward(z1, z2, y[s:e], keep[s:e], eps)
            g1, g2 = chunk_grads(
                z1, z2, lse1, lse2, y[s:e], w_t[s:e], w_c[s:e], eps,
                z1 if direct else None, z2 if direct else None,
            )
        task += t
        cons += c
        # The logits of the unfused path are in the input dtype, so is their gradient.
        g1, g2 = g1.to(h1.dtype), g2.to(h1.dtype)
        torch.mm(g1, w, out=grads[0][s:e])
        torch.mm(g2, w, out=grads[1][s:e])
        if direct:
            grads[2].addmm_(g1.t(), a1).addmm_(g2.t(), a2)
        else:
            grads[2] += torch.mm(g1.t(), a1).to(cd)
            grads[2] += torch.mm(g2.t(), a2).to(cd)
        if grads[3] is not None:
            grads[3] += g1.sum(0, dtype=cd) + g2.sum(0, dtype=cd)
    if grads[2] is not None:
        grads[2] = grads[2].to(w.dtype)
        if grads[3] is not None:
            grads[3] = grads[3].to(b.dtype)  # type: ignore[union-attr]
    return task, cons, grads


class _FusedLinearRDrop(torch.autograd.Function):
    """Outputs ``(loss, task, cons)`` with ``task = scale * task_sum``, ``cons = scale * cons_sum``
    and ``loss = task + alpha * cons``.

    Forward already computes the gradients of ``loss`` (its coefficients are known then), so the
    common ``out.loss.backward()`` costs no second sweep: three matmuls per pass, as unfused.
    If the graph also uses ``task`` or ``cons`` (or backward runs twice with ``retain_graph``),
    backward sweeps again with the combined coefficients.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        h1: Tensor,
        h2: Tensor,
        w: Tensor,
        b: Tensor | None,
        y: Tensor,
        keep: Tensor,
        scale: Tensor,
        alpha: float,
        eps: float,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        want = any(ctx.needs_input_grad[:4])
        t_sum, c_sum, grads = _fused_pass(
            h1, h2, w, b, y, keep, eps=eps, chunk_size=chunk_size,
            coef_task=scale if want else None, coef_cons=scale * alpha if want else None,
        )
        ctx.save_for_backward(h1, h2, w, b, y, keep, scale)
        ctx.grads = grads if want else None
        ctx.alpha, ctx.eps, ctx.chunk_size = alpha, eps, chunk_size
        task, cons = t_sum * scale, c_sum * scale
        return task + alpha * cons, task, cons

    @staticmethod
    @once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        g_loss: Tensor | None,
        g_task: Tensor | None,
        g_cons: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        h1, h2, w, b, y, keep, scale = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        if g_loss is None and g_task is None and g_cons is None:
            grads: list[Tensor | None] = [None] * 4
        elif g_task is None and g_cons is None and ctx.grads is not None:
            grads, ctx.grads = ctx.grads, None  # consumed: scale in place
            for g in grads:
                if g is not None:
                    g.mul_(g_loss.to(g.dtype))
        else:
            zero = torch.zeros((), dtype=scale.dtype, device=scale.device)
            gl = zero if g_loss is None else g_loss.to(scale.dtype)
            gt = zero if g_task is None else g_task.to(scale.dtype)
            gc = zero if g_cons is None else g_cons.to(scale.dtype)
            _, _, grads = _fused_pass(
                h1, h2, w, b, y, keep, eps=ctx.eps, chunk_size=ctx.chunk_size,
                coef_task=scale * (gl + gt), coef_cons=scale * (ctx.alpha * gl + gc),
            )
        grads = [g if n else None for g, n in zip(grads, need, strict=True)]
        return (*grads, None, None, None, None, None, None)


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a constant."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, factor: float
    ) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g: Tensor
    ) -> tuple[Tensor, None]:
        return g * ctx.factor, None


def _is_dtensor(t: Tensor | None) -> bool:
    # Checked by module name first so that plain tensors never import torch.distributed.
    if t is None or not type(t).__module__.startswith("torch.distributed"):
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _gathered(t: Tensor | None, name: str) -> Tensor | None:
    """A sharded parameter (a DTensor, as FSDP2's ``fully_shard`` leaves it outside forward) as
    the full local tensor, differentiable: the gradient flows back as a partial sum that is
    reduce-scattered to each rank's shard, divided by the mesh size (FSDP2's default average over
    data-parallel ranks). Plain tensors pass through."""
    if t is None or not _is_dtensor(t):
        return t
    from torch.distributed.tensor import Partial, Replicate, Shard

    placements = t.placements  # type: ignore[attr-defined]
    if not all(isinstance(p, (Shard, Replicate)) for p in placements):
        raise ValueError(
            f"{name} is a DTensor with placements {placements}; only data-parallel sharding "
            "(Shard/Replicate, as fully_shard makes) is supported. Gather it first."
        )
    mesh = t.device_mesh  # type: ignore[attr-defined]
    full = t.full_tensor(grad_placements=[Partial()] * mesh.ndim)  # type: ignore[attr-defined]
    return _ScaleGrad.apply(full, 1.0 / mesh.size())


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


def _check_inputs(hidden1: Tensor, hidden2: Tensor, weight: Tensor, bias: Tensor | None,
                  target: Tensor) -> None:
    named = {"hidden1": hidden1, "hidden2": hidden2, "weight": weight}
    if bias is not None:
        named["bias"] = bias
    for name, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}.")
        if t.dtype != hidden1.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but hidden1 has {hidden1.dtype}; the projection "
                "needs one dtype (cast the hidden states or run under autocast before the head)."
            )
    if hidden1.shape != hidden2.shape or hidden1.dim() < 1:
        raise ValueError(
            f"hidden1 and hidden2 must have the same shape (..., H), got {tuple(hidden1.shape)} "
            f"and {tuple(hidden2.shape)}."
        )
    if weight.dim() != 2 or weight.shape[1] != hidden1.shape[-1]:
        raise ValueError(
            f"weight must have shape (V, H) with H = hidden1.shape[-1] = {hidden1.shape[-1]}, "
            f"got {tuple(weight.shape)} (pass the nn.Linear head's .weight)."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold class indices (an integer tensor), got {target.dtype}.")
    if tuple(target.shape) != tuple(hidden1.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal hidden1.shape[:-1] = "
            f"{tuple(hidden1.shape[:-1])} (shift causal-LM labels first)."
        )


def fused_linear_rdrop_loss(
    hidden1: Tensor,
    hidden2: Tensor,
    weight: Tensor | nn.Module,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    alpha: float,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    num_items_in_batch: int | Tensor | None = None,
    chunk_size: int = 256,
    check_finite: bool = True,
) -> RDropOutput:
    r"""R-Drop loss of two passes' last hidden states through the output layer, never building
    the full logits.

    With ``z^k = h^k W^\top + b`` (the projection of pass ``k``), per row ``i`` whose target is
    not ``ignore_index``:

    .. math::
        \mathcal{L}_i = CE(P^1_i, y_i) + CE(P^2_i, y_i)
            + \alpha \cdot \tfrac12 \sum_c (p^1_{ic} - p^2_{ic})(\log p^1_{ic} - \log p^2_{ic})

    reduced as :func:`rdrop.functional.rdrop_loss` does (per counted row mean by default). The
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
        :class:`~rdrop.functional.RDropOutput` (``logits`` is ``None``: they never exist).

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
        >>> from rdrop.fused_linear import fused_linear_rdrop_loss
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
    alpha = check_alpha(alpha)
    label_smoothing = check_label_smoothing(label_smoothing)
    reduction = check_reduction(reduction)
    ignore_index = check_ignore_index(ignore_index)
    num_items_in_batch = check_num_items_in_batch(num_items_in_batch)
    if reduction == "none":
        raise ValueError(
            "fused_linear_rdrop_loss reduces over rows: use reduction 'mean' or 'sum' (per-row "
            "values need the logits; project and call rdrop_loss for reduction='none')."
        )
    chunk_size = check_positive_int("chunk_size", chunk_size, 1)
    weight, bias = _resolve_head(weight, bias)
    _check_inputs(hidden1, hidden2, weight, bias, target)
    weight, bias = _gathered(weight, "weight"), _gathered(bias, "bias")

    h = hidden1.shape[-1]
    h1, h2 = hidden1.reshape(-1, h), hidden2.reshape(-1, h)
    # Targets read once (any integer dtype); with check_finite a counted target outside [0, V)
    # is computed as class 0 and flagged, and the one sync below raises on it.
    targets = _Targets(target.reshape(-1).to(device=h1.device), weight.shape[0], ignore_index,
                       check_finite)
    if check_finite:
        # A NaN/inf hidden state at an ignored row gives NaN logits there: their loss is masked
        # to 0 but their gradient reaches the weight as NaN. Flag such rows for the same sync.
        targets.note_padding(_non_finite_hidden_rows(h1, h2))
    keep, y = targets.keep, targets.index
    cd = compute_dtype(h1.dtype)
    denom = mean_denominator(keep, num_items_in_batch) if reduction == "mean" else 1.0
    scale = 1.0 / torch.as_tensor(denom, dtype=cd, device=h1.device)
    loss, task, cons = _FusedLinearRDrop.apply(
        h1, h2, weight, bias, y, keep, scale, float(alpha), float(label_smoothing), chunk_size
    )
    out = RDropOutput(loss=loss, task_loss=task, consistency_loss=cons)
    if check_finite:
        _check_result(out.loss, [hidden1, hidden2], denom=denom, targets=targets,
                      label_smoothing=label_smoothing)
    return out


@torch.no_grad()
def _non_finite_hidden_rows(h1: Tensor, h2: Tensor) -> Tensor:
    """Rows where either pass's hidden state holds a NaN or an inf (any inf makes NaN logits)."""
    return ~(torch.isfinite(h1).all(-1) & torch.isfinite(h2).all(-1))


class FusedLinearRDropLoss(nn.Module):
    r"""Module form of :func:`fused_linear_rdrop_loss`, hyperparameters validated at construction.

    Call it with the two passes' hidden states and the head (module, or weight and bias); it
    returns an :class:`~rdrop.functional.RDropOutput` without building full logits.

    Args:
        alpha: consistency weight ``>= 0``.
        ignore_index, label_smoothing, reduction, chunk_size: as in
            :func:`fused_linear_rdrop_loss`.

    Raises:
        TypeError, ValueError: invalid hyperparameters.

    Example:
        >>> import torch
        >>> from rdrop.fused_linear import FusedLinearRDropLoss
        >>> head = torch.nn.Linear(8, 50, bias=False)
        >>> criterion = FusedLinearRDropLoss(alpha=1.0, chunk_size=256)
        >>> out = criterion(torch.randn(2, 3, 8), torch.randn(2, 3, 8), head.weight,
        ...                 torch.randint(0, 50, (2, 3)))
        >>> out.loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        alpha = check_alpha(alpha)
        label_smoothing = check_label_smoothing(label_smoothing)
        reduction = check_reduction(reduction)
        ignore_index = check_ignore_index(ignore_index)
        if reduction == "none":
            raise ValueError("FusedLinearRDropLoss supports reduction 'mean' or 'sum'.")
        chunk_size = check_positive_int("chunk_size", chunk_size, 1)
        self.alpha = float(alpha)
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
        return fused_linear_rdrop_loss(
            hidden1, hidden2, weight, target, bias=bias, alpha=self.alpha,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction, num_items_in_batch=num_items_in_batch,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, ignore_index={self.ignore_index}, "
                f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}, "
                f"chunk_size={self.chunk_size}")

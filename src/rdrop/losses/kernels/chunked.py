"""Chunked R-Drop sums: the loss of :func:`rdrop.rdrop_loss` without ``(N, V)`` fp32
intermediates. Reach it through ``rdrop_loss(..., chunk_size=...)``.

Per row (logits ``z1``, ``z2``; ``l = log_softmax(z)``, ``p = exp(l)``, ``d = l1 - l2``,
smoothing ``eps``, ``V`` classes, target ``y``)::

    task = sum_k (1 - eps) * -l_k[y] + eps * mean_c(-l_k[c])
    cons = 0.5 * sum_c (p1 - p2) * d

Gradients in closed form (derived by hand; checked by gradcheck in tests/losses/test_chunked.py)::

    d task_k / d z_k = p_k - (1 - eps) * onehot(y) - eps / V
        (d(-l[c])/dz = p - e_c, and the mean over c of e_c is 1/V)
    d cons / d z1 = 0.5 * (p1 * (d - <p1, d>) + p1 - p2)
        (from KL(P1||P2): p1 * (d - <p1, d>);  from KL(P2||P1): p1 - p2)
    d cons / d z2 = 0.5 * (p2 * (<p2, d> - d) + p2 - p1)

so with output gradients ``gt`` (task) and ``gc`` (consistency), ``h = gc / 2``::

    grad z1 = p1 * (h * (d - <p1, d> + 1) + gt) - h * p2 - gt * eps / V - gt * (1 - eps) * onehot(y)

and symmetrically for ``z2`` with ``<p2, d> - d``. Forward keeps only each row's log-sum-exp
(the compiled kernels also keep ``<p1, d>`` and ``<p2, d>``, two numbers per row, so their
backward is one pass over a row); backward recomputes ``l1``, ``l2`` per chunk from it and
writes straight into the preallocated input gradients, so at most two chunk-sized fp32
temporaries live beside them (four for bf16/fp16 inputs). Storing the gradients computed in
forward instead would need four ``(N, V)`` tensors (task and consistency parts of each pass,
because their scales are only known in backward), more than the whole target budget.

The functions below are the eager kernels; when
:func:`rdrop.losses.kernels.compiled.compile_wanted` says so, the same math runs as
``torch.compile``-d kernels instead (``RDROP_COMPILE=never`` forces eager).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rdrop.losses._rows import compute_dtype, log_probs, pair_rows
from rdrop.losses.kernels import compiled as _compiled

__all__ = ["chunked_rdrop_sums"]


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    # sum_c a * b per row through bmm: no (rows, V) product temporary.
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _log_probs_lse(z: Tensor, cd: torch.dtype) -> tuple[Tensor, Tensor]:
    logp = torch.log_softmax(z.to(cd), dim=-1)
    # log_softmax computes (z - max) - log(sum): at the argmax that is exactly -log(sum), so this
    # recovers the log-sum-exp without a second exp pass.
    lse = z.amax(-1).to(cd) - logp.amax(-1)
    return logp, lse


def _recompute_log_probs(z: Tensor, lse: Tensor, cd: torch.dtype) -> Tensor:
    zc = z.to(cd)
    if zc is z:  # same dtype: z is the caller's tensor, do not modify it
        return zc - lse.unsqueeze(1)
    return zc.sub_(lse.unsqueeze(1))


def _nan_to_zero_(d: Tensor) -> Tensor:
    # Classes that are -inf in both passes give (-inf) - (-inf) = nan; their probability is 0 in
    # both, so their true contribution is 0 (as in functional._sym_kl_rows).
    return d.nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)


def chunk_forward(
    z1: Tensor, z2: Tensor, y: Tensor, keep: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Summed task and consistency over the counted rows of one chunk, and each row's lse.

    ``y`` must already hold a valid class at ignored rows (any; they are masked by ``keep``).
    """
    cd = compute_dtype(z1.dtype)
    l1, lse1 = _log_probs_lse(z1, cd)
    l2, lse2 = _log_probs_lse(z2, cd)
    idx = y.unsqueeze(1)
    task = -(l1.gather(1, idx) + l2.gather(1, idx)).squeeze(1)
    if eps > 0:
        task = (1.0 - eps) * task - eps * (l1.mean(-1) + l2.mean(-1))
    d = _nan_to_zero_(l1 - l2)
    p1, p2 = l1.exp_(), l2.exp_()
    cons = 0.5 * _rowdot(p1.sub_(p2), d)
    zero = torch.zeros((), dtype=cd, device=z1.device)
    return (
        torch.where(keep, task, zero).sum(),
        torch.where(keep, cons, zero).sum(),
        lse1,
        lse2,
    )


def _finish_grad_(
    g: Tensor, p_self: Tensor, p_other: Tensor, h: Tensor, gt: Tensor, y: Tensor, eps: float
) -> Tensor:
    # g holds (d - <p_self, d>) for pass 1, or (<p_self, d> - d) for pass 2; see the module doc.
    torch.addcmul(h + gt, g, h, out=g)
    g.mul_(p_self).addcmul_(p_other, h, value=-1.0)
    if eps > 0:
        g.sub_(gt * (eps / g.shape[-1]))
    return g.scatter_add_(1, y.unsqueeze(1), gt * -(1.0 - eps))


def chunk_grads(
    z1: Tensor,
    z2: Tensor,
    lse1: Tensor,
    lse2: Tensor,
    y: Tensor,
    gt: Tensor,
    gc: Tensor,
    eps: float,
    out1: Tensor | None = None,
    out2: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum_rows gt * task + gc * cons`` w.r.t. one chunk of ``z1``, ``z2``.

    ``gt`` and ``gc`` are per-row coefficients (0 at ignored rows). The results are written into
    ``out1``/``out2`` when given (compute dtype, same shape; they may alias ``z1``/``z2``, which
    are read first), else into fresh compute-dtype tensors.
    """
    cd = compute_dtype(z1.dtype)
    a = _recompute_log_probs(z1, lse1, cd)
    b = _recompute_log_probs(z2, lse2, cd)
    d = out1 if out1 is not None else torch.empty_like(a)
    _nan_to_zero_(torch.sub(a, b, out=d))
    p1, p2 = a.exp_(), b.exp_()
    s1, s2 = _rowdot(p1, d).unsqueeze(1), _rowdot(p2, d).unsqueeze(1)
    g2 = out2 if out2 is not None else torch.empty_like(a)
    torch.sub(s2, d, out=g2)
    h, gt = (0.5 * gc).unsqueeze(1), gt.unsqueeze(1)
    _finish_grad_(g2, p2, p1, h, gt, y, eps)
    _finish_grad_(d.sub_(s1), p1, p2, h, gt, y, eps)
    return d, g2


class _ChunkedRDropSums(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x1: Tensor,
        x2: Tensor,
        y: Tensor,
        keep: Tensor,
        eps: float,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor]:
        cd = compute_dtype(x1.dtype)
        n = x1.shape[0]
        lse1 = torch.empty(n, dtype=cd, device=x1.device)
        lse2 = torch.empty_like(lse1)
        task = torch.zeros((), dtype=cd, device=x1.device)
        cons = torch.zeros_like(task)
        compiled = _compiled.compile_wanted(x1.numel())
        # The compiled forward also keeps <p1, d> and <p2, d> per row, so its backward makes one
        # pass over each row instead of two (the eager backward recomputes them).
        rowdots = (torch.empty_like(lse1), torch.empty_like(lse1)) if compiled else None
        for s in range(0, n, chunk_size):
            e = min(s + chunk_size, n)
            if rowdots is not None:
                t, c, lse1[s:e], lse2[s:e], rowdots[0][s:e], rowdots[1][s:e] = _compiled.fwd(
                    x1[s:e], x2[s:e], y[s:e], keep[s:e], eps)
            else:
                t, c, lse1[s:e], lse2[s:e] = chunk_forward(x1[s:e], x2[s:e], y[s:e], keep[s:e],
                                                           eps)
            task += t
            cons += c
        ctx.save_for_backward(x1, x2, y, keep, lse1, lse2, *(rowdots or ()))
        ctx.eps, ctx.chunk_size, ctx.compiled = eps, chunk_size, compiled
        return task, cons

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, g_task: Tensor, g_cons: Tensor
    ) -> tuple[Tensor | None, ...]:
        x1, x2, y, keep, lse1, lse2, *rowdots = ctx.saved_tensors
        need1, need2 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need1 or need2):
            return None, None, None, None, None, None
        if torch.is_grad_enabled():  # backward(create_graph=True): the gradient is differentiated
            grads = differentiable_grads(
                [x1, x2], [need1, need2],
                lambda z1, z2: pair_rows(log_probs(z1), log_probs(z2), y, keep, ctx.eps),
                g_task, g_cons)
            return *grads, None, None, None, None
        cd = lse1.dtype
        n = x1.shape[0]
        grad1 = torch.empty_like(x1) if need1 else None
        grad2 = torch.empty_like(x2) if need2 else None
        if ctx.compiled:
            s1, s2 = rowdots
            return _compiled_backward(ctx, x1, x2, y, keep, lse1, lse2, s1, s2, g_task, g_cons,
                                      grad1, grad2)
        direct = x1.dtype == cd  # write into the gradient itself, no chunk temporary
        w = keep.to(cd)
        gt_rows, gc_rows = w * g_task.to(cd), w * g_cons.to(cd)
        for s in range(0, n, ctx.chunk_size):
            e = min(s + ctx.chunk_size, n)
            out1 = grad1[s:e] if direct and grad1 is not None else None
            out2 = grad2[s:e] if direct and grad2 is not None else None
            g1, g2 = chunk_grads(
                x1[s:e], x2[s:e], lse1[s:e], lse2[s:e], y[s:e],
                gt_rows[s:e], gc_rows[s:e], ctx.eps, out1, out2,
            )
            if not direct:
                if grad1 is not None:
                    grad1[s:e].copy_(g1)
                if grad2 is not None:
                    grad2[s:e].copy_(g2)
        return grad1, grad2, None, None, None, None


def differentiable_grads(
    inputs: list[Tensor], needed: list[bool],
    rows: Callable[..., tuple[Tensor, Tensor]], g_task: Tensor, g_cons: Tensor,
) -> list[Tensor | None]:
    """The gradients of ``g_task * sum(task_rows) + g_cons * sum(cons_rows)`` w.r.t. the needed
    ``inputs``, as a graph of their own (double backward: gradient penalties, meta-learning).

    ``backward(create_graph=True)`` runs a Function's backward with gradients enabled; the
    closed-form kernels write in place and would hand back constants, silently dropping every
    second-order term. Here the rows are recomputed by the plain formula (full ``(N, V)``
    blocks: the memory of the unchunked loss) and differentiated by autograd, so the result is
    exact and differentiable again.
    """
    task, cons = rows(*inputs)
    total = g_task * task.sum() + g_cons * cons.sum()
    wanted = [t for t, n in zip(inputs, needed, strict=True) if n]
    found = iter(torch.autograd.grad(total, wanted, create_graph=True))
    return [next(found) if n else None for n in needed]


def _compiled_backward(
    ctx: torch.autograd.function.FunctionCtx,
    x1: Tensor, x2: Tensor, y: Tensor, keep: Tensor, lse1: Tensor, lse2: Tensor, s1: Tensor,
    s2: Tensor, g_task: Tensor, g_cons: Tensor, grad1: Tensor | None, grad2: Tensor | None,
) -> tuple[Tensor | None, ...]:
    # The compiled kernel writes both gradients (in the input dtype) straight into their slices;
    # a gradient that is not needed still gets a chunk-sized scratch block to write into.
    # s1, s2: <p1, d> and <p2, d> per row, from the compiled forward.
    cd = lse1.dtype
    w = keep.to(cd)
    gt_rows, gc_rows = w * g_task.to(cd), w * g_cons.to(cd)
    n, size = x1.shape[0], ctx.chunk_size
    scratch = None
    if grad1 is None or grad2 is None:
        scratch = torch.empty((min(size, n), x1.shape[1]), dtype=x1.dtype, device=x1.device)
    for s in range(0, n, size):
        e = min(s + size, n)
        out1 = grad1[s:e] if grad1 is not None else scratch[: e - s]  # type: ignore[index]
        out2 = grad2[s:e] if grad2 is not None else scratch[: e - s]  # type: ignore[index]
        _compiled.grads(x1[s:e], x2[s:e], lse1[s:e], lse2[s:e], s1[s:e], s2[s:e], y[s:e],
                        gt_rows[s:e], gc_rows[s:e], ctx.eps, out1, out2)
    return grad1, grad2, None, None, None, None


def chunked_rdrop_sums(
    logits1: Tensor,
    logits2: Tensor,
    target: Tensor,
    *,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int,
) -> tuple[Tensor, Tensor]:
    """Summed R-Drop task and consistency terms over the rows whose target is not ignored.

    Returns ``(task_sum, consistency_sum)``, float32 scalars (float64 for float64 inputs), with
    ``task_i = CE(P1_i, y_i) + CE(P2_i, y_i)`` (label-smoothed as PyTorch defines it) and
    ``consistency_i = 0.5 * (KL(P1_i||P2_i) + KL(P2_i||P1_i))``. Both are differentiable w.r.t.
    both logits with the closed-form gradients of the module docstring; peak memory beyond the
    input gradients is a few ``(chunk_size, V)`` fp32 blocks. Inputs are ``(..., V)``, any
    floating dtype, already validated by the caller.
    """
    v = logits1.shape[-1]
    x1, x2 = logits1.reshape(-1, v), logits2.reshape(-1, v)
    y = target.reshape(-1).to(device=x1.device)
    keep = y != ignore_index
    y = torch.where(keep, y, torch.zeros_like(y)).long()
    return _ChunkedRDropSums.apply(x1, x2, y, keep, float(label_smoothing), chunk_size)

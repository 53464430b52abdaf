"""The fused linear R-Drop kernel: the loss of two passes' hidden states through the output
layer, and its gradients, one row chunk at a time, never building the full ``(N, V)`` logits.
Reach it through :func:`rdrop.losses.fused_linear.fused_linear_rdrop_loss` (which checks the
arguments); the per-chunk math is :mod:`rdrop.losses.kernels.chunked`'s (eager) or
:mod:`rdrop.losses.kernels.compiled`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rdrop.losses._rows import compute_dtype, log_probs, pair_rows
from rdrop.losses.kernels import compiled as _compiled
from rdrop.losses.kernels.chunked import chunk_forward, chunk_grads, differentiable_grads

__all__ = ["FusedLinearRDrop", "gathered"]


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


class FusedLinearRDrop(torch.autograd.Function):
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
        grad_enabled: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        # grad_enabled: the caller's grad mode (inside forward it is always off). Under no_grad
        # or inference_mode nothing will call backward, so no gradient is built.
        want = grad_enabled and any(ctx.needs_input_grad[:4])
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
        elif torch.is_grad_enabled():  # backward(create_graph=True): exact, differentiable
            zero = torch.zeros((), dtype=scale.dtype, device=scale.device)
            gl = zero if g_loss is None else g_loss.to(scale.dtype)
            gt = zero if g_task is None else g_task.to(scale.dtype)
            gc = zero if g_cons is None else g_cons.to(scale.dtype)
            inputs = [h1, h2, w, b if b is not None else w]
            needed = [need[0], need[1], need[2], b is not None and need[3]]

            def rows(a1: Tensor, a2: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, ...]:
                bias_or_none = bias if b is not None else None
                z1 = nn.functional.linear(a1, weight, bias_or_none)
                z2 = nn.functional.linear(a2, weight, bias_or_none)
                return pair_rows(log_probs(z1), log_probs(z2), y, keep, ctx.eps)

            grads = differentiable_grads(inputs, needed, rows, scale * (gl + gt),
                                         scale * (ctx.alpha * gl + gc))
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
        return (*grads, None, None, None, None, None, None, None)


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


def gathered(t: Tensor | None, name: str) -> Tensor | None:
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

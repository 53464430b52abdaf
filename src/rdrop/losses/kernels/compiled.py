"""Compiled per-chunk kernels of the chunked R-Drop loss (used by
:mod:`rdrop.losses.kernels.chunked` and :mod:`rdrop.losses.kernels.fused`).

The same per-chunk math as the eager code in :mod:`rdrop.losses.kernels.chunked` (see its docstring
for the closed-form gradients), written as pure tensor expressions so that ``torch.compile``
(inductor: vectorized C++ on CPU, Triton on GPU) fuses each into a few passes over a row: the
log-sum-exps, the two cross-entropies, the KL and the row dots ``<p1, d>``, ``<p2, d>`` in one
kernel, the two logits' gradients (from the saved log-sum-exps and row dots, one pass over each row)
in another, with no ``(rows, V)`` temporaries. (One kernel for both would materialize the log-probs:
two more blocks.)

When to compile (environment variable ``RDROP_COMPILE``, read at each call):

* ``auto`` (default): compile when one call covers at least ``2**22`` logits per pass (a
  16 MB fp32 block; below that the one-time compile, seconds to a minute, is not repaid);
* ``always`` / ``1``: compile at any size; ``never`` / ``0``: always run the eager code.

Compilation is skipped (eager code, which dynamo then traces itself) inside a user's
``torch.compile`` and under a ``TorchDispatchMode``. If compiling fails (no C++ compiler, no
Triton, an unsupported platform), a warning is issued once and the eager code runs from then
on; the results are the same.

One compiled graph serves every chunk: the row dimension is dynamic, and a 1-row chunk (which
would otherwise specialize a second graph) is padded to 2 rows with an uncounted row.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rdrop.losses._rows import compute_dtype

__all__ = ["compile_wanted", "fwd", "grads"]

MIN_ELEMENTS = 1 << 22
_MODES = {"auto": "auto", "": "auto", "always": "always", "1": "always", "never": "never",
          "0": "never"}
_compiled: dict[str, Callable[..., Any]] = {}
_broken: list[str] = []  # the first compile error, once compiling has failed


def _mode() -> str:
    raw = os.environ.get("RDROP_COMPILE", "auto").strip().lower()
    if raw not in _MODES:
        raise ValueError(
            f"RDROP_COMPILE must be one of auto, always (1), never (0); got {raw!r}."
        )
    return _MODES[raw]


def _dispatch_mode_active() -> bool:
    # A user's TorchDispatchMode (memory trackers, FlopCounter...) cannot be compiled through.
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None


def compile_wanted(numel: int) -> bool:
    """Whether a call over ``numel`` logits per pass should use the compiled kernels."""
    mode = _mode()
    if mode == "never" or _broken or torch.compiler.is_compiling() or _dispatch_mode_active():
        return False
    return mode == "always" or numel >= MIN_ELEMENTS


# ------------------------------------------------------------------------------- the math
def _log_probs(z: Tensor, lse: Tensor) -> Tensor:
    return z.to(lse.dtype) - lse.unsqueeze(1)


def _diff(l1: Tensor, l2: Tensor) -> Tensor:
    # -inf in both passes: nan, and the class has probability 0 in both, so it contributes 0.
    d = l1 - l2
    return torch.where(torch.isnan(d), torch.zeros_like(d), d)


def _task_cons(l1: Tensor, l2: Tensor, y: Tensor, keep: Tensor, eps: Tensor) -> tuple[Tensor, ...]:
    # eps is a 0-d tensor, not a float: one graph for every label smoothing (the extra mean is
    # fused into the same pass over the row).
    idx = y.unsqueeze(1)
    task = -(l1.gather(1, idx) + l2.gather(1, idx)).squeeze(1)
    smooth = l1.mean(-1) + l2.mean(-1)  # -inf where a class is masked: select, not multiply
    task = (1.0 - eps) * task - torch.where(eps > 0, eps * smooth, torch.zeros_like(smooth))
    d = _diff(l1, l2)
    # <p1, d> and <p2, d> per row: the consistency is half their difference, and backward needs
    # both, so they are kept (two numbers per row) and backward makes one pass over a row, not two.
    s1, s2 = (l1.exp() * d).sum(-1), (l2.exp() * d).sum(-1)
    cons = 0.5 * (s1 - s2)
    zero = torch.zeros((), dtype=l1.dtype, device=l1.device)
    return torch.where(keep, task, zero).sum(), torch.where(keep, cons, zero).sum(), s1, s2


def _grad_pair(
    l1: Tensor, l2: Tensor, s1: Tensor, s2: Tensor, y: Tensor, gt: Tensor, gc: Tensor,
    eps: Tensor,
) -> tuple[Tensor, Tensor]:
    d = _diff(l1, l2)
    p1, p2 = l1.exp(), l2.exp()
    s1, s2 = s1.unsqueeze(1), s2.unsqueeze(1)
    h, gt = (0.5 * gc).unsqueeze(1), gt.unsqueeze(1)
    hot = torch.arange(l1.shape[1], device=l1.device).unsqueeze(0) == y.unsqueeze(1)
    lin = gt * (eps / l1.shape[1]) + torch.where(hot, gt * (1.0 - eps), torch.zeros_like(gt))
    g1 = p1 * (h * (d - s1 + 1.0) + gt) - h * p2 - lin
    g2 = p2 * (h * (s2 - d + 1.0) + gt) - h * p1 - lin
    return g1, g2


def _fwd(z1: Tensor, z2: Tensor, y: Tensor, keep: Tensor, eps: Tensor) -> tuple[Tensor, ...]:
    cd = compute_dtype(z1.dtype)
    lse1, lse2 = torch.logsumexp(z1.to(cd), -1), torch.logsumexp(z2.to(cd), -1)
    task, cons, s1, s2 = _task_cons(_log_probs(z1, lse1), _log_probs(z2, lse2), y, keep, eps)
    return task, cons, lse1, lse2, s1, s2


def _grads(
    z1: Tensor, z2: Tensor, lse1: Tensor, lse2: Tensor, s1: Tensor, s2: Tensor, y: Tensor,
    gt: Tensor, gc: Tensor, eps: Tensor, out1: Tensor, out2: Tensor,
) -> None:
    g1, g2 = _grad_pair(_log_probs(z1, lse1), _log_probs(z2, lse2), s1, s2, y, gt, gc, eps)
    out1.copy_(g1)
    out2.copy_(g2)


# ------------------------------------------------------------------------ compile + fallback
def _kernel(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _compiled[name]


def _run(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    # Detached views: a requires_grad flag would be guarded on and compile a second graph.
    args = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
    if not _broken:
        try:
            return _kernel(name, fn)(*args)
        except Exception as err:  # any compiler failure: fall back, once
            if type(err).__name__ == "FailOnRecompileLimitHit":
                return fn(*args)  # too many dtypes/devices in one process: this call eager
            _broken.append(f"{type(err).__name__}: {err}")
            warnings.warn(
                "rdrop: torch.compile of the chunked loss failed, using the eager kernels "
                f"(same results, slower). Set RDROP_COMPILE=never to skip the attempt. "
                f"Cause: {_broken[0][:300]}",
                RuntimeWarning,
                stacklevel=3,
            )
    return fn(*args)


def _pad(rows: int, *tensors: Tensor) -> list[Tensor]:
    # A 1-row chunk would specialize a second graph (dynamo treats size 1 apart): add a row of
    # zeros; callers give it keep=False / zero coefficients, so it contributes nothing.
    if rows != 1:
        return list(tensors)
    return [torch.cat([t, torch.zeros_like(t)]) for t in tensors]


def _eps(eps: float, z: Tensor) -> Tensor:
    return torch.tensor(eps, dtype=compute_dtype(z.dtype), device=z.device)


def fwd(z1: Tensor, z2: Tensor, y: Tensor, keep: Tensor, eps: float) -> tuple[Tensor, ...]:
    """Compiled :func:`rdrop.losses.kernels.chunked.chunk_forward`: (task sum, consistency sum,
    lse1, lse2, s1, s2), where ``s_k = <p_k, l1 - l2>`` per row is what :func:`grads` needs besides
    the lse."""
    n = z1.shape[0]
    z1, z2, y, keep = _pad(n, z1, z2, y, keep)
    task, cons, lse1, lse2, s1, s2 = _run("fwd", _fwd, z1, z2, y, keep, _eps(eps, z1))
    return task, cons, lse1[:n], lse2[:n], s1[:n], s2[:n]


def grads(
    z1: Tensor, z2: Tensor, lse1: Tensor, lse2: Tensor, s1: Tensor, s2: Tensor, y: Tensor,
    gt: Tensor, gc: Tensor, eps: float, out1: Tensor, out2: Tensor,
) -> None:
    """Compiled :func:`rdrop.losses.kernels.chunked.chunk_grads` from :func:`fwd`'s per-row lse and
    s, written into ``out1``/``out2`` in one pass over each row."""
    if z1.shape[0] == 1:
        g1, g2 = torch.empty_like(out1), torch.empty_like(out2)
        padded = _pad(1, z1, z2, lse1, lse2, s1, s2, y, gt, gc, g1, g2)
        g1, g2 = padded[-2:]
        _run("grads", _grads, *padded[:9], _eps(eps, z1), g1, g2)
        out1.copy_(g1[:1])
        out2.copy_(g2[:1])
        return
    _run("grads", _grads, z1, z2, lse1, lse2, s1, s2, y, gt, gc, _eps(eps, z1), out1, out2)

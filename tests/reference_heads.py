"""Literal float64 references for the consistency of other heads (multi-label, CTC).

Written from the definitions, one element at a time, sharing no code or trick with rdrop:

* Bernoulli KL from its definition ``p log(p/q) + (1-p) log((1-p)/(1-q))`` (not the closed form
  rdrop uses), BCE as ``-(w y log p + (1-y) log(1-p))``;
* CTC as the sum over EVERY alignment of length T that collapses (merge repeats, drop blanks) to
  the target: exponential, for a handful of frames and symbols only.

All functions are differentiable in float64, so their autograd gradients are the reference
gradients too.
"""

from __future__ import annotations

import itertools
import math

import torch


def _sigmoid64(z: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-z.to(torch.float64)))


def bernoulli_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(B(p) || B(q)) of two Bernoulli probabilities, from the definition."""
    return p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))


def multilabel_reference(passes: list[torch.Tensor], target: torch.Tensor, alpha: float,
                         mask: torch.Tensor | None = None,
                         pos_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """(loss, task, consistency) of multi-label R-Drop, mean over counted rows of (N, C)."""
    n, c = passes[0].shape
    keep = [True] * n if mask is None else mask.tolist()
    task = torch.zeros((), dtype=torch.float64)
    cons = torch.zeros((), dtype=torch.float64)
    pairs = list(itertools.combinations(range(len(passes)), 2))
    for i in range(n):
        if not keep[i]:
            continue
        for j in range(c):
            y = float(target[i, j])
            w = 1.0 if pos_weight is None else float(pos_weight[j])
            probs = [_sigmoid64(z[i, j]) for z in passes]
            for p in probs:
                task = task - (w * y * torch.log(p) + (1 - y) * torch.log(1 - p)) / c
            for a, b in pairs:
                sym = 0.5 * (bernoulli_kl(probs[a], probs[b]) + bernoulli_kl(probs[b], probs[a]))
                cons = cons + sym / c / len(pairs)
    count = max(sum(bool(k) for k in keep), 1)
    task, cons = task / count, cons / count
    return task + alpha * cons, task, cons


def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    out, previous = [], None
    for s in path:
        if s != previous and s != blank:
            out.append(s)
        previous = s
    return out


def ctc_nll(logits: torch.Tensor, target: list[int], blank: int = 0) -> torch.Tensor:
    """-log sum over all alignments of ``logits`` (T, C) that collapse to ``target``."""
    frames, symbols = logits.shape
    logp = logits.to(torch.float64) - torch.logsumexp(logits.to(torch.float64), -1,
                                                      keepdim=True)
    probs = []
    for path in itertools.product(range(symbols), repeat=frames):
        if _collapse(path, blank) == target:
            probs.append(torch.stack([logp[t, s] for t, s in enumerate(path)]).sum().exp())
    if not probs:
        return torch.tensor(math.inf, dtype=torch.float64)
    return -torch.log(torch.stack(probs).sum())


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    return (logp.exp() * (logp - logq)).sum()


def ctc_reference(z1: torch.Tensor, z2: torch.Tensor, targets: list[list[int]],
                  input_lengths: list[int], alpha: float, detach_target: bool = False,
                  blank: int = 0) -> tuple[torch.Tensor, ...]:
    """(loss, task, consistency) of CTC R-Drop over (N, T, C) logits, mean over utterances."""
    task = torch.zeros((), dtype=torch.float64)
    cons = torch.zeros((), dtype=torch.float64)
    for n, (y, length) in enumerate(zip(targets, input_lengths, strict=True)):
        a, b = z1[n, :length], z2[n, :length]
        task = task + ctc_nll(a, y, blank) + ctc_nll(b, y, blank)
        for t in range(length):
            lp = a[t].to(torch.float64) - torch.logsumexp(a[t].to(torch.float64), -1)
            lq = b[t].to(torch.float64) - torch.logsumexp(b[t].to(torch.float64), -1)
            if detach_target:
                cons = cons + 0.5 * (kl(lq.detach(), lp) + kl(lp.detach(), lq))
            else:
                cons = cons + 0.5 * (kl(lp, lq) + kl(lq, lp))
    n = len(targets)
    return (task + alpha * cons) / n, task / n, cons / n

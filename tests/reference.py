"""The paper's R-Drop loss written out literally, in float64, one row at a time.

This is the independent reference every test and benchmark compares against. It is deliberately
slow and plain: no log-sum-exp tricks beyond float64, explicit loops over rows and passes, the
formula of arXiv 2106.14448 eq. (3) per counted row:

    task_i        = CE(P1_i, y_i) + CE(P2_i, y_i)
    consistency_i = 0.5 * (KL(P1_i || P2_i) + KL(P2_i || P1_i))
    loss          = mean_i(task_i) + alpha * mean_i(consistency_i)     (i over non-ignored rows)

with label-smoothed CE(P, y) = (1 - eps) * -log P[y] + eps * mean_c(-log P[c]) (PyTorch's
definition). Benchmarks import ``naive_official_rdrop_loss`` from here as the "official code" style
baseline (full fp32 probability tensors for both passes, as the fairseq criterion builds them).
"""

from __future__ import annotations

import itertools
import math

import torch


def _log_softmax64(row: torch.Tensor) -> torch.Tensor:
    row = row.detach().to(torch.float64) if not row.requires_grad else row.to(torch.float64)
    shifted = row - row.max()
    return shifted - torch.log(torch.exp(shifted).sum())


def _ce(logp: torch.Tensor, y: int, eps: float) -> torch.Tensor:
    nll = -logp[y]
    smooth = -logp.mean()
    return (1.0 - eps) * nll + eps * smooth


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    p = torch.exp(logp)
    return (p * (logp - logq)).sum()


def _js(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    m = 0.5 * (torch.exp(logp) + torch.exp(logq))
    logm = torch.log(m)
    return 0.5 * (_kl(logp, logm) + _kl(logq, logm))


def reference_js_rows(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Literal float64 Jensen-Shannon per row of (N, C) logits, differentiable:

        JS_i = 0.5 * sum_c p_c log(p_c / m_c) + 0.5 * sum_c q_c log(q_c / m_c),  m = (p + q) / 2

    with the convention 0 * log 0 = 0: a term whose probability is exactly 0 (a -inf logit) is
    left out, and a class that is -inf in both rows is left out entirely. One row, one class at a
    time, so it shares no code or trick with rdrop's vectorized log-space version.
    """
    n_classes = logits1.shape[-1]
    rows = []
    for r1, r2 in zip(logits1.reshape(-1, n_classes), logits2.reshape(-1, n_classes), strict=True):
        lp, lq = _log_softmax64(r1), _log_softmax64(r2)
        total = torch.zeros((), dtype=torch.float64)
        for c in range(n_classes):
            zero_p, zero_q = bool(torch.isneginf(lp[c])), bool(torch.isneginf(lq[c]))
            if zero_p and zero_q:
                continue
            p, q = torch.exp(lp[c]), torch.exp(lq[c])
            m = 0.5 * (p + q)
            if not zero_p:
                total = total + 0.5 * p * torch.log(p / m)
            if not zero_q:
                total = total + 0.5 * q * torch.log(q / m)
        rows.append(total)
    return torch.stack(rows)


def js_by_hand(row1: list[float], row2: list[float]) -> float:
    """Jensen-Shannon of two logit rows with the math module only (Python floats are float64)."""

    def softmax(r: list[float]) -> list[float]:
        top = max(r)
        e = [math.exp(v - top) for v in r]
        return [v / sum(e) for v in e]

    total = 0.0
    for p, q in zip(softmax(row1), softmax(row2), strict=True):
        m = 0.5 * (p + q)
        total += (0.5 * p * math.log(p / m) if p > 0 else 0.0)
        total += (0.5 * q * math.log(q / m) if q > 0 else 0.0)
    return total


def reference_rdrop_loss(
    logits_list: list[torch.Tensor],
    target: torch.Tensor,
    alpha: float,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    consistency: str = "kl",
    num_items_in_batch: int | None = None,
) -> dict[str, torch.Tensor]:
    """Literal float64 R-Drop for m >= 2 passes of classification logits (..., C).

    Returns a dict with ``loss``, ``task_loss`` and ``consistency_loss`` reduced as asked.
    The consistency for m passes is the mean over all pairs i < j of the pairwise divergence.
    """
    m = len(logits_list)
    c = logits_list[0].shape[-1]
    flat = [x.reshape(-1, c) for x in logits_list]
    y = target.reshape(-1)
    task_rows, cons_rows = [], []
    for i in range(y.shape[0]):
        yi = int(y[i])
        if yi == ignore_index:
            zero = flat[0][i].sum().to(torch.float64) * 0.0
            task_rows.append(zero)
            cons_rows.append(zero)
            continue
        logps = [_log_softmax64(f[i]) for f in flat]
        task = sum(_ce(lp, yi, label_smoothing) for lp in logps)
        pairs = list(itertools.combinations(range(m), 2))
        pair_terms = []
        for a, b in pairs:
            if consistency == "kl":
                pair_terms.append(0.5 * (_kl(logps[a], logps[b]) + _kl(logps[b], logps[a])))
            elif consistency == "js":
                pair_terms.append(_js(logps[a], logps[b]))
            else:
                raise ValueError(consistency)
        cons_rows.append(sum(pair_terms) / len(pairs))
        task_rows.append(task)
    task_t = torch.stack(task_rows)
    cons_t = torch.stack(cons_rows)
    count = int((y != ignore_index).sum())
    if reduction == "none":
        task_r, cons_r = task_t.reshape(target.shape), cons_t.reshape(target.shape)
    elif reduction == "sum":
        task_r, cons_r = task_t.sum(), cons_t.sum()
    else:
        denom = num_items_in_batch if num_items_in_batch is not None else count
        if denom == 0:
            task_r, cons_r = task_t.sum() * 0.0, cons_t.sum() * 0.0
        else:
            task_r, cons_r = task_t.sum() / denom, cons_t.sum() / denom
    return {"loss": task_r + alpha * cons_r, "task_loss": task_r, "consistency_loss": cons_r}


def reference_mse_rdrop_loss(
    pred1: torch.Tensor, pred2: torch.Tensor, target: torch.Tensor, alpha: float
) -> dict[str, torch.Tensor]:
    """Literal float64 R-Drop for regression heads, per row i (mean over rows):

    task_i        = mean_d (p1_id - y_id)^2 + mean_d (p2_id - y_id)^2
    consistency_i = mean_d (p1_id - p2_id)^2
    """
    n = pred1.shape[0]
    p1 = pred1.reshape(n, -1).to(torch.float64)
    p2 = pred2.reshape(n, -1).to(torch.float64)
    t = target.reshape(n, -1).to(torch.float64)
    task = sum(((p1[i] - t[i]) ** 2).mean() + ((p2[i] - t[i]) ** 2).mean() for i in range(n)) / n
    cons = sum(((p1[i] - p2[i]) ** 2).mean() for i in range(n)) / n
    return {"loss": task + alpha * cons, "task_loss": task, "consistency_loss": cons}


def naive_official_rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    ignore_index: int = -100,
) -> torch.Tensor:
    """The official fairseq-criterion style: full fp32 log-probs AND probs for both passes, two
    elementwise KL tensors of shape (N, V), all kept for backward. Same value as the paper's formula
    under our normalization (per counted row mean); used as the memory/time baseline in benchmarks.
    """
    v = logits1.shape[-1]
    lp1 = torch.log_softmax(logits1.reshape(-1, v).float(), dim=-1)
    lp2 = torch.log_softmax(logits2.reshape(-1, v).float(), dim=-1)
    y = target.reshape(-1)
    keep = (y != ignore_index).float()
    safe_y = y.clamp_min(0)
    ce = -(lp1.gather(1, safe_y[:, None]).squeeze(1) + lp2.gather(1, safe_y[:, None]).squeeze(1))
    p1, p2 = lp1.exp(), lp2.exp()
    kl12 = torch.nn.functional.kl_div(lp2, p1, reduction="none")  # p1 * (log p1 - log p2)
    kl21 = torch.nn.functional.kl_div(lp1, p2, reduction="none")
    kl = 0.5 * (kl12.sum(-1) + kl21.sum(-1))
    n = keep.sum().clamp_min(1.0)
    return ((ce + alpha * kl) * keep).sum() / n


def golden_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Small fixed inputs for the golden-value test (no RNG, so the value is stable forever)."""
    a = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[1.5, 1.0, 0.0], [0.5, -0.5, 2.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    return a, b, y


def golden_value_by_hand() -> float:
    """The golden inputs' loss (alpha=1) computed with the math module only, no torch."""
    a, b, y = ([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[1.5, 1.0, 0.0], [0.5, -0.5, 2.0]], [1, 2])

    def logsm(r: list[float]) -> list[float]:
        z = math.log(sum(math.exp(v) for v in r))
        return [v - z for v in r]

    total = 0.0
    for r1, r2, t in zip(a, b, y, strict=True):
        l1, l2 = logsm(r1), logsm(r2)
        ce = -l1[t] - l2[t]
        kl12 = sum(math.exp(p) * (p - q) for p, q in zip(l1, l2, strict=True))
        kl21 = sum(math.exp(q) * (q - p) for p, q in zip(l1, l2, strict=True))
        total += ce + 0.5 * (kl12 + kl21)
    return total / len(y)


# ------------------------------------------------- second_pass_fraction (rdrop.losses.subset)
def _subset_log_softmax(row: torch.Tensor) -> torch.Tensor:
    row = row.to(torch.float64)
    top = row.max()
    return row - top - torch.log(torch.exp(row - top).sum())


def _subset_ce(logp: torch.Tensor, y: int, eps: float) -> torch.Tensor:
    return (1 - eps) * -logp[y] + eps * -logp.mean()


def _subset_divergence(lp: torch.Tensor, lq: torch.Tensor, consistency: str) -> torch.Tensor:
    p, q = torch.exp(lp), torch.exp(lq)
    if consistency == "kl":
        return 0.5 * ((p * (lp - lq)).sum() + (q * (lq - lp)).sum())
    m = 0.5 * (p + q)
    return 0.5 * (p * (lp - torch.log(m))).sum() + 0.5 * (q * (lq - torch.log(m))).sum()


def reference_subset_loss(logits1, logits2, target, subset, *, alpha, label_smoothing=0.0,
                          consistency="kl", ignore_index=-100, n_b=None, n_s=None,
                          stop_gradient=False):
    """Literal float64, one row (sample or token) at a time:

    loss = (1/N_B) sum_{i in B} CE(P1_i) + (1/N_S) sum_{i in S} [CE(P2_i) + alpha * D(P1_i, P2_i)]

    ``subset``: the batch rows (dim 0) in S; ``logits2[j]`` is the second pass of row
    ``subset[j]``. N_B, N_S count the targets != ignore_index unless given. With
    ``stop_gradient`` P2 is detached and CE(P2) left out.
    """
    c = logits1.shape[-1]
    ce_b, ce_s, div_s = [], [], []
    count_b = count_s = 0
    for i in range(logits1.shape[0]):
        rows1 = logits1[i].reshape(-1, c)
        ys = target[i].reshape(-1)
        for t in range(ys.shape[0]):
            if int(ys[t]) == ignore_index:
                continue
            count_b += 1
            ce_b.append(_subset_ce(_subset_log_softmax(rows1[t]), int(ys[t]), label_smoothing))
    for j, i in enumerate(subset):
        rows1 = logits1[i].reshape(-1, c)
        rows2 = logits2[j].reshape(-1, c)
        if stop_gradient:
            rows2 = rows2.detach()
        ys = target[i].reshape(-1)
        for t in range(ys.shape[0]):
            if int(ys[t]) == ignore_index:
                continue
            count_s += 1
            lp, lq = _subset_log_softmax(rows1[t]), _subset_log_softmax(rows2[t])
            if not stop_gradient:
                ce_s.append(_subset_ce(lq, int(ys[t]), label_smoothing))
            div_s.append(_subset_divergence(lp, lq, consistency))
    n_b = n_b if n_b is not None else max(count_b, 1)
    n_s = n_s if n_s is not None else max(count_s, 1)
    zero = logits1.sum().to(torch.float64) * 0
    task = sum(ce_b, zero) / n_b + sum(ce_s, zero) / n_s
    cons = sum(div_s, zero) / n_s
    return task + alpha * cons, task, cons

"""Summary statistics over seeds: mean, standard deviation, paired difference with a t interval,
Holm's step-down correction for a family of comparisons; the units results are shown in."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedDiff", "Summary", "display_scale", "holm", "paired_difference", "summarize",
           "t_quantile"]

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (fallback when scipy is absent).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def display_scale(metric: str) -> tuple[float, int]:
    """How reports show a metric: ``(factor, decimals)``.

    Records store accuracy-like metrics (accuracy, F1, MCC, BLEU, chrF, ROUGE, mean average
    precision ``map``) as fractions in [0, 1]; reports show them x100 with 2 decimals, as the
    paper does. Everything else
    (perplexity, losses, gaps) is shown as stored, with 3 decimals. Every table, plot, verdict
    and comparison uses this one rule.

    Example:
        >>> display_scale("bleu"), display_scale("test_chrf"), display_scale("perplexity")
        ((100.0, 2), (100.0, 2), (1.0, 3))
        >>> display_scale("valid_map")
        (100.0, 2)
    """
    if "loss" not in metric and re.search(r"acc|f1|mcc|bleu|chrf|rouge|(^|_)map$", metric):
        return 100.0, 2
    return 1.0, 3


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(4), 3)
        2.776
    """
    if df < 1:
        return math.nan
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, df))
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        if level != 0.95:
            raise
        return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof=1; NaN for one value) of ``n`` values."""

    n: int
    mean: float
    std: float


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation.

    Example:
        >>> summarize([1.0, 2.0, 3.0])
        Summary(n=3, mean=2.0, std=1.0)
    """
    n = len(values)
    if n == 0:
        return Summary(0, math.nan, math.nan)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return Summary(n, mean, std)


@dataclass(frozen=True)
class PairedDiff:
    """``treatment - control`` over seeds present in both, with a two-sided t interval.

    Attributes:
        n: number of paired seeds. mean, std: of the per-seed differences.
        low, high: the ``level`` confidence interval of the mean difference.
        p_value: two-sided paired t-test p-value (NaN without scipy or for n < 2).
    """

    n: int
    mean: float
    std: float
    low: float
    high: float
    p_value: float
    level: float = 0.95


def paired_difference(
    control: dict[int, float], treatment: dict[int, float], level: float = 0.95
) -> PairedDiff:
    r"""Paired difference over common seeds: :math:`\bar d \pm t_{n-1} s_d / \sqrt{n}`.

    Args:
        control, treatment: ``{seed: value}``; only seeds in both are paired.
        level: confidence level.

    Example:
        >>> d = paired_difference({0: 0.80, 1: 0.82, 2: 0.81}, {0: 0.82, 1: 0.83, 2: 0.83})
        >>> round(d.mean, 4), d.low < d.mean < d.high
        (0.0167, True)
    """
    seeds = sorted(set(control) & set(treatment))
    diffs = [treatment[s] - control[s] for s in seeds]
    s = summarize(diffs)
    if s.n < 2:
        return PairedDiff(s.n, s.mean, math.nan, math.nan, math.nan, math.nan, level)
    half = t_quantile(s.n - 1, level) * s.std / math.sqrt(s.n)
    p = math.nan
    if s.std > 0:
        try:
            from scipy.stats import t

            p = float(2 * t.sf(abs(s.mean / (s.std / math.sqrt(s.n))), s.n - 1))
        except ImportError:  # pragma: no cover
            pass
    elif s.mean != 0:
        p = 0.0
    return PairedDiff(s.n, s.mean, s.std, s.mean - half, s.mean + half, p, level)


def holm(p_values: Sequence[float]) -> list[float]:
    r"""Holm's step-down adjusted p-values (family-wise error control), in the input order.

    With the :math:`m` p-values sorted ascending, :math:`p_{(1)} \le \dots \le p_{(m)}`:

    .. math::
        \tilde p_{(i)} = \min\Big(1, \max_{j \le i} (m - j + 1)\, p_{(j)}\Big)

    NaN p-values (a comparison with fewer than two seeds) stay NaN and do not count in
    :math:`m`.

    Example:
        >>> [round(p, 6) for p in holm([0.01, 0.04, 0.03])]
        [0.03, 0.06, 0.06]
        >>> holm([0.2, float("nan")])
        [0.2, nan]
    """
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(order)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out

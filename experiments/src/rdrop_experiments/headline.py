"""The README's results table, as data first: one :class:`Headline` per family, then markdown.

Per family (second protocol, each arm at its point chosen on validation): the arm to use, its
best-quality Δ against the tuned baseline with its 95% interval, its Δ at the baseline's
compute with the Holm-adjusted p, and its compute to reach its best (multiple of the
baseline's). **What to use** is the arm with the largest gain at the baseline's compute whose
interval lies on the gain side with Holm p < 0.05; where no arm does that, the tuned baseline
(the row then shows R-Drop as the paper runs it, ``rdrop``). ``rdrop report`` writes the table
to ``headline.md``; the README copies it (a test checks every row against that file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rdrop_experiments.formatting import ci, ratio
from rdrop_experiments.verdict import Comparison, FamilyVerdict

__all__ = ["Headline", "headline", "headline_markdown"]


@dataclass(frozen=True)
class Headline:
    """One family's row. Δs are the arm minus the tuned baseline, in the metric's units."""

    family: str
    metric: str
    higher_is_better: bool
    arm: str
    chosen: str
    best: tuple[float, float, float]
    equal: tuple[float, float, float]
    equal_p_holm: float
    compute_to_best: float
    beats_baseline: bool
    baseline: str


def _gain_side(c: Comparison, higher_is_better: bool) -> bool:
    return c.diff.low > 0 if higher_is_better else c.diff.high < 0


def headline(v: FamilyVerdict) -> Headline | None:
    """The family's row (None without an R-Drop arm)."""
    cmp = {c.name: c for c in v.comparisons}
    winners = [(abs(c.diff.mean), arm) for arm in v.arms if arm != "baseline"
               if (c := cmp.get(f"{arm} - baseline, equal compute")) is not None
               and _gain_side(c, v.higher_is_better) and c.p_holm < 0.05]
    arm = max(winners)[1] if winners else "rdrop"
    best, equal = cmp.get(f"{arm} - baseline, best"), cmp.get(f"{arm} - baseline, equal compute")
    if best is None or equal is None:
        return None
    return Headline(v.experiment, v.metric, v.higher_is_better, arm, v.arms[arm].chosen,
                    (best.diff.mean, best.diff.low, best.diff.high),
                    (equal.diff.mean, equal.diff.low, equal.diff.high), equal.p_holm,
                    v.compute_to_best[arm], bool(winners), v.arms["baseline"].chosen)


def headline_markdown(rows: Sequence[Headline]) -> str:
    """The table (family | best-quality Δ [CI] | Δ at the baseline's compute | compute to best
    | what to use)."""
    lines = ["| family (metric) | best-quality Δ [95% CI] | Δ at the baseline's compute, Holm p "
             "| compute to best | what to use |", "|---|---|---|---|---|"]
    for r in rows:
        better = "higher" if r.higher_is_better else "lower"
        use = (f"`{r.arm}` ({r.chosen})" if r.beats_baseline else
               f"the tuned baseline ({r.baseline}); `{r.arm}` shown")
        lines.append(f"| {r.family} ({r.metric}, {better} is better) | {ci(*r.best)} | "
                     f"{ci(*r.equal, p=r.equal_p_holm)} | {ratio(r.compute_to_best)} | {use} |")
    return "\n".join(lines) + "\n"

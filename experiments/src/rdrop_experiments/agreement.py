"""How far the tryout can be trusted: its verdict against the full registered comparison.

For every family with a tryout (``rdrop tryout RECORD --out <results>/tryout/<family>``, from
the tuned baseline's record, 2 seeds, its default budget) and a full comparison of the plateau
arm (``rdrop+plateau`` against the tuned baseline at the baseline's compute, Holm within the
family), one :class:`AgreementRow`: both verdicts, whether they agree, and the tryout's compute
as a fraction of the full comparison's (sample passes: the tryout's continuations after their
branch point; the full comparison's baseline grid and plateau arm, every seed).

The full comparison's verdict, in the tryout's words: *pays* when the interval of Δ at the
baseline's compute lies on the gain side and the Holm-adjusted p is below 0.05; *does not pay*
when it lies on the loss side; else *not enough evidence*.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rdrop_experiments.design import Design
from rdrop_experiments.formatting import NA, ci, p_value, percent
from rdrop_experiments.storage import load_results
from rdrop_experiments.verdict import build_verdicts

__all__ = ["AgreementRow", "agreement_markdown", "agreement_rows", "full_verdict",
           "same_metric"]

ARM = "rdrop+plateau"


@dataclass(frozen=True)
class AgreementRow:
    """One family: the tryout's verdict against the full comparison's; ``followup`` is the
    tryout rerun with the seeds it asked for (``"not enough evidence"``, N seeds in all), if
    run: ``(seeds, verdict, agrees, compute fraction)``."""

    family: str
    tryout: str
    tryout_alpha: float
    tryout_delta: str
    full: str
    full_alpha: str
    full_delta: str
    agree: bool
    compute_fraction: float
    followup: tuple[int, str, bool, float] | None = None
    same_metric: bool = True


def full_verdict(mean: float, low: float, high: float, p_holm: float,
                 higher_is_better: bool) -> str:
    """The full comparison's verdict in the tryout's three words.

    Example:
        >>> full_verdict(-60.5, -73.3, -47.7, 0.003, higher_is_better=False)
        'pays'
        >>> full_verdict(-1.0, -3.0, 1.0, 0.4, higher_is_better=True)
        'not enough evidence'
    """
    gain_low, gain_high = (low, high) if higher_is_better else (-high, -low)
    if gain_low > 0 and p_holm < 0.05:
        return "pays"
    if gain_high < 0:
        return "does not pay"
    return "not enough evidence"


def _passes_after(rec: dict[str, Any], step: int) -> float:
    before = [c["sample_passes"] for c in rec["curves"] if c["step"] <= step]
    return float(rec["extra"]["sample_passes"]) - (before[-1] if before else 0.0)


def _branch_seed(rec: dict[str, Any]) -> int:
    """The seed a continuation ran with after the branch (the record's own without one)."""
    branch = rec["config"].get("branch_seed")
    return int(rec["seed"]) if branch is None else int(branch)


def agreement_rows(results: str | Path, design: Design | None = None) -> list[AgreementRow]:
    """A row per family that has both a tryout under ``results/tryout/<family>`` and the
    plateau arm's full comparison under ``results/<family>`` (``design``: the registered grids'
    order, for ties on validation)."""
    results = Path(results)
    rows = []
    for path in sorted((results / "tryout").glob("*/tryout-2seeds.json")):
        saved = json.loads(path.read_text())
        family = saved["experiment"]
        records = [r for r in load_results(results / family) if r["experiment"] == family]
        verdicts = build_verdicts(records, design)
        if not verdicts or ARM not in verdicts[0].arms:
            continue
        v = verdicts[0]
        cmp = next(c for c in v.comparisons if c.name == f"{ARM} - baseline, equal compute")
        d = cmp.diff
        full = full_verdict(d.mean, d.low, d.high, cmp.p_holm, v.higher_is_better)
        branch = int(saved["checkpoint_step"])
        continuations = load_results(path.parent)
        tryout_passes = sum(_passes_after(r, branch) for r in continuations
                            if _branch_seed(r) in saved["seeds"][:2])
        full_recs = [r for m in ("baseline", ARM) for point in v.arms[m].points.values()
                     for r in point.values()]
        full_passes = sum(float(r["extra"]["sample_passes"]) for r in full_recs)
        at = saved.get("at_compute") or {}
        followup = None
        more = sorted(path.parent.glob("tryout-*seeds.json"),
                      key=lambda p: int(p.name.split("-")[1].removesuffix("seeds.json")))
        if more and more[-1] != path:
            later = json.loads(more[-1].read_text())
            passes = sum(_passes_after(r, branch) for r in continuations)
            followup = (len(later["seeds"]), later["verdict"], later["verdict"] == full,
                        passes / full_passes if full_passes else math.nan)
        selection = json.loads(Path(saved["record"]).read_text())["extra"]["selection_metric"]
        same = same_metric(saved, selection, v.metric)
        scale = v.scale if same else 1.0  # a percent metric is shown in points
        rows.append(AgreementRow(
            family=family, tryout=saved["verdict"], tryout_alpha=float(saved["alpha"]),
            tryout_delta=ci(scale * at["mean"], scale * at["low"], scale * at["high"])
            if at else NA,
            full=full, full_alpha=v.arms[ARM].chosen,
            full_delta=f"{ci(d.mean, d.low, d.high)}, Holm p {p_value(cmp.p_holm)}",
            agree=saved["verdict"] == full,
            compute_fraction=tryout_passes / full_passes if full_passes else math.nan,
            followup=followup, same_metric=same))
    return rows


def same_metric(saved: dict[str, Any], selection: str, metric: str) -> bool:
    """Whether a saved tryout's Δs are of the family's metric, as the full comparison's are: it
    says so (``test_metric``, written since the tryout compares the reported metric), or the
    family selects on that metric (an older tryout compared test values of the selection
    metric: validation NLL in the seq2seq families, which ROUGE-1 and BLEU are not).

    Example:
        >>> same_metric({"test_metric": "test_rouge1"}, "valid_loss", "rouge1")
        True
        >>> same_metric({}, "valid_loss", "rouge1"), same_metric({}, "valid_accuracy", "accuracy")
        (False, True)
    """
    return saved.get("test_metric") == f"test_{metric}" or selection == f"valid_{metric}"


def agreement_markdown(rows: Sequence[AgreementRow]) -> str:
    """The agreement table, its rate and the tryout's compute as a fraction of the full one's."""
    if not rows:
        return ""
    lines = ["# The tryout against the full comparison", "",
             "`rdrop tryout` from the tuned baseline's seed-0 record (2 seeds, default budget) "
             "against the registered plateau arm (5 seeds, Holm within the family), both at "
             "the baseline's compute. Rebuilt by `rdrop report --results results`.", "",
             "| family | tryout (2 seeds): verdict, alpha, Δ at your compute | full: verdict, "
             "alpha, Δ at the baseline's compute | agree | tryout compute / full | with the "
             "seeds it asked for: seeds, verdict, agree, compute / full |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        f = r.followup
        family = r.family if r.same_metric else f"{r.family} (tryout on test NLL, full on " \
            "the family's metric: not comparable)"
        more = ("–" if f is None else
                f"{f[0]}, {f[1]}, {'yes' if f[2] else 'no'}, {percent(f[3], 0, sign=False)}")
        lines.append(f"| {family} | {r.tryout}, {r.tryout_alpha:g}, {r.tryout_delta} | "
                     f"{r.full}, {r.full_alpha}, {r.full_delta} | {'yes' if r.agree else 'no'} "
                     f"| {percent(r.compute_fraction, 0, sign=False)} | {more} |")
    same = [r for r in rows if r.same_metric]
    agree = sum(r.agree for r in same)
    mean_fraction = sum(r.compute_fraction for r in same) / len(same) if same else math.nan
    lines += ["", f"Agreement at 2 seeds, over the {len(same)} families where both compare "
              f"the same metric: {agree}/{len(same)} "
              f"({percent(agree / len(same) if same else math.nan, 0, sign=False)}), at "
              f"{percent(mean_fraction, 0, sign=False)} of the full comparison's compute on "
              "average."]
    followed = [r.followup for r in same if r.followup is not None]
    if followed:
        n_agree = sum(f[2] for f in followed)
        lines.append(f"With the seeds the tryout asked for ({len(followed)} families): "
                     f"{n_agree}/{len(followed)} agree, at "
                     f"{percent(sum(f[3] for f in followed) / len(followed), 0, sign=False)} of "
                     "the compute.")
    return "\n".join(lines) + "\n"

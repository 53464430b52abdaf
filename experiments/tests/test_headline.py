"""The README's results table (`rdrop_experiments.headline`): what to use is the arm with the
largest gain at the baseline's compute whose interval lies on the gain side with Holm p < 0.05,
else the tuned baseline (R-Drop shown); the row and its markdown, written out by hand."""

from __future__ import annotations

import math

from rdrop_experiments.headline import Headline, headline, headline_markdown
from rdrop_experiments.stats import PairedDiff
from rdrop_experiments.verdict import Arm, Comparison, FamilyVerdict


def _cmp(arm, kind, mean, low, high, p_holm):
    name = f"{arm} - baseline, {'best' if kind == 'best' else 'equal compute'}"
    return Comparison(name, kind, PairedDiff(3, mean, 1.0, low, high, 0.01), p_holm)


def _verdict(equal, *, higher_is_better=True, metric="accuracy"):
    """A family whose arms' best-quality Δ is +0.5 [+0.1, +0.9] (Holm p 0.2) and whose
    equal-compute Δs are ``equal``: ``{arm: (mean, low, high, holm p)}``."""
    arms = {"baseline": Arm("baseline", "dropout=0.1", {}, {})}
    comparisons = []
    for i, (arm, (mean, low, high, p)) in enumerate(equal.items()):
        arms[arm] = Arm(arm, f"alpha={i + 1}", {}, {})
        comparisons += [_cmp(arm, "best", 0.5, 0.1, 0.9, 0.2),
                        _cmp(arm, "equal", mean, low, high, p)]
    compute = {"baseline": 1.0, **{arm: 1.5 + i for i, arm in enumerate(equal)}}
    return FamilyVerdict("fam", metric, higher_is_better, 100.0, arms, comparisons, compute,
                         {}, (3, 3))


def test_the_largest_gain_whose_interval_clears_zero_at_holm_p_below_005_is_what_to_use():
    v = _verdict({"rdrop": (1.0, 0.2, 1.8, 0.01),
                  "rdrop_stop_gradient": (2.0, 0.5, 3.5, 0.03),
                  "rdrop_fraction": (3.0, -0.5, 6.5, 0.2),  # larger, but its interval holds 0
                  "rdrop_plateau": (4.0, 1.0, 7.0, 0.06)})  # clear of 0, but Holm p >= 0.05
    assert headline(v) == Headline(
        family="fam", metric="accuracy", higher_is_better=True, arm="rdrop_stop_gradient",
        chosen="alpha=2", best=(0.5, 0.1, 0.9), equal=(2.0, 0.5, 3.5), equal_p_holm=0.03,
        compute_to_best=2.5, beats_baseline=True, baseline="dropout=0.1")
    (head, rule, row) = headline_markdown([headline(v)]).splitlines()
    assert head == ("| family (metric) | best-quality Δ [95% CI] | Δ at the baseline's compute, "
                    "Holm p | compute to best | what to use |")
    assert rule == "|---|---|---|---|---|"
    assert row == ("| fam (accuracy, higher is better) | +0.50 [+0.10, +0.90] | "
                   "+2.00 [+0.50, +3.50], 0.030 | 2.50x | `rdrop_stop_gradient` (alpha=2) |")


def test_without_a_winner_the_row_shows_rdrop_and_says_use_the_tuned_baseline():
    v = _verdict({"rdrop_stop_gradient": (3.0, 1.0, 5.0, 0.051),
                  "rdrop": (-1.0, -1.5, -0.5, 0.0005)})  # clear of 0 on the losing side
    h = headline(v)
    assert (h.arm, h.chosen, h.beats_baseline) == ("rdrop", "alpha=2", False)
    assert h.equal == (-1.0, -1.5, -0.5) and h.compute_to_best == 2.5
    row = headline_markdown([h]).splitlines()[2]
    assert row == ("| fam (accuracy, higher is better) | +0.50 [+0.10, +0.90] | "
                   "-1.00 [-1.50, -0.50], <0.001 | 2.50x | "
                   "the tuned baseline (dropout=0.1); `rdrop` shown |")


def test_a_lower_is_better_metric_gains_below_zero():
    v = _verdict({"rdrop": (-2.0, -3.0, -1.0, 0.01),
                  "rdrop_stop_gradient": (5.0, 4.0, 6.0, 0.001)},  # larger |Δ|, but worse
                 higher_is_better=False, metric="perplexity")
    h = headline(v)
    assert (h.arm, h.beats_baseline, h.equal_p_holm) == ("rdrop", True, 0.01)
    assert headline_markdown([h]).splitlines()[2] == (
        "| fam (perplexity, lower is better) | +0.50 [+0.10, +0.90] | -2.00 [-3.00, -1.00], "
        "0.010 | 1.50x | `rdrop` (alpha=1) |")


def test_no_row_without_rdrop_and_an_empty_table_is_its_header():
    v = _verdict({"rdrop_stop_gradient": (1.0, -1.0, 3.0, 0.5)})  # no winner, no `rdrop`
    assert headline(v) is None
    assert headline_markdown([]).count("\n") == 2
    # a NaN compute to best reads n/a, as everywhere
    nan = Headline("fam", "bleu", True, "rdrop", "alpha=1", (1.0, 0.5, 1.5),
                   (1.0, 0.5, 1.5), 0.01, math.nan, True, "dropout=0.1")
    assert "| n/a | `rdrop` (alpha=1) |" in headline_markdown([nan])

"""The quality/compute frontier: arms named by their schedule options, compute in
forward+backward equivalents (old records re-read with the family's f), the frontier rows and
the recommendation computed by hand on a small synthetic family."""

from __future__ import annotations

import math

import pytest

from rdrop_experiments.frontier import (
    arm_name,
    compute_to_reach,
    frontier_markdown,
    frontier_rows,
    recommendation,
)
from rdrop_experiments.verdict import build_verdicts, verdict_report


def _rec(method, seed, setting, tests, value, best_step, *, config=None, fb=None, passes=None,
         extra=None):
    curves = []
    for i, t in enumerate(tests):
        point = {"step": i + 1, "test_perplexity": t}
        if fb is not None:
            point |= {"fb_equivalents": fb[i], "sample_passes": fb[i], "backward_passes": fb[i]}
        else:
            point |= {"sample_passes": passes[0][i], "backward_passes": passes[1][i]}
        curves.append(point)
    return {"experiment": "lm", "method": method, "seed": seed,
            "setting": f"methods={method},{setting}", "metric": "perplexity", "value": value,
            "higher_is_better": False, "curves": curves, "config": config or {},
            "extra": {"selection": "best_valid", "best_valid": value, "best_step": best_step,
                      "stop_reason": "patience", **(extra or {})}}


def _family():
    recs = []
    for s in range(3):
        recs.append(_rec("baseline", s, "dropout=0.1", [400, 300 + s, 300 + s], 300 + s, 2,
                         fb=[50, 100, 150]))
        recs.append(_rec("rdrop", s, "alpha=2.0", [350, 310, 280, 270 - s], 270 - s, 4,
                         fb=[100, 200, 300, 400]))
        recs.append(_rec("rdrop", s, "second_pass_fraction=0.25",
                         [340, 300, 285, 275], 275, 4, fb=[60, 120, 180, 240],
                         config={"second_pass_fraction": 0.25},
                         extra={"forward_ratio": 0.5}))
        # an earlier stop-gradient record: no fb on its curves, a forward-only pass per sample
        recs.append(_rec("rdrop_stop_gradient", s, "alpha=2.0", [330, 305, 290, 290], 290, 3,
                         passes=([100, 200, 300, 400], [50, 100, 150, 200])))
    return recs


def test_arm_names_separate_schedules_from_the_full_method():
    (v,) = build_verdicts(_family())
    assert list(v.arms) == ["baseline", "rdrop", "rdrop_stop_gradient", "rdrop+fraction"]
    assert v.arms["rdrop"].chosen == "alpha=2.0"  # the fraction records are not its grid
    assert v.forward_ratio == 0.5 and v.forward_ratio_measured
    assert arm_name({"method": "rdrop", "config": {"start_step": 30}}) == "rdrop+start"


def test_rows_and_equal_compute_by_hand():
    (v,) = build_verdicts(_family())
    rows = {r.arm: r for r in frontier_rows(v)}
    # stop-gradient, f = 0.5: fb per point = backward + 0.5 * (sample - backward)
    sg = rows["rdrop_stop_gradient"]
    assert sg.fb_best == 225.0 and sg.to_best.mean == pytest.approx(2.25)
    assert rows["rdrop"].to_best.mean == pytest.approx(4.0)
    assert rows["rdrop+fraction"].to_best.mean == pytest.approx(2.4)
    # reaching the baseline's best (300 + s): rdrop at fb 300 -> 3x; the fraction at 120 -> 1.2x
    assert rows["rdrop"].to_baseline_best.mean == pytest.approx(3.0)
    assert rows["rdrop+fraction"].to_baseline_best.mean == pytest.approx(1.2)
    assert rows["rdrop+fraction"].reached == 3
    # share of full R-Drop's gain: base mean 301, rdrop 269, fraction 275, stop-gradient 290
    assert rows["rdrop+fraction"].gain_kept == pytest.approx(26 / 32)
    assert rows["rdrop_stop_gradient"].gain_kept == pytest.approx(11 / 32)
    # equal compute: the baseline used 150 fb; within it rdrop has 350, the fraction 300,
    # stop-gradient (fb 150 at its 2nd point) 305
    cmp = {c.name: c.diff for c in v.comparisons}
    assert cmp["rdrop - baseline, equal compute"].mean == pytest.approx(350 - 301)
    assert cmp["rdrop+fraction - baseline, equal compute"].mean == pytest.approx(300 - 301)
    assert cmp["rdrop_stop_gradient - baseline, equal compute"].mean == pytest.approx(305 - 301)
    assert rows["rdrop+fraction"].at_baseline[0] == pytest.approx(-1.0)


def test_recommendation_picks_the_cheapest_arm_keeping_eighty_percent():
    (v,) = build_verdicts(_family())
    text = recommendation(v)
    assert "**rdrop+fraction** (second_pass_fraction=0.25): 81% of the gain" in text
    assert "No arm beats the tuned baseline at the baseline's compute" in text
    md = frontier_markdown([v])
    assert "| lm (f=0.50) | rdrop+fraction | second_pass_fraction=0.25 |" in md


def test_without_a_gain_there_is_nothing_to_keep():
    recs = [r for r in _family() if r["method"] != "rdrop" or not r["config"]]
    for r in recs:
        if r["method"] == "rdrop" and not r["config"]:
            r["value"] = 320.0
    (v,) = build_verdicts(recs)
    assert "does not improve on the tuned baseline" in recommendation(v)
    assert all(math.isnan(r.gain_kept) for r in frontier_rows(v))


def test_compute_to_reach_never_reached_is_inf():
    rec = _rec("rdrop", 0, "x", [500, 400], 400, 2, fb=[10, 20])
    assert compute_to_reach(rec, "test_perplexity", 300.0, False, 0.5) == math.inf
    assert compute_to_reach(rec, "test_perplexity", 450.0, False, 0.5) == 20.0


def test_report_writes_the_frontier_plot(tmp_path):
    pytest.importorskip("matplotlib")
    text = verdict_report(_family(), tmp_path)
    assert "Quality/compute frontier" in text and "Recommendation per family" in text
    assert (tmp_path / "plots" / "frontier-lm.png").stat().st_size > 1000

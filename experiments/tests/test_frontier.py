"""The quality/compute frontier: arms named by their schedule options, compute in
forward+backward equivalents (old records re-read with the family's f), the frontier rows and
the recommendation computed by hand on a small synthetic family."""

from __future__ import annotations

import math

import pytest

from rdrop_experiments.frontier import (
    CHEAPER_ARM,
    NO_FULL_ARM,
    NO_GAIN,
    AtCompute,
    Interval,
    Recommendation,
    arm_name,
    compute_to_reach,
    frontier_markdown,
    frontier_rows,
    recommendation,
    recommendation_text,
    unscheduled,
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
    r = recommendation(v)
    assert (r.family, r.metric, r.higher_is_better, r.kind) == ("lm", "perplexity", False,
                                                                CHEAPER_ARM)
    # full R-Drop: 269 against the baseline's 301, at 400 / 100 fb to its best
    assert r.gain == pytest.approx(-32.0) and r.full_to_best == pytest.approx(4.0)
    # the fraction keeps (275 - 301) / (269 - 301) of it, at 240 / 100 fb, every seed alike;
    # the stop-gradient arm keeps 11/32 (below 80%) although it is cheaper (2.25x)
    assert (r.arm, r.chosen) == ("rdrop+fraction", "second_pass_fraction=0.25")
    assert r.gain_kept == pytest.approx(26 / 32)
    assert (r.quality.mean, r.quality.low, r.quality.high) == pytest.approx((275, 275, 275))
    assert (r.to_best.mean, r.to_best.low, r.to_best.high) == pytest.approx((2.4, 2.4, 2.4))
    # at the baseline's compute (150 fb) the fraction is 300 against 300, 301, 302: -1 on
    # average, not significant; the closest arm to beating the baseline
    assert r.beats_baseline == ()
    closest = r.best_at_compute
    assert closest.arm == "rdrop+fraction" and closest.mean == pytest.approx(-1.0)
    assert closest.p_holm > 0.05
    md = frontier_markdown([v])
    assert "| lm (f=0.50) | rdrop+fraction | second_pass_fraction=0.25 |" in md


def test_the_paragraph_is_written_from_the_fields():
    r = Recommendation("fam", "accuracy", True, CHEAPER_ARM, gain=2.0, full_to_best=3.0,
                       arm="rdrop+fraction", chosen="alpha=1", gain_kept=0.9,
                       quality=Interval(3, 80.0, 79.0, math.nan),
                       to_best=Interval(3, 1.5, 1.25, 1.75),
                       beats_baseline=(AtCompute("rdrop+plateau", 1.0, 0.5, 1.5, 0.0004),))
    text = recommendation_text(r)
    for part in ("fam (accuracy, higher is better)", "+2.00 at 3.00x", "**rdrop+fraction** "
                 "(alpha=1): 90% of the gain", "80.00 [79.00, n/a]", "1.50x [1.25x, 1.75x]",
                 "rdrop+plateau +1.00 [+0.50, +1.50], Holm p <0.001"):
        assert part in text, part
    assert "nan" not in text
    assert recommendation_text(Recommendation("fam", "m", True, NO_FULL_ARM)) == (
        "fam: no full R-Drop arm, so no gain to keep.")


def test_without_a_gain_there_is_nothing_to_keep():
    recs = [r for r in _family() if r["method"] != "rdrop" or not r["config"]]
    for r in recs:
        if r["method"] == "rdrop" and not r["config"]:
            r["value"] = 320.0
    (v,) = build_verdicts(recs)
    r = recommendation(v)
    assert r.kind == NO_GAIN and r.arm is None and r.gain == pytest.approx(320 - 301)
    assert all(math.isnan(row.gain_kept) for row in frontier_rows(v))


def test_without_full_rdrop_there_is_no_gain_to_keep():
    (v,) = build_verdicts([r for r in _family() if r["method"] != "rdrop"])
    r = recommendation(v)
    assert r.kind == NO_FULL_ARM and math.isnan(r.gain) and r.best_at_compute is None


def test_unscheduled_keeps_only_the_arms_named_by_their_method():
    recs = _family()
    kept = unscheduled(recs)
    assert {arm_name(r) for r in kept} == {"baseline", "rdrop", "rdrop_stop_gradient"}
    assert len(kept) == len(recs) - 3  # the three fraction records


def test_compute_to_reach_never_reached_is_inf():
    rec = _rec("rdrop", 0, "x", [500, 400], 400, 2, fb=[10, 20])
    assert compute_to_reach(rec, "test_perplexity", 300.0, False, 0.5) == math.inf
    assert compute_to_reach(rec, "test_perplexity", 450.0, False, 0.5) == 20.0


def test_report_writes_the_frontier_plot(tmp_path):
    pytest.importorskip("matplotlib")
    text = verdict_report(_family(), tmp_path)
    assert "Quality/compute frontier" in text and "Recommendation per family" in text
    assert (tmp_path / "plots" / "frontier-lm.png").stat().st_size > 1000

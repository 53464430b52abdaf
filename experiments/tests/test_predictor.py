"""The scale map's registered predictor (`rdrop_experiments.predictor`): the least-squares
line and its leave-one-family-out check against the constant, by hand."""

from __future__ import annotations

import math

import pytest

from rdrop_experiments.predictor import Predictor, fit_line, fit_predictor, predictor_markdown
from rdrop_experiments.scale_map import MapCell


def _cell(family, gap, rel):
    family = {"a": "image", "b": "language-modeling", "c": "translation"}.get(family, family)
    nan = math.nan
    return MapCell(name=f"{family}-{gap}", family=family, source="scale", size=1, model="d",
                   metric="m", higher_is_better=True, seeds=3, chosen_baseline="",
                   chosen_rdrop="", baseline=1.0, rdrop=1.0, best=0.0, best_low=nan,
                   best_high=nan, best_holm=nan, equal=nan, equal_low=nan, equal_high=nan,
                   equal_holm=nan, compute_to_best=2.0, rel=rel, gap=gap, after_best=0.0,
                   overfit=True, stopped_past_optimum="3/3", alpha=1.0)


def test_fit_line_and_the_leave_one_family_out_check_by_hand():
    # by hand: mean x 7/3, mean y 2, Sxx 14/3, Sxy 3: b = 9/14, a = 2 - b * 7/3 = 1/2
    assert fit_line([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]) == pytest.approx((0.5, 9 / 14))
    # gain = 0.1 * gap exactly, in three families: the line predicts held-out families exactly
    cells = [_cell(f, g, 0.1 * g) for f, gs in (("a", (0.5, 1.0)), ("b", (2.0, 3.0)),
                                                  ("c", (4.0,))) for g in gs]
    cells.append(_cell("unregistered", 1.0, 5.0))  # a family added later: left out of the fit
    p = fit_predictor(cells)
    assert p is not None and p.beats_constant
    assert p.a == pytest.approx(0.0, abs=1e-12) and p.b == pytest.approx(0.1)
    assert p.mae_line == pytest.approx(0.0, abs=1e-12)
    # the constant's error, written out: held-out family's cells minus the others' mean
    errs = [abs(0.05 - 0.3), abs(0.1 - 0.3),  # family a vs mean(0.2, 0.3, 0.4)
            abs(0.2 - 0.55 / 3), abs(0.3 - 0.55 / 3),  # family b vs mean(0.05, 0.1, 0.4)
            abs(0.4 - 0.65 / 4)]  # family c vs mean(0.05, 0.1, 0.2, 0.3)
    assert p.mae_constant == pytest.approx(sum(errs) / 5)
    # noise that the gap does not explain: the constant wins, and advise must say so
    noisy = [_cell("a", 0.5, 0.3), _cell("a", 1.0, -0.2), _cell("b", 2.0, 0.25),
             _cell("b", 3.0, -0.3), _cell("c", 4.0, 0.2)]
    assert not fit_predictor(noisy).beats_constant


def test_one_family_fits_nothing_and_the_report_says_which_wins():
    one = [_cell("a", 0.5, 0.05), _cell("a", 1.0, 0.1)]
    assert fit_predictor(one) is None  # a leave-one-family-out check needs two families
    assert "no predictor fitted" in predictor_markdown(None)
    line = Predictor(a=0.01, b=0.1, mae_line=0.02, mae_constant=0.03, rmse_line=0.025, cells=5,
                     families=3)
    assert line.beats_constant
    assert predictor_markdown(line).splitlines()[2] == (
        "rel = +0.0100 +0.1000 x gap, over 5 cells of 3 families. Leave-one-family-out mean "
        "absolute error: line 2.0% vs constant 3.0%: the line beats the constant.")
    worse = Predictor(0.01, 0.1, 0.04, 0.03, 0.05, 5, 3)
    assert not worse.beats_constant
    assert "line 4.0% vs constant 3.0%: the line does NOT beat the constant" in \
        predictor_markdown(worse)

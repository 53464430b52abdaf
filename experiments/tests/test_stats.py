"""Paired differences and their Student-t interval, against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from rdrop_experiments.stats import paired_difference, summarize


def test_t_interval_by_hand():
    d = paired_difference({0: 1.0, 1: 2.0, 2: 4.0, 3: 4.0}, {0: 2.0, 1: 2.5, 2: 5.5, 3: 4.0})
    # differences 1, .5, 1.5, 0: mean .75, sd .6455, t_{3,.975} = 3.1824
    assert math.isclose(d.mean, 0.75)
    assert math.isclose(d.high - d.mean, 3.18245 * 0.645497 / 2, rel_tol=1e-4)
    assert d.n == 4


def test_pairs_only_the_seeds_both_sides_ran():
    d = paired_difference({0: 1.0, 1: 2.0, 7: 9.0}, {0: 2.0, 1: 4.0, 8: 0.0})
    assert d.n == 2 and d.mean == pytest.approx(1.5)


def test_summary_mean_and_sample_std():
    s = summarize([0.80, 0.82, 0.81])
    assert s.n == 3 and s.mean == pytest.approx(0.81) and s.std == pytest.approx(0.01)

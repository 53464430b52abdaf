"""One way to write a number in every report: missing values read n/a, never nan."""

from __future__ import annotations

import math

import pytest

from rdrop_experiments.formatting import NA, ci, number, p_value, percent, ratio, signed


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf])
def test_every_formatter_writes_a_missing_value_as_n_a(missing):
    assert NA == "n/a"
    for text in (number(missing), signed(missing), ratio(missing), p_value(missing),
                 percent(missing)):
        assert text == "n/a"
    assert ci(missing, missing, missing, p=math.nan) == "n/a [n/a, n/a], n/a"


def test_numbers_by_kind():
    assert number(1.005, 1) == "1.0" and number(2.0, 0) == "2"
    assert signed(0.0) == "+0.00" and signed(-1.234) == "-1.23"
    assert ratio(1.5) == "1.50x"
    assert percent(0.031) == "+3.1%" and percent(0.5, 0, sign=False) == "50%"
    assert p_value(0.0499) == "0.050" and p_value(0.001) == "0.001"
    assert p_value(0.00099) == "<0.001"


def test_an_interval_with_and_without_its_p():
    assert ci(1.0, -0.5, 2.25) == "+1.00 [-0.50, +2.25]"
    assert ci(1.0, -0.5, 2.25, p=0.2, digits=1) == "+1.0 [-0.5, +2.2], 0.200"

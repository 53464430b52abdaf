"""Holm's correction against the sequential rejection procedure it summarizes."""

from __future__ import annotations

import math
import random

import pytest

from rdrop_experiments.stats import holm


def _holm_rejects(p_values: list[float], level: float) -> set[int]:
    """Holm (1979) as written: reject H_(1), H_(2), ... while p_(j) <= level / (m - j + 1)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m = len(p_values)
    rejected: set[int] = set()
    for j, i in enumerate(order):
        if p_values[i] > level / (m - j):
            break
        rejected.add(i)
    return rejected


def test_adjusted_p_values_reproduce_holm_rejections_at_every_level():
    rng = random.Random(0)
    for _ in range(200):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 6))]
        adjusted = holm(p)
        for level in (0.001, 0.01, 0.05, 0.1, 0.2, 0.5):
            assert {i for i, a in enumerate(adjusted) if a <= level} == _holm_rejects(p, level)
        assert all(a >= q for a, q in zip(adjusted, p, strict=True))
        assert all(a <= 1.0 for a in adjusted)


def test_known_values_and_nan_handling():
    assert holm([0.01, 0.02, 0.03, 0.04]) == pytest.approx([0.04, 0.06, 0.06, 0.06])
    out = holm([0.04, math.nan, 0.01])
    assert out[0] == pytest.approx(0.04) and out[2] == pytest.approx(0.02)
    assert math.isnan(out[1])
    assert holm([]) == []

"""rdrop_experiments.compute: the per-step cost table, the forward-ratio probe leaves the run
untouched, and fb_equivalents accumulate as g + f * h (no timing is asserted)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rdrop_experiments.compute import ComputeMeter, fb_of_point, measure_forward_ratio, step_passes


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"active": False}, (16, 0)),
    ({"active": True}, (32, 0)),
    ({"active": True, "num_passes": 3}, (48, 0)),
    ({"active": True, "second_rows": 4}, (20, 0)),
    ({"active": True, "second_rows": 8}, (24, 0)),
    ({"active": True, "stop_gradient": True}, (16, 16)),
    ({"active": True, "stop_gradient": True, "second_rows": 4}, (16, 4)),
    ({"active": False, "stop_gradient": True, "second_rows": 4}, (16, 0)),
])
def test_step_passes_table(kwargs, expected):
    assert step_passes(16, **kwargs) == expected


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Linear(16, 4))


def test_the_probe_leaves_rng_weights_and_gradients_as_they_were():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(6, 8), torch.randint(0, 4, (6,))
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    ratio = measure_forward_ratio(net, (x,), y, repeats=2)
    assert torch.equal(torch.rand(5), expected)  # the run's dropout stream is unchanged
    assert 0 < ratio <= 1
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q) and p.grad is None


def test_meter_accumulates_g_plus_f_h_and_resumes():
    meter = ComputeMeter(_net(), forward_ratio=0.4)
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    for passes in [(4, 0), (8, 0), (4, 4), (4, 1)]:
        meter.add((x,), y, passes=passes)
    assert meter.point() == {"fb_equivalents": round(4 + 8 + 4 + 0.4 * 4 + 4 + 0.4 * 1, 4)}
    resumed = ComputeMeter(_net())
    resumed.load_state_dict(meter.state_dict())
    resumed.add((x,), y, passes=(4, 4))
    meter.add((x,), y, passes=(4, 4))
    assert resumed.point() == meter.point()
    assert meter.record_fields()["forward_ratio"] == 0.4


def test_the_meter_measures_once_at_its_first_step():
    meter = ComputeMeter(_net(), repeats=1)
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    meter.add((x,), y, passes=(4, 4))
    f = meter.forward_ratio
    assert f is not None and 0 < f <= 1
    meter.add((x,), y, passes=(4, 4))
    assert meter.forward_ratio == f
    assert meter.point()["fb_equivalents"] == pytest.approx(8 + 8 * f, abs=1e-3)


def test_points_of_earlier_records_are_read_from_sample_and_backward_passes():
    assert fb_of_point({"sample_passes": 3200, "backward_passes": 1600}, 0.35) == 2160.0
    assert fb_of_point({"sample_passes": 3200, "backward_passes": 3200}, 0.35) == 3200.0
    assert fb_of_point({"sample_passes": 100}, 0.35) == 100.0
    assert fb_of_point({"fb_equivalents": 12.5, "sample_passes": 100}, 0.35) == 12.5

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


# ---------------------------------------------------------------- the loop's call sites
class _Out:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss, self.task_loss, self.consistency_loss = loss, loss.detach(), torch.zeros(())


class _Step:
    """A step that reports what it ran (``last_passes``) and switches to a two-pass cost when
    told that validation stalled (``observe_validation``), like the automatic start."""

    def __init__(self, net: nn.Module, switch_after: int) -> None:
        self.net, self.switch_after, self.seen, self.on = net, switch_after, 0, False
        self.last_passes = (4, 0)

    def __call__(self, x, target):
        self.last_passes = (4, 1) if self.on else (4, 0)  # the "R-Drop" steps: + 1 no-grad row
        return _Out(nn.functional.cross_entropy(self.net(x), target))

    def observe_validation(self, value: float, step: int, higher_is_better: bool) -> bool:
        self.seen += 1
        if not self.on and self.seen == self.switch_after:
            self.on = True
            return True
        return False


def test_the_loop_charges_what_the_step_ran_and_restarts_patience_at_the_switch():
    from dataclasses import dataclass

    from rdrop_experiments.config import CommonConfig
    from rdrop_experiments.protocol import train_until_patience
    from rdrop_experiments.registry import ArmRun
    from rdrop_experiments.resume import BatchCycle
    from rdrop_experiments.task import Task, Trainer

    @dataclass(frozen=True)
    class Cfg(CommonConfig):
        batch_size: int = 4
        eval_every: int = 2
        max_steps: int = 40
        patience: int = 2

    net = _net()
    step = _Step(net, switch_after=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x, y = torch.randn(4, 8), torch.randint(0, 4, (4,))
    valid = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0, 1.0, 1.0])
    task = Task(model=lambda: net, batch=lambda idx: ((x,), y), n_train=8,
                evaluate=lambda _, split: {"m": next(valid)} if split == "valid"
                else {"loss": 0.0}, metric="m", higher_is_better=False)
    trainer = Trainer(net, step, opt, sched, BatchCycle(8, 4, torch.Generator()))
    out = train_until_patience(task, trainer, Cfg(), ArmRun(method="baseline", seed=0,
                                                            progress=False))
    # best at the 2nd evaluation; the switch at the 3rd (no improvement) restarts the count:
    # without it the run would stop at the 4th evaluation, with it at the 5th
    assert out.stop_reason == "patience"
    assert [c["step"] for c in out.curves] == [2, 4, 6, 8, 10]
    f = out.record_fields()["forward_ratio"]
    assert 0 < f <= 1
    # steps 1-6 cost 4 each; steps 7-10 (after the switch) 4 with backward + 1 forward-only
    fb = [c["fb_equivalents"] for c in out.curves]
    assert fb[:3] == [8.0, 16.0, 24.0]
    assert fb[3:] == pytest.approx([24 + 2 * (4 + f), 24 + 4 * (4 + f)], abs=1e-3)
    assert [c["sample_passes"] for c in out.curves] == [8, 16, 24, 34, 44]
    assert [c["backward_passes"] for c in out.curves] == [8, 16, 24, 32, 40]

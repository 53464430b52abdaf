"""rdrop.AutoStart: patience evaluations without improvement switch R-Drop on."""

from __future__ import annotations

import json
import logging
import math

import pytest

from rdrop.training.autostart import AutoStart
from rdrop.training.schedule import Schedule, rdrop_step


def _reference_start(values, steps, patience, higher_is_better, min_delta=0.0):
    """The rule written out: count evaluations since the last strict improvement."""
    best, waited = None, 0
    for v, s in zip(values, steps, strict=True):
        improved = not math.isnan(v) and (
            best is None or (v > best + min_delta if higher_is_better else v < best - min_delta))
        if improved:
            best, waited = v, 0
            continue
        waited += 1
        if waited == patience:
            return s
    return None


CURVES = {
    "loss": ([5.0, 4.0, 3.5, 3.6, 3.4, 3.45, 3.5, 3.3, 3.9], False),
    "accuracy": ([0.1, 0.3, 0.3, 0.5, 0.49, 0.5, 0.6, 0.2, 0.1], True),
    "nan": ([2.0, math.nan, math.nan, 1.0, math.nan, 1.5, 1.5], False),
}


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("patience", [1, 2, 3])
@pytest.mark.parametrize("min_delta", [0.0, 0.05])
def test_switches_where_the_written_out_rule_does(curve, patience, min_delta):
    values, higher = CURVES[curve]
    steps = [50 * (i + 1) for i in range(len(values))]
    auto = AutoStart(patience, higher_is_better=higher, min_delta=min_delta)
    fired = [auto.update(v, step=s) for v, s in zip(values, steps, strict=True)]
    expected = _reference_start(values, steps, patience, higher, min_delta)
    assert auto.start_step == expected
    assert fired.count(True) == (expected is not None)
    if expected is not None:
        assert fired[steps.index(expected)]


def test_one_log_line_says_when(caplog):
    auto = AutoStart(patience=2)
    with caplog.at_level(logging.INFO, logger="rdrop"):
        for i, v in enumerate([3.0, 2.0, 2.5, 2.1, 1.0, 0.5]):
            auto.update(v, step=10 * i)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert "R-Drop on from optimizer step 30" in lines[0] and "best 2 at optimizer step 10" in (
        lines[0])


def test_state_round_trips_through_json_and_a_resumed_run_switches_at_the_same_step():
    values = [4.0, 3.0, 3.1, 2.9, 3.0, 3.2, 3.3]
    whole = AutoStart(patience=3)
    for i, v in enumerate(values):
        whole.update(v, step=i)
    first = AutoStart(patience=3)
    for i, v in enumerate(values[:5]):
        first.update(v, step=i)
    resumed = AutoStart(patience=3)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for i, v in enumerate(values[5:], start=5):
        resumed.update(v, step=i)
    assert resumed.start_step == whole.start_step == 6
    assert resumed.state_dict() == whole.state_dict()


def test_schedule_with_a_rule_is_off_until_the_switch_then_rdrop_step_from_it():
    auto = AutoStart(patience=1)
    kw = {"alpha": 2.0, "every_k_steps": 2, "alpha_warmup_steps": 3}
    schedule = Schedule(start=auto, **kw)
    assert all(not schedule.decision(s).active for s in range(20))
    schedule.observe(1.0, step=3)
    schedule.observe(1.0, step=7)  # no improvement: on from step 7
    for s in range(20):
        assert schedule.decision(s) == rdrop_step(s, start_step=7, **kw)
    assert Schedule(start=2, **kw).decision(4) == rdrop_step(4, start_step=2, **kw)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="patience"):
        AutoStart(0)
    with pytest.raises(TypeError, match="patience"):
        AutoStart(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_delta"):
        AutoStart(2, min_delta=-1.0)
    with pytest.raises(TypeError, match="value"):
        AutoStart(2).update("0.5", step=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step"):
        AutoStart(2).update(0.5, step=-1)

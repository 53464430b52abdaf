"""The plateau start rule (rdrop.PlateauStart, rdrop.plateau_step) and the Schedule around it,
against the rule written out literally."""

from __future__ import annotations

import logging
import math
import random

import pytest
import torch

import rdrop
from rdrop.training.autostart import PLATEAU_FRACTION, PLATEAU_WINDOW, PlateauStart, plateau_step
from rdrop.training.schedule import Schedule, rdrop_step


def _reference(values, steps, window, fraction, higher_is_better):
    """The registered rule, written out: first i >= W with b[i-W] - b[i] <= q (b[0] - b[i])."""
    sign = -1.0 if higher_is_better else 1.0
    oriented = [sign * v for v in values]
    first = next((i for i, v in enumerate(oriented) if not math.isnan(v)), None)
    if first is None:
        return None
    bests = []
    for v in oriented[first:]:
        prev = bests[-1] if bests else math.inf
        bests.append(prev if math.isnan(v) else min(prev, v))
    for i in range(window, len(bests)):
        total = bests[0] - bests[i]
        if total > 0 and bests[i - window] - bests[i] <= fraction * total:
            return steps[first + i]
    return None


@pytest.mark.parametrize("seed", range(40))
def test_plateau_step_matches_the_rule_written_out(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 30)
    values = [10 * math.exp(-0.3 * i) + rng.uniform(-0.5, 0.5) for i in range(n)]
    if seed % 5 == 0:
        values[rng.randrange(n)] = math.nan
    higher = seed % 2 == 1
    if higher:
        values = [-v for v in values]
    steps = [15 * (i + 1) for i in range(n)]
    window, fraction = rng.randint(1, 4), rng.choice([0.05, 0.1, 0.25, 0.5])
    expected = _reference(values, steps, window, fraction, higher)
    assert plateau_step(values, steps, window=window, fraction=fraction,
                        higher_is_better=higher) == expected


def test_the_registered_rule_on_a_language_modeling_curve_fires_before_its_optimum():
    # results/language-modeling/baseline-seed0 (dropout 0.1), the validation perplexity.
    ppl = [673.1, 501.7, 503.5, 459.9, 404.6, 340.5, 305.3, 281.4, 270.3, 267.9, 259.8, 257.8,
           261.2, 276.0, 276.0, 292.6]
    steps = [15 * (i + 1) for i in range(len(ppl))]
    fired = plateau_step(ppl, steps)
    assert (PLATEAU_WINDOW, PLATEAU_FRACTION) == (3, 0.25)
    assert fired == 135 and fired < 180  # the optimum is at step 180


def test_no_plateau_yet_gives_none_and_the_log_line_says_why(caplog):
    assert plateau_step([5.0, 4.0, 3.0, 2.0], [1, 2, 3, 4]) is None
    rule = PlateauStart(window=1, fraction=0.5)
    with caplog.at_level(logging.INFO, logger="rdrop"):
        assert [rule.update(v, step=s) for s, v in enumerate([4.0, 2.0, 1.9])] == [
            False, False, True]
    assert "plateau at optimizer step 2" in caplog.text and "R-Drop on" in caplog.text


def test_state_dict_resumes_at_the_same_step():
    values = [9.0, 7.0, 5.0, 4.5, 4.4, 4.35, 4.3, 4.3]
    whole = PlateauStart(window=2, fraction=0.2)
    for i, v in enumerate(values):
        whole.update(v, step=i)
    first = PlateauStart(window=2, fraction=0.2)
    for i, v in enumerate(values[:3]):
        first.update(v, step=i)
    resumed = PlateauStart(window=2, fraction=0.2)
    resumed.load_state_dict(first.state_dict())
    for i, v in enumerate(values[3:], start=3):
        resumed.update(v, step=i)
    assert resumed.start_step == whole.start_step is not None


def test_schedule_with_the_plateau_rule_equals_a_fixed_start_once_fired():
    rule = PlateauStart(window=1, fraction=0.5)
    schedule = Schedule(2.0, every_k_steps=3, alpha_warmup_steps=2, start=rule)
    assert not any(schedule.decision(s).active for s in range(50))
    schedule.observe(4.0, step=5)
    schedule.observe(2.0, step=10)
    assert schedule.observe(1.9, step=20)
    for s in range(60):
        assert schedule.decision(s) == rdrop_step(s, alpha=2.0, every_k_steps=3,
                                                  alpha_warmup_steps=2, start_step=20)
    restored = Schedule(2.0, start=PlateauStart(window=1, fraction=0.5))
    restored.load_state_dict(schedule.state_dict())
    assert restored.start_step == 20


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"window": 0}, ValueError, "window"),
    ({"window": 2.5}, TypeError, "window"),
    ({"fraction": 0.0}, ValueError, "fraction"),
    ({"fraction": 1.5}, ValueError, "fraction"),
    ({"higher_is_better": "yes"}, TypeError, "higher_is_better"),
])
def test_bad_rule_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        PlateauStart(**kwargs)


def test_bad_schedules_and_curves_are_refused():
    with pytest.raises(TypeError, match="start_step must be an int"):
        Schedule(1.0, start="plateau")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        Schedule(-1.0)
    with pytest.raises(ValueError, match="every_k_steps"):
        Schedule(1.0, every_k_steps=0)
    with pytest.raises(ValueError, match="one entry per evaluation"):
        plateau_step([1.0, 2.0], [1])
    with pytest.raises(ValueError, match="increasing"):
        plateau_step([1.0, 2.0], [5, 5])


def test_wrapper_observe_feeds_the_rule_and_checkpoints_it():
    net = rdrop.RDrop(torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.Dropout(0.2)),
        start_step=PlateauStart(window=1, fraction=0.5))
    assert not net.schedule().active
    net.set_step(5)
    net.observe(3.0)
    net.set_step(7)
    net.observe(2.0)
    net.set_step(9)
    assert net.observe(1.95)
    assert net.schedule().active and net.rdrop_schedule.start_step == 9
    state = net.state_dict()
    fresh = rdrop.RDrop(torch.nn.Sequential(
        torch.nn.Linear(3, 3), torch.nn.Dropout(0.2)),
        start_step=PlateauStart(window=1, fraction=0.5))
    fresh.load_state_dict(state)
    assert fresh.rdrop_schedule.start_step == 9 and fresh.num_steps == 9

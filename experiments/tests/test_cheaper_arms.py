"""The harness's cheaper-schedule arms run the library's options (no copy of the step): the
step charges what it ran, the automatic start is fed by the loop and resumes, and a quick
language-modeling run records fb_equivalents on every curve point."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from rdrop.losses.subset import subset_rdrop_loss
from rdrop_experiments.config import CommonConfig, ConfigError
from rdrop_experiments.training import make_step


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 5))


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize(("method", "expected"), [("rdrop", (8 + 2, 0)),
                                                  ("rdrop_stop_gradient", (8, 2))])
def test_the_fraction_arm_is_the_library_loss_and_charges_what_it_ran(method, expected):
    cfg = CommonConfig(alpha=2.0, second_pass_fraction=0.25)
    net = _net()
    step = make_step(net, cfg, method)
    x, y = _batch()
    torch.manual_seed(5)
    out = step(x, target=y)
    assert step.last_passes == expected
    torch.manual_seed(5)
    if method == "rdrop":
        both = net(torch.cat([x, x[:2]]))
        first, second = both[:8], both[8:]
    else:
        first = net(x)
        with torch.no_grad():
            second = net(x[:2])
    ref = subset_rdrop_loss(first, second, y, alpha=2.0, stop_gradient=method != "rdrop")
    torch.testing.assert_close(out.loss, ref.loss)


def test_the_automatic_start_is_fed_by_validation_and_saved():
    cfg = CommonConfig(alpha=1.0, auto_start_patience=2)
    step = make_step(_net(), cfg, "rdrop")
    x, y = _batch()
    step(x, target=y)
    assert step.last_passes == (8, 0)  # plain until the switch
    assert [step.observe_validation(v, s, False) for v, s in ((3.0, 1), (3.5, 2), (3.1, 3))] \
        == [False, False, True]
    assert step.record_fields() == {"rdrop_start_step": 3}
    step.calls = 3
    step(x, target=y)
    assert step.last_passes == (16, 0)
    resumed = make_step(_net(), cfg, "rdrop")
    resumed.load_state_dict(step.state_dict())
    assert resumed.calls == 4 and resumed.auto.start_step == 3
    assert not resumed.auto.higher_is_better
    # the baseline arm ignores the schedule fields
    base = make_step(_net(), cfg, "baseline")
    assert not base.observe_validation(1.0, 1, False) and base.record_fields() == {}


def test_quick_language_modeling_run_of_a_combined_arm(tmp_path):
    pytest.importorskip("tokenizers")
    from rdrop_experiments import get_experiment, run_experiment

    exp = get_experiment("language-modeling")
    # a tiny training set and a high learning rate: validation turns early, so the switch
    # happens (at the 2nd evaluation) and the patience restarts there
    overrides = {"methods": "rdrop_stop_gradient", "alpha": 2.0, "auto_start_patience": 1,
                 "second_pass_fraction": 0.5, "patience": 3, "max_sample_passes": 16 * 200,
                 "lr": 0.01, "train_tokens": 2000}
    try:
        (rec,) = run_experiment(exp.name, overrides, out=tmp_path, variant="quick",
                                grid=False, progress=False)
    except (FileNotFoundError, ImportError) as exc:  # data package not installed here
        pytest.skip(str(exc))
    extra, curves = rec["extra"], rec["curves"]
    f = extra["forward_ratio"]
    assert 0 < f <= 1 and "rdrop_start_step" in extra
    assert all("fb_equivalents" in c for c in curves)
    start = extra["rdrop_start_step"]
    assert start is not None and len(curves) > 3  # stopped 3 evaluations after the switch
    for c in curves:  # steps before the switch cost B; after it B + f * ceil(B / 2)
        after = 0 if start is None else max(0, c["step"] - start)
        before = c["step"] - after
        assert c["backward_passes"] == 16 * c["step"]
        assert c["sample_passes"] == 16 * before + 24 * after
        # (f is stored to 4 decimals)
        assert c["fb_equivalents"] == pytest.approx(16 * before + (16 + 8 * f) * after,
                                                    abs=1e-3 + 8 * after * 5e-5)
    assert rec["config"]["second_pass_fraction"] == 0.5
    assert math.isfinite(rec["value"])
    assert replace(exp.config, seeds=1).second_pass_fraction == 1.0  # the family's default


@pytest.mark.parametrize(("family", "alpha", "auto_alphas"), [
    ("language-modeling", 2.0, (0.5, 2.0)), ("image", 1.0, (0.3, 1.0)),
    ("text-classification", 1.0, (0.3, 1.0)), ("translation", 3.0, (0.5, 3.0))])
def test_each_registered_family_carries_the_ten_cheaper_arms_at_its_chosen_alpha(
        family, alpha, auto_alphas):
    from rdrop_experiments.frontier import arm_name
    from rdrop_experiments.registry import get_experiment

    cheaper = [s for s in get_experiment(family).grid
               if "second_pass_fraction" in s or "auto_start_patience" in s]
    arms = {}
    for s in cheaper:
        name = arm_name({"method": s["methods"][0], "config": s})
        arms.setdefault(name, []).append(s)
    assert sorted(arms) == ["rdrop+auto_start", "rdrop+auto_start+fraction", "rdrop+fraction",
                            "rdrop_stop_gradient+auto_start+fraction",
                            "rdrop_stop_gradient+fraction"]
    assert all(len(points) == 2 for points in arms.values())  # the baseline's grid size
    assert tuple(s["alpha"] for s in arms["rdrop+auto_start"]) == auto_alphas
    assert {s["alpha"] for n, p in arms.items() if n != "rdrop+auto_start" for s in p} == {alpha}
    assert [s["second_pass_fraction"] for s in arms["rdrop+fraction"]] == [0.25, 0.5]


def test_the_unrun_full_translation_cell_keeps_only_its_registered_protocol_grid():
    from rdrop_experiments.registry import get_experiment

    grid = get_experiment("translation-full").grid
    assert not any("second_pass_fraction" in s or "auto_start_patience" in s for s in grid)
    assert len(grid) == 5


def test_the_plateau_start_is_fed_by_validation_and_resumes_at_the_same_step():
    cfg = CommonConfig(alpha=1.0, start_rule="plateau")
    values = [9.0, 6.0, 4.0, 3.5, 3.4, 3.35, 3.3]  # W 3, q 0.25: on the plateau at eval 6
    whole = make_step(_net(), cfg, "rdrop")
    fired = [whole.observe_validation(v, 10 * (i + 1), False) for i, v in enumerate(values)]
    # the 6th: 4.0 - 3.35 = 0.65 <= 0.25 * (9.0 - 3.35); the 5th: 2.6 > 0.25 * 5.6
    assert fired.index(True) == 5 and whole.record_fields() == {"rdrop_start_step": 60}
    killed = make_step(_net(), cfg, "rdrop")  # killed after 3 evaluations, resumed
    for i, v in enumerate(values[:3]):
        killed.observe_validation(v, 10 * (i + 1), False)
    resumed = make_step(_net(), cfg, "rdrop")
    resumed.load_state_dict(killed.state_dict())
    later = [resumed.observe_validation(v, 10 * (i + 4), False) for i, v in enumerate(values[3:])]
    assert later.index(True) == 2 and resumed.record_fields() == {"rdrop_start_step": 60}
    with pytest.raises(ConfigError, match="start_rule"):
        CommonConfig(start_rule="plateau", start_step=5)

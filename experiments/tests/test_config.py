"""Config overrides parse, coerce and validate with clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from rdrop_experiments.config import (
    CommonConfig,
    ConfigError,
    apply_overrides,
    config_key,
    parse_overrides,
)


def test_parse_types():
    got = parse_overrides(CommonConfig, ["seeds=5", "alpha=0.6", "methods=rdrop",
                                         "pass_dropouts=0.1,0.3", "progress=false"])
    assert got == {"seeds": 5, "alpha": 0.6, "methods": ("rdrop",),
                   "pass_dropouts": (0.1, 0.3), "progress": False}


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="Did you mean alpha"):
        parse_overrides(CommonConfig, ["alpah=1"])


@pytest.mark.parametrize("item, match", [
    ("seeds", "key=value"),
    ("seeds=three", "expected an integer"),
    ("alpha=x", "expected a number"),
    ("progress=maybe", "boolean"),
])
def test_parse_errors(item, match):
    with pytest.raises(ConfigError, match=match):
        parse_overrides(CommonConfig, [item])


@pytest.mark.parametrize("overrides, match", [
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"alpha": -1}, "alpha must be >= 0"),
    ({"methods": ("dropout",)}, "methods must be"),
    ({"num_passes": 3, "pass_dropouts": (0.1, 0.2)}, "one rate per pass"),
    ({"consistency": "l2"}, "consistency"),
    ({"arm_tag": "tuned dropout"}, "arm_tag must be letters"),
])
def test_validation_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(CommonConfig(), overrides)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CommonConfig().alpha = 2.0  # type: ignore[misc]


def test_config_key_shares_baseline_across_rdrop_fields():
    a, b = CommonConfig(alpha=0.5), CommonConfig(alpha=5.0, every_k_steps=2)
    assert config_key(a, "baseline") == config_key(b, "baseline")
    assert config_key(a, "rdrop") != config_key(b, "rdrop")
    assert config_key(a, "rdrop") == config_key(dataclasses.replace(a, seeds=9), "rdrop")
    assert config_key(a, "baseline") != config_key(CommonConfig(lr=0.1), "baseline")


def test_an_arm_tag_makes_its_own_run():
    tagged = CommonConfig(arm_tag="tuned_dropout")
    assert config_key(tagged, "rdrop") != config_key(CommonConfig(), "rdrop")


FAMILIES = ["image", "text-classification", "translation", "summarization", "language-modeling"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_configs_reject_bad_rates_and_shapes(family):
    from rdrop_experiments.registry import discover

    cfg = discover()[family].config
    with pytest.raises(ConfigError, match=r"dropout must lie in \[0, 1\), got 1.0"):
        apply_overrides(cfg, {"dropout": 1.0})
    if hasattr(cfg, "heads"):
        with pytest.raises(ConfigError, match=r"must be divisible by heads \(7\)"):
            apply_overrides(cfg, {"heads": 7})
    if hasattr(cfg, "vocab_size"):
        with pytest.raises(ConfigError, match="vocab_size must be >= 50, got 10"):
            apply_overrides(cfg, {"vocab_size": 10})
    if hasattr(cfg, "label_smoothing"):
        with pytest.raises(ConfigError, match=r"label_smoothing must lie in \[0, 1\)"):
            apply_overrides(cfg, {"label_smoothing": 1.0})
        with pytest.raises(ConfigError, match=r"label_smoothing must be >= 0, got -0\.1"):
            apply_overrides(cfg, {"label_smoothing": -0.1})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_number_of_every_family_is_finite_and_not_negative(family):
    from rdrop_experiments.registry import discover

    cfg = discover()[family].config
    numeric = [f.name for f in dataclasses.fields(cfg)
               if isinstance(getattr(cfg, f.name), (int, float))
               and not isinstance(getattr(cfg, f.name), bool)]
    assert {"alpha", "lr", "batch_size", "max_steps"} <= set(numeric)
    for name in numeric:
        for bad, says in ((float("nan"), "finite"), (float("inf"), "finite"), (-1, ">= 0")):
            if isinstance(getattr(cfg, name), int) and isinstance(bad, float):
                continue  # an int field cannot hold nan/inf (the parser refuses them)
            with pytest.raises(ConfigError, match=rf"^{name} must be (a )?{says}"):
                apply_overrides(cfg, {name: bad})


# ------------------------------------------------------------------- the one table of arms
def test_the_arm_table_is_the_one_list_of_arms():
    from rdrop_experiments.config import ARMS, METHODS, arm_spec
    from rdrop_experiments.protocol import TWO_PASS_METHODS

    assert METHODS == tuple(ARMS) == ("baseline", "rdrop", "rdrop_alpha0",
                                      "rdrop_stop_gradient")
    assert TWO_PASS_METHODS == ("rdrop", "rdrop_alpha0", "rdrop_stop_gradient")
    assert (arm_spec("rdrop_alpha0").zero_alpha, arm_spec("rdrop").zero_alpha) == (True, False)
    with pytest.raises(ValueError, match="unknown method 'dropout'"):
        arm_spec("dropout")


def test_a_new_arm_is_one_row_of_the_table(monkeypatch):
    import torch
    from torch import nn

    from rdrop_experiments.config import ARMS, ArmSpec, CommonConfig
    from rdrop_experiments.protocol import step_cost
    from rdrop_experiments.training import make_step

    monkeypatch.setitem(ARMS, "rdrop_sg_alpha0", ArmSpec(zero_alpha=True, stop_gradient=True))
    cfg = CommonConfig(methods=("baseline", "rdrop_sg_alpha0"), alpha=3.0)  # accepted
    step = make_step(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)), cfg, "rdrop_sg_alpha0")
    out = step(torch.randn(4, 3), target=torch.tensor([0, 1, 1, 0]))
    assert step.alpha == 0.0 and step.step.stop_gradient
    assert out.loss.item() == pytest.approx(out.task_loss.item())  # the KL weighs nothing
    assert step.last_passes == (4, 4)  # one pass with a backward, one without
    assert step_cost(cfg, "rdrop_sg_alpha0", 4, 0) == (8, 4)  # the same cost model


def test_a_new_start_rule_is_one_row_of_the_table(monkeypatch):
    from torch import nn

    from rdrop.training.autostart import AutoStart
    from rdrop_experiments.config import START_RULES, CommonConfig, ConfigError
    from rdrop_experiments.frontier import arm_name
    from rdrop_experiments.training import make_step

    with pytest.raises(ConfigError, match="start_rule must be one of plateau"):
        CommonConfig(start_rule="late")
    monkeypatch.setitem(START_RULES, "late", "AutoStart")  # any rdrop.training.autostart class
    cfg = CommonConfig(methods=("rdrop",), start_rule="late")  # accepted now
    step = make_step(nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)), cfg, "rdrop")
    schedule = step._new_schedule(True)
    assert isinstance(schedule.rule, AutoStart) and schedule.rule.higher_is_better
    assert arm_name({"method": "rdrop", "config": {"start_rule": "late"}}) == "rdrop+late"
    assert arm_name({"method": "rdrop", "config": {"start_rule": "plateau"}}) == "rdrop+plateau"

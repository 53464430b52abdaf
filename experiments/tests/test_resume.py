"""Runs that survive a kill, and the stopping rule in epochs that holds at every size."""

from __future__ import annotations

import math

import pytest
import torch

from rdrop_experiments.config import CommonConfig, ConfigError, apply_overrides, config_key
from rdrop_experiments.families.language_modeling import run_language_modeling
from rdrop_experiments.protocol import passed_optimum, stopping_schedule, train_until_patience
from rdrop_experiments.registry import ArmRun, get_experiment
from rdrop_experiments.resume import BatchCycle, load_checkpoint
from rdrop_experiments.task import Task, Trainer


class Killed(Exception):
    """Stands for a kill -9 after the last checkpoint: nothing after it reaches the disk."""


def _lm_config(**extra):
    exp = get_experiment("language-modeling")
    quick = apply_overrides(exp.config, exp.variants["quick"])
    return apply_overrides(quick, {"dropout": 0.1, "alpha": 1.0, "eval_every": 3,
                                   "patience": 0, "max_sample_passes": 0, "max_steps": 24,
                                   "checkpoint_every_s": 0, "progress": False, **extra})


def _train(cfg, model, step_fn, opt, sched, batch, evaluate, metric, higher_is_better):
    """The loop on one fixed batch of one example."""
    task = Task(model=lambda: model, batch=lambda idx: batch, n_train=1,
                evaluate=lambda net, split: evaluate(split), metric=metric,
                higher_is_better=higher_is_better)
    trainer = Trainer(model, step_fn, opt, sched, BatchCycle(1, 1, torch.Generator()))
    return train_until_patience(task, trainer, cfg, ArmRun(method="baseline", seed=0,
                                                           progress=False))


def _without_wall(curves):
    return [{k: v for k, v in point.items() if k != "wall_s"} for point in curves]


@pytest.mark.parametrize("method", ["baseline", "rdrop"])
def test_killed_run_resumes_to_the_same_curve_bit_for_bit(tmp_path, monkeypatch, method):
    cfg = _lm_config()
    whole = run_language_modeling(cfg, ArmRun(method=method, seed=0, progress=False))

    ckpt = tmp_path / "run.ckpt.pt"
    calls = {"n": 0}
    real_next = BatchCycle.__next__

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 14:  # mid-run: after the checkpoint of step 12, before step 15's
            raise Killed
        return real_next(self)

    monkeypatch.setattr(BatchCycle, "__next__", dying_next)
    with pytest.raises(Killed):
        run_language_modeling(cfg, ArmRun(method=method, seed=0, progress=False,
                                          checkpoint=ckpt))
    saved = load_checkpoint(ckpt)
    assert saved is not None and saved["loop"]["step"] == 12
    monkeypatch.setattr(BatchCycle, "__next__", real_next)
    resumed = run_language_modeling(cfg, ArmRun(method=method, seed=0, progress=False,
                                                checkpoint=ckpt))
    assert len(resumed.curves) == len(whole.curves) == 8
    assert _without_wall(resumed.curves) == _without_wall(whole.curves)
    assert resumed.metrics == whole.metrics


def test_batch_cycle_matches_a_plain_shuffle_and_restores_mid_epoch():
    g = torch.Generator().manual_seed(3)
    cycle = BatchCycle(10, 3, g)
    first = [next(cycle) for _ in range(7)]  # 3 batches per epoch: crosses two epoch starts
    ref = torch.Generator().manual_seed(3)
    expected = []
    for _ in range(3):
        perm = torch.randperm(10, generator=ref)
        expected += [perm[i : i + 3] for i in (0, 3, 6)]
    assert all(torch.equal(a, b) for a, b in zip(first, expected[:7], strict=True))
    state = cycle.state_dict()
    after = [next(cycle) for _ in range(4)]
    other = BatchCycle(10, 3, torch.Generator().manual_seed(99))
    other.load_state_dict(state)
    assert all(torch.equal(a, next(other)) for a in after)


# ------------------------------------------------------------------------ the stopping rule
def test_stopping_schedule_in_epochs_scales_with_the_training_set():
    cfg = CommonConfig(eval_every_epochs=0.5, patience_epochs=2.0, max_sample_pass_epochs=40,
                       batch_size=16)
    small = stopping_schedule(cfg, 16, 240)
    large = stopping_schedule(cfg, 16, 240 * 16)
    assert small == (round(0.5 * 240 / 16), 4, 40 * 240)
    assert large == (round(0.5 * 240 * 16 / 16), 4, 40 * 240 * 16)
    # the step units of the second protocol stay as they were when the epoch fields are 0
    assert stopping_schedule(CommonConfig(eval_every=7, patience=3, max_sample_passes=99),
                             16, 240) == (7, 3, 99)
    with pytest.raises(ConfigError, match="eval_every_epochs"):
        CommonConfig(patience_epochs=2.0)


def test_passed_optimum_needs_the_metric_to_turn_by_the_margin():
    # lower is better (perplexity): 0.5% worse than the best is the margin
    assert passed_optimum(100.6, 100.0, 0.005, higher_is_better=False)
    assert not passed_optimum(100.4, 100.0, 0.005, higher_is_better=False)
    # higher is better (accuracy)
    assert passed_optimum(0.79, 0.80, 0.01, higher_is_better=True)
    assert not passed_optimum(0.7995, 0.80, 0.01, higher_is_better=True)
    assert passed_optimum(math.nan, 0.8, 0.01, higher_is_better=True)


def test_a_flat_plateau_does_not_stop_on_patience_but_a_turn_does():
    def run(values, margin):
        it = iter(values)
        model = torch.nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

        def step_fn(x, target):
            loss = ((model(x).squeeze(-1) - target) ** 2).mean()
            from rdrop.losses.functional import RDropOutput
            return RDropOutput(loss, loss.detach(), torch.zeros(()), None)

        cfg = CommonConfig(eval_every=1, patience=2, stop_margin=margin, max_steps=len(values),
                           batch_size=1)
        out = _train(cfg, model, step_fn, opt, sched, ((torch.ones(1, 2),), torch.zeros(1)),
                     lambda split: {"loss": next(it)} if split == "valid" else {"loss": 0.0},
                     "loss", higher_is_better=False)
        return out.stop_reason, out.steps

    plateau = [5.0, 4.0, 4.01, 4.005, 4.01, 4.0, 4.01, 4.01]
    assert run(plateau, 0.0) == ("patience", 4)  # the second protocol's rule stops on noise
    assert run(plateau, 0.01) == ("max_steps", 8)  # within 1%: not past the optimum
    turned = [5.0, 4.0, 4.01, 4.2, 4.3, 4.4]
    assert run(turned, 0.01) == ("patience", 4)


def test_diverged_runs_stop_and_say_so():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    losses = iter([1.0, 1.0, math.nan, 1.0])

    def step_fn(x, target):
        from rdrop.losses.functional import RDropOutput
        loss = model(x).sum() * 0 + next(losses)
        return RDropOutput(loss, loss.detach(), torch.zeros(()), None)

    out = _train(CommonConfig(eval_every=10, max_steps=4, batch_size=1), model, step_fn, opt,
                 sched, ((torch.ones(1, 2),), torch.zeros(1)), lambda split: {"loss": 1.0},
                 "loss", higher_is_better=False)
    assert (out.stop_reason, out.steps, len(out.curves)) == ("diverged", 3, 1)
    assert math.isnan(out.curves[0]["train_objective"]) and out.best_step == 3
    assert out.sample_passes == 2  # the non-finite step made no update and is not charged


def test_late_config_fields_keep_earlier_keys_at_their_defaults():
    base = CommonConfig()
    assert config_key(base, "rdrop") == config_key(apply_overrides(base, {"stop_margin": 0.0}),
                                                   "rdrop")
    assert config_key(base, "rdrop") != config_key(apply_overrides(base, {"stop_margin": 0.01}),
                                                   "rdrop")
    # checkpoint timing says how a run is kept, not how it goes
    assert config_key(base, "rdrop") == config_key(
        apply_overrides(base, {"checkpoint_every_s": 5.0}), "rdrop")

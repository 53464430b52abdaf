"""The second protocol: compute accounting, patience, test only at best-validation checkpoints,
the arms' losses against a float64 reference, and the families' quick protocol runs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from rdrop_experiments.config import CommonConfig, ConfigError, apply_overrides
from rdrop_experiments.protocol import (
    protocol_grid,
    quality_at_compute,
    step_cost,
    train_until_patience,
)
from rdrop_experiments.registry import ArmRun
from rdrop_experiments.resume import BatchCycle
from rdrop_experiments.task import Task, Trainer
from rdrop_experiments.training import make_step


# ----------------------------------------------------------------------------- compute counting
def test_step_cost_counts_sample_passes_per_arm():
    cfg = CommonConfig()
    assert step_cost(cfg, "baseline", 8, 0) == (8, 8)
    assert step_cost(cfg, "rdrop", 8, 0) == (16, 16)
    assert step_cost(cfg, "rdrop_alpha0", 8, 0) == (16, 16)
    # stop-gradient: two forwards, one backward
    assert step_cost(cfg, "rdrop_stop_gradient", 8, 0) == (16, 8)
    assert step_cost(CommonConfig(num_passes=3), "rdrop", 8, 0) == (24, 24)
    every2 = CommonConfig(every_k_steps=2)
    assert [step_cost(every2, "rdrop", 8, s)[0] for s in range(4)] == [16, 8, 16, 8]
    with pytest.raises(ValueError, match="unknown method"):
        step_cost(cfg, "dropout", 8, 0)
    # the plan's cost model: a second pass on a quarter of the rows, a late start
    assert step_cost(CommonConfig(second_pass_fraction=0.25), "rdrop", 8, 0) == (10, 10)
    assert step_cost(CommonConfig(second_pass_fraction=0.25), "rdrop_stop_gradient", 8,
                     0) == (10, 8)
    assert [step_cost(CommonConfig(start_step=2), "rdrop", 8, s)[0] for s in range(3)] == [
        8, 8, 16]


def test_config_rejects_bad_protocol_fields():
    with pytest.raises(ConfigError, match="patience"):
        CommonConfig(patience=-1)
    with pytest.raises(ConfigError, match="lr_schedule"):
        CommonConfig(lr_schedule="cosine")
    assert CommonConfig(methods=("rdrop_alpha0", "rdrop_stop_gradient")).methods


# ------------------------------------------------------------------------------- the train loop
@dataclass(frozen=True)
class LoopConfig(CommonConfig):
    batch_size: int = 4
    eval_every: int = 2
    max_steps: int = 100
    patience: int = 2


class _Out:
    def __init__(self, loss: torch.Tensor) -> None:
        self.loss = loss
        self.task_loss = loss.detach()
        self.consistency_loss = torch.zeros(())


def _loop(cfg: LoopConfig, method: str, valid_seq: list[float], higher: bool = True):
    """Run the loop on a one-parameter model with a scripted validation sequence."""
    w = nn.Parameter(torch.zeros(1))
    model = nn.Module()
    model.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    calls = {"valid": 0, "test": []}

    def evaluate(split: str) -> dict[str, float]:
        if split == "valid":
            v = valid_seq[min(calls["valid"], len(valid_seq) - 1)]
            calls["valid"] += 1
            return {"acc": v, "loss": -v}
        if split == "test":
            calls["test"].append(calls["valid"])  # which evaluation point asked for test
            return {"acc": 10.0 * calls["valid"]}
        return {"loss": 0.0}

    task = Task(model=lambda: model, batch=lambda idx: ((torch.ones(4),), None), n_train=8,
                evaluate=lambda net, split: evaluate(split), metric="acc",
                higher_is_better=higher)
    trainer = Trainer(model, lambda x, target: _Out((w * x).sum()), opt, sched,
                      BatchCycle(8, 4, torch.Generator().manual_seed(0)))
    out = train_until_patience(task, trainer, cfg, ArmRun(method=method, seed=0, progress=False))
    return out, calls


def test_patience_stops_and_test_is_read_only_at_validation_improvements():
    # evaluation points 1..6: 0.5, 0.6, 0.6 (tie: no improvement), 0.7, 0.65, 0.69 -> stop
    out, calls = _loop(LoopConfig(), "baseline", [0.5, 0.6, 0.6, 0.7, 0.65, 0.69, 0.9])
    assert out.stop_reason == "patience"
    assert [c["step"] for c in out.curves] == [2, 4, 6, 8, 10, 12]
    assert calls["test"] == [1, 2, 4]  # test evaluated only when validation improved
    assert out.best_step == 8 and out.best_valid == 0.7
    assert out.test == {"acc": 40.0}
    # every point carries the test value of the best-validation-so-far checkpoint
    assert [c["test_acc"] for c in out.curves] == [10.0, 20.0, 20.0, 40.0, 40.0, 40.0]
    assert [c["best_valid"] for c in out.curves] == [0.5, 0.6, 0.6, 0.7, 0.7, 0.7]
    assert [c["sample_passes"] for c in out.curves] == [8, 16, 24, 32, 40, 48]
    assert out.record_fields()["selection"] == "best_valid"


def test_lower_is_better_selection():
    out, calls = _loop(LoopConfig(), "baseline", [5.0, 4.0, 4.5, 4.2, 3.0], higher=False)
    assert out.best_valid == 4.0 and out.stop_reason == "patience"
    assert calls["test"] == [1, 2]


def test_compute_cap_is_in_sample_passes_so_rdrop_gets_half_the_steps():
    cfg = LoopConfig(patience=0, max_sample_passes=40)
    base, _ = _loop(cfg, "baseline", [float(i) for i in range(100)])
    rdrop, _ = _loop(cfg, "rdrop", [float(i) for i in range(100)])
    sg, _ = _loop(cfg, "rdrop_stop_gradient", [float(i) for i in range(100)])
    assert base.stop_reason == rdrop.stop_reason == "compute_cap"
    assert (base.steps, base.sample_passes) == (10, 40)
    assert (rdrop.steps, rdrop.sample_passes) == (5, 40)
    assert sg.steps == 5 and sg.curves[-1]["backward_passes"] == 20
    assert rdrop.curves[-1]["step"] == 5  # the capped step is always evaluated


def test_quality_at_compute_reads_best_so_far_without_looking_ahead():
    curves = [{"sample_passes": 10, "test_m": 1.0}, {"sample_passes": 20, "test_m": 2.0},
              {"sample_passes": 30, "test_m": 3.0}]
    assert math.isnan(quality_at_compute(curves, "test_m", 9))
    assert quality_at_compute(curves, "test_m", 10) == 1.0
    assert quality_at_compute(curves, "test_m", 29.9) == 2.0
    assert quality_at_compute(curves, "test_m", 1e9) == 3.0  # a stopped run keeps its best


def test_protocol_grid_has_one_arm_per_setting():
    grid = protocol_grid(dropout_key="dropout", dropout_grid=(0.1, 0.2), alpha_grid=(1.0, 3.0),
                         stop_gradient_alphas=(1.0,))
    arms = [s["methods"] for s in grid]
    assert arms.count(("baseline",)) == 2 and arms.count(("rdrop",)) == 2
    assert ("rdrop_alpha0",) in arms and ("rdrop_stop_gradient",) in arms
    for s in grid:
        apply_overrides(CommonConfig(), {k: v for k, v in s.items() if k != "dropout"})


# --------------------------------------------------------------- the arms' losses, in float64
class _Scripted(nn.Module):
    """logits = x @ W + noise_k on the k-th call: two 'dropout' passes that differ."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.noise = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2)]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.w + self.noise[self.calls % 2]
        self.calls += 1
        return out


def _ref_log_softmax(z: torch.Tensor) -> torch.Tensor:
    return z - torch.log(torch.exp(z).sum(-1, keepdim=True))


def test_stop_gradient_arm_matches_a_float64_reference_value_and_gradient():
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 1, 2, 0])
    alpha = 0.7
    model = _Scripted()
    out = make_step(model, CommonConfig(alpha=alpha), "rdrop_stop_gradient")(x, target=y)
    out.loss.backward()
    got = model.w.grad.clone()

    # reference: CE(P1) + alpha * 0.5 * sum_c (p1 - p2)(log p1 - log p2), P2 a constant
    w = model.w.detach().clone().requires_grad_(True)
    lp1 = _ref_log_softmax(x @ w + model.noise[0])
    lp2 = _ref_log_softmax(x @ model.w.detach() + model.noise[1])
    ce = -lp1[torch.arange(5), y].mean()
    kl = (0.5 * ((lp1.exp() - lp2.exp()) * (lp1 - lp2)).sum(-1)).mean()
    ref = ce + alpha * kl
    ref.backward()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.consistency_loss.item() == pytest.approx(kl.item(), rel=1e-5)
    torch.testing.assert_close(got, w.grad, rtol=1e-5, atol=1e-7)
    assert model.calls == 2


@pytest.mark.filterwarnings("ignore:RDrop. the model has no dropout")
def test_alpha0_arm_is_two_cross_entropies_without_the_kl_term():
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 0, 3, 2, 2])
    model = _Scripted()
    model.w.data = model.w.data.float()
    model.noise = [n.float() for n in model.noise]
    out = make_step(model, CommonConfig(alpha=5.0, rdrop_mode="twice"), "rdrop_alpha0")(
        x.float(), target=y)
    lp = [_ref_log_softmax(x @ model.w.double().detach() + n.double()) for n in model.noise]
    ref = sum(-p[torch.arange(5), y].mean() for p in lp)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert out.consistency_loss.item() > 0  # measured, but weighted by 0


# ----------------------------------------------------------- every family's quick protocol run
@pytest.mark.parametrize("family", ["image", "language-modeling", "text-classification",
                                    "translation", "summarization"])
def test_quick_protocol_run_writes_best_valid_records(family, tmp_path):
    pytest.importorskip("tokenizers")
    from rdrop_experiments import get_experiment, run_experiment

    try:
        records = run_experiment(family, out=tmp_path, variant="quick", progress=False)
    except (FileNotFoundError, ImportError) as exc:  # data package not installed here
        pytest.skip(str(exc))
    exp = get_experiment(family)
    assert {r["method"] for r in records} >= {"baseline", "rdrop", "rdrop_alpha0"}
    assert len(records) == len(exp.grid)
    for rec in records:
        extra = rec["extra"]
        assert extra["selection"] == "best_valid"
        assert any(c["step"] == extra["best_step"] for c in rec["curves"])
        passes = [c["sample_passes"] for c in rec["curves"]]
        assert passes == sorted(passes) and passes[-1] == extra["sample_passes"]
        assert passes[-1] <= rec["config"]["max_sample_passes"] + 2 * rec["config"]["batch_size"]
        best = next(c for c in rec["curves"] if c["step"] == extra["best_step"])
        assert rec["value"] == pytest.approx(best[f"test_{rec['metric']}"])
        assert rec.get("git_commit") is not None or "git_commit" in rec


# ------------------------------------------------------ symmetric tuning (the registered grids)
@pytest.mark.parametrize("family", ["image", "language-modeling", "text-classification",
                                    "translation", "translation-full", "summarization"])
def test_every_family_tunes_baseline_and_rdrop_on_grids_of_one_size(family):
    from rdrop_experiments import get_experiment

    exp = get_experiment(family)
    from rdrop_experiments.frontier import SCHEDULE_TAGS

    schedules = tuple(key for key, _, _ in SCHEDULE_TAGS)  # the other arms
    points = {m: [s for s in exp.grid if s.get("methods") == (m,)
                  and not any(k in s for k in schedules)]
              for m in ("baseline", "rdrop", "rdrop_alpha0")}
    assert len(points["baseline"]) == len(points["rdrop"]) >= 2
    assert len(points["rdrop_alpha0"]) == 1
    # the baseline's knob is its dropout rate, R-Drop's the alpha; both grids distinct points
    rates = [s["dropout"] for s in points["baseline"]]
    alphas = [s["alpha"] for s in points["rdrop"]]
    assert len(set(rates)) == len(rates) and len(set(alphas)) == len(alphas)
    assert all(a > 0 for a in alphas)
    # the plateau arm (issue 32): a grid of the baseline's size, alphas a decade apart
    plateau = [s["alpha"] for s in exp.grid if s.get("start_rule") == "plateau"]
    if family != "translation-full":  # registered, not run: its protocol grid only
        assert len(plateau) == len(points["baseline"]) and max(plateau) / min(plateau) == 10


# ------------------------------------------------------------ the loop's state and its rules
def test_loop_state_saves_the_checkpoint_layout_and_restores_it():
    from rdrop_experiments.protocol import LoopState, Running

    state = LoopState(step=6, curves=[{"step": 6}], best=0.7, best_step=4, since_best=1,
                      passes=48, backward=24, running=Running(loss=1.5, task=1.0, n=2))
    saved = state.state_dict()
    # the keys of the checkpoints written before the state was a class: they still resume
    assert set(saved) == {"step", "curves", "best", "best_step", "best_passes", "since_best",
                          "test", "test_evals", "passes", "backward", "running", "elapsed",
                          "compute"}
    assert saved["running"] == {"loss": 1.5, "task": 1.0, "consistency": 0.0, "n": 2}
    assert LoopState.from_state_dict(saved) == state
    old = {k: v for k, v in saved.items() if k != "compute"}  # before the compute meter
    assert LoopState.from_state_dict(old).compute is None
    assert Running(loss=3.0, task=2.0, consistency=0.5, n=2).means() == {
        "train_objective": 1.5, "train_task_loss": 1.0, "train_consistency": 0.25}


def test_stop_rules_at_the_edges_of_patience_cap_and_margin():
    from rdrop_experiments.protocol import LoopState, StopRules

    rules = StopRules(eval_every=5, patience=3, cap=100, margin=0.0, max_steps=50,
                      higher_is_better=True)

    def stop(value=0.5, diverged=False, **state):
        return rules.should_stop(LoopState(best=0.8, **state), value, diverged)

    assert stop(since_best=2) is None  # one point short of the patience
    assert stop(since_best=3) == "patience"
    assert stop(since_best=0, passes=99) is None  # one sample pass short of the cap
    assert stop(since_best=0, passes=100) == "compute_cap"
    assert stop(since_best=3, passes=100) == "patience"  # patience is read first
    assert stop(since_best=0, diverged=True) == "diverged"
    never = StopRules(5, patience=0, cap=0, margin=0.0, max_steps=50, higher_is_better=True)
    assert never.should_stop(LoopState(best=0.8, since_best=99), 0.1, diverged=False) is None
    flat = StopRules(5, patience=3, cap=0, margin=0.01, max_steps=50, higher_is_better=True)
    assert flat.should_stop(LoopState(best=0.8, since_best=3), 0.795, False) is None
    assert flat.should_stop(LoopState(best=0.8, since_best=3), 0.79, False) == "patience"
    # evaluation points: every 5 steps, at max_steps, at the cap, after a non-finite loss
    assert [s for s in range(1, 13) if rules.is_eval_point(s, LoopState(), False)] == [5, 10]
    assert rules.is_eval_point(50, LoopState(), False)
    assert rules.is_eval_point(7, LoopState(passes=100), False)
    assert rules.is_eval_point(7, LoopState(), True)

"""The recipe skeleton (:mod:`rdrop_experiments.task`): a tiny task through
:func:`rdrop_experiments.protocol.run_task` trains
exactly as a hand-written loop; the options it passes on; the record's metrics. (Every family
builds its task on the configured device: test_device.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdrop_experiments.config import CommonConfig
from rdrop_experiments.protocol import ProtocolOutcome, run_task, task_metrics
from rdrop_experiments.registry import ArmRun
from rdrop_experiments.resume import BatchCycle
from rdrop_experiments.task import Task
from rdrop_experiments.training import lr_schedule, make_step, seed_everything


@dataclass(frozen=True)
class TinyConfig(CommonConfig):
    batch_size: int = 8
    eval_every: int = 1
    max_steps: int = 12
    warmup_steps: int = 3
    lr: float = 0.05
    progress: bool = False


_G = torch.Generator().manual_seed(7)
X = torch.randn(40, 6, generator=_G)
Y = (X[:, 0] + X[:, 1] > 0).long()
XV, YV = X[:16] + 0.1, Y[:16]


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(0.3), nn.Linear(16, 2))


@torch.no_grad()
def _evaluate(model: nn.Module, split: str) -> dict[str, float]:
    model.eval()
    x, y = (X, Y) if split == "train" else (XV, YV)
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y).item(),
            "accuracy": (logits.argmax(-1) == y).float().mean().item()}


def _task(**kwargs) -> Task:
    return Task(**{"model": _model, "batch": lambda idx: ((X[idx],), Y[idx]),
                   "n_train": len(Y), "evaluate": _evaluate, "metric": "accuracy",
                   "clip_norm": 1.0, **kwargs})


def _by_hand(cfg: TinyConfig, method: str, seed: int) -> tuple[list[float], list[float]]:
    """The recipe written out: seed, model, step, AdamW, batch order, schedule, the loop."""
    generator = seed_everything(seed)
    model = _model()
    step = make_step(model, cfg, method)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = BatchCycle(len(Y), cfg.batch_size, generator)
    sched = lr_schedule(opt, cfg)
    losses, valid = [], []
    for _ in range(cfg.max_steps):
        model.train()
        idx = next(batches)
        out = step(X[idx], target=Y[idx])
        losses.append(out.loss.item())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        valid.append(_evaluate(model, "valid")["loss"])
    return losses, valid


@pytest.mark.parametrize("method", ["baseline", "rdrop", "rdrop_stop_gradient"])
def test_run_task_trains_exactly_as_the_hand_written_loop(method):
    cfg = TinyConfig(alpha=1.0)
    result = run_task(_task(), cfg, ArmRun(method=method, seed=3, progress=False))
    losses, valid = _by_hand(cfg, method, seed=3)
    assert [c["step"] for c in result.curves] == list(range(1, cfg.max_steps + 1))
    assert [c["train_objective"] for c in result.curves] == losses  # bit for bit
    assert [c["valid_loss"] for c in result.curves] == valid
    assert result.extra["stop_reason"] == "max_steps" and result.extra["steps"] == 12
    assert result.extra["epochs"] == 12 * 8 / 40
    assert result.extra["parameters"] == 6 * 16 + 16 + 16 * 2 + 2


def test_run_task_passes_the_task_options_to_the_optimizer_and_the_record():
    seen = {}

    def model() -> nn.Module:
        net = _model()
        net[0].weight.requires_grad_(False)  # a frozen matrix: not optimized, not counted
        seen["net"] = net
        return net

    task = Task(model=model, batch=lambda idx: ((X[idx],), Y[idx]), n_train=len(Y),
                evaluate=_evaluate, metric="accuracy", report_valid=True,
                parameters_key="trainable_parameters", extra={"data": "tiny"},
                betas=(0.9, 0.98))
    result = run_task(task, TinyConfig(max_steps=2), ArmRun(method="baseline", seed=0,
                                                             progress=False))
    assert seen["net"][0].weight.grad is None
    assert result.extra["trainable_parameters"] == 16 + 16 * 2 + 2
    assert "parameters" not in result.extra and result.extra["data"] == "tiny"
    assert set(result.metrics) == {"accuracy", "test_loss", "valid_accuracy", "loss_gap"}


def test_task_metrics_field_by_field():
    out = ProtocolOutcome(
        curves=[{"step": 2, "valid_loss": 3.0, "train_loss": 1.0},
                {"step": 4, "valid_loss": 2.5, "train_loss": 2.0}],
        best_step=4, best_sample_passes=8, best_valid=11.0,
        test={"loss": 2.4, "perplexity": 11.5}, stop_reason="patience", steps=6,
        sample_passes=12, test_evaluations=2)
    metrics = task_metrics(_task(metric="perplexity", higher_is_better=False), out)
    assert metrics == {"perplexity": 11.5, "test_loss": 2.4, "loss_gap": 0.5}

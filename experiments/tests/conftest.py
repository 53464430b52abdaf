"""Shared fixtures: a tiny registered ``toy`` experiment whose recipe counts its calls."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from rdrop_experiments.config import CommonConfig
from rdrop_experiments.registry import ArmRun, Experiment, RunResult, register
from rdrop_experiments.training import make_step, seed_everything

CALLS: list[tuple[str, int, float]] = []
FAIL_SEED: list[int] = []  # seeds whose run raises (a simulated crash)


@dataclass(frozen=True)
class ToyConfig(CommonConfig):
    hidden: int = 8
    max_steps: int = 5
    eval_every: int = 5
    seeds: int = 2
    progress: bool = False
    sleep: float = 0.0  # seconds per run, so that two concurrent runners overlap


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The toy's data: the same for every seed and arm (a fixed generator)."""
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1234))
    return x, (x[:, 0] > 0).long()


def toy_recipe(cfg: ToyConfig, ctx: ArmRun) -> RunResult:
    if ctx.seed in FAIL_SEED:
        raise RuntimeError("simulated crash")
    CALLS.append((ctx.method, ctx.seed, cfg.alpha))
    time.sleep(cfg.sleep)
    seed_everything(ctx.seed)
    x, y = toy_data()
    ctx.record_data(x, y)
    model = nn.Sequential(nn.Linear(4, cfg.hidden), nn.Dropout(0.2), nn.Linear(cfg.hidden, 2))
    step = make_step(model, cfg, ctx.method)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(cfg.max_steps):
        model.train()
        out = step(x, target=y)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    acc = (model(x).argmax(-1) == y).float().mean().item()
    return RunResult({"accuracy": acc}, [{"step": cfg.max_steps, "train_loss": 0.5,
                                          "valid_loss": 0.6, "valid_accuracy": acc}])


TOY = Experiment(name="toy", config=ToyConfig(), recipe=toy_recipe, metric="accuracy",
                 variants={"quick": {"max_steps": 2}}, tags=("test",))
register(TOY, replace=True)
register(TOY.derive("toy-alpha", grid=[{"alpha": 0.5}, {"alpha": 2.0}], tags=("test",)),
         replace=True)
# A grid whose settings name their arm, as the second protocol's grids do (protocol_grid).
register(TOY.derive("toy-arms", grid=[{"methods": ("baseline",), "hidden": 4},
                                      {"methods": ("baseline",), "hidden": 16},
                                      {"methods": ("rdrop",), "alpha": 0.5},
                                      {"methods": ("rdrop",), "alpha": 2.0}], tags=("test",)),
         replace=True)


@pytest.fixture
def calls():  # type: ignore[no-untyped-def]
    CALLS.clear()
    FAIL_SEED.clear()
    yield CALLS
    FAIL_SEED.clear()


@pytest.fixture
def fail_seeds() -> list[int]:
    """Append a seed to make its runs raise (a simulated crash)."""
    return FAIL_SEED


@pytest.fixture
def toy_xy() -> tuple[torch.Tensor, torch.Tensor]:
    """The toy experiment's (x, y), as its recipe builds them."""
    return toy_data()

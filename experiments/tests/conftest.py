"""Shared fixtures: a tiny registered ``toy`` experiment whose recipe counts its calls; a scale
cell's records of the ``image`` family."""

from __future__ import annotations

import json
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


# A scale cell's records of the `image` family, for the tests of the scale cells (test_scale),
# their map (test_scale_map), `rdrop advise` (test_advise) and the verdict's edge reading
# (test_verdict).


def _record(method, seed, *, value, valid, knob, train_loss=1.0, valid_loss=1.5,
            stop="patience", size=500, experiment="image"):
    """A second-protocol record of the `image` family (accuracy, higher is better)."""
    curves = [
        {"step": 10, "epoch": 1.0, "sample_passes": 100, "train_loss": train_loss + 0.5,
         "valid_loss": valid_loss + 0.2, "valid_accuracy": valid - 0.05,
         "test_accuracy": value - 0.05},
        {"step": 20, "epoch": 2.0, "sample_passes": 200, "train_loss": train_loss,
         "valid_loss": valid_loss, "valid_accuracy": valid, "test_accuracy": value},
        {"step": 30, "epoch": 3.0, "sample_passes": 300, "train_loss": train_loss - 0.3,
         "valid_loss": valid_loss + 0.1, "valid_accuracy": valid - 0.02,
         "test_accuracy": value},
    ]
    setting = ",".join([f"methods={method}"] + [f"{k}={v}" for k, v in knob.items()])
    return {"experiment": experiment, "method": method, "seed": seed, "setting": setting,
            "metric": "accuracy", "value": value, "higher_is_better": True,
            "selection": "best_valid", "best_valid": valid, "best_step": 20,
            "best_sample_passes": 200, "sample_passes": 300, "stop_reason": stop,
            "selection_metric": "valid_accuracy", "selection_higher_is_better": True,
            "curves": curves, "key": f"{method}-{seed}-{setting}",
            "config": {"train_size": size, "dropout": knob.get("dropout", 0.1),
                       "alpha": knob.get("alpha", 1.0), "dim": 32}}


def _cell_records(*, base_valid=(0.80, 0.78), rdrop_valid=(0.79, 0.81), gain=0.02,
                  stop="patience", size=500, seeds=3, extended=True):
    """Every run of a cell's first grid: baseline 0.1/0.3, alpha 0.3/1.0, `rdrop_alpha0`;
    with ``extended``, also the extensions past each edge choice (baseline dropout 0.0 and
    alpha 3.0, each worse on validation), so that the cell is complete."""
    recs = []
    for seed in range(seeds):
        recs.append(_record("rdrop_alpha0", seed, value=0.70, valid=0.75, knob={}, size=size))
        for p, v in zip((0.1, 0.3), base_valid, strict=True):
            recs.append(_record("baseline", seed, value=0.70 + 0.01 * seed, valid=v,
                                knob={"dropout": p}, stop=stop, size=size))
        for a, v in zip((0.3, 1.0), rdrop_valid, strict=True):
            recs.append(_record("rdrop", seed, value=0.70 + 0.01 * seed + gain, valid=v,
                                knob={"alpha": a}, size=size))
        if extended:
            recs.append(_record("baseline", seed, value=0.5, valid=min(base_valid) - 0.1,
                                knob={"dropout": 0.0}, stop=stop, size=size))
            recs.append(_record("rdrop", seed, value=0.5, valid=min(rdrop_valid) - 0.1,
                                knob={"alpha": 3.0}, size=size))
    return recs


def _write_map(tmp_path):
    for name, gain, seeds in (("image-500-vit-d32", 0.03, 5), ("image-2000-vit-d32", 0.0, 3)):
        folder = tmp_path / "scale" / name / "image"
        folder.mkdir(parents=True)
        for i, rec in enumerate(_cell_records(gain=gain, seeds=seeds)):
            (folder / f"r{i}.json").write_text(json.dumps(rec))


@pytest.fixture
def image_record():  # type: ignore[no-untyped-def]
    """:func:`_record`: one second-protocol record of the `image` family."""
    return _record


@pytest.fixture
def image_cell_records():  # type: ignore[no-untyped-def]
    """:func:`_cell_records`: every run of a scale cell's first grid (and its extensions)."""
    return _cell_records


@pytest.fixture
def write_image_map():  # type: ignore[no-untyped-def]
    """:func:`_write_map`: two finished `image` scale cells written under a results folder."""
    return _write_map


@pytest.fixture(scope="session")
def scale_design():  # type: ignore[no-untyped-def]
    """What the CLI hands the reports: the registered grids and the scale cells' missing runs."""
    from rdrop_experiments.design import Design
    from rdrop_experiments.registry import discover
    from rdrop_experiments.scale import CELLS, missing_runs

    return Design.of(discover().values(), cells=CELLS, missing_runs=missing_runs)

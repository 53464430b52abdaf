"""Every family's recipe trains on the device its config names (``device=``): the recipe
resolves ``cfg.device`` and moves its model there. Checked on a CPU machine by recording the
device each recipe asks for and the device of the model it hands to the training loop."""

from __future__ import annotations

import importlib

import pytest
import torch

import rdrop_experiments.protocol as protocol_module
from rdrop_experiments import get_experiment
from rdrop_experiments.config import apply_overrides
from rdrop_experiments.registry import ArmRun

FAMILIES = ["image", "language-modeling", "text-classification", "translation", "summarization"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", FAMILIES)
def test_recipe_resolves_the_configured_device_and_moves_the_model(name, monkeypatch):
    exp = get_experiment(name)
    # translation and summarization train through the shared encoder-decoder recipe
    module = importlib.import_module(
        "rdrop_experiments.seq2seq" if name in ("translation", "summarization")
        else exp.recipe.__module__)
    asked: list[str] = []
    placed: list[torch.device] = []

    def fake_resolve(device_name: str) -> torch.device:
        asked.append(device_name)
        return torch.device("cpu")

    def fake_train(task, trainer, cfg, ctx):  # the protocol loop: stop before any training
        placed.append(next(trainer.model.parameters()).device)
        raise _Stop

    monkeypatch.setattr(module, "resolve_device", fake_resolve)
    monkeypatch.setattr(protocol_module, "train_until_patience", fake_train)
    quick = exp.variants["quick"]
    cfg = apply_overrides(exp.config, {**quick, "device": "cpu:0"})
    with pytest.raises(_Stop):
        exp.recipe(cfg, ArmRun(method="baseline", seed=0, progress=False))
    assert asked == ["cpu:0"]
    assert placed == [torch.device("cpu")]

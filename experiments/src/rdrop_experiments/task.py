"""The one recipe skeleton: a family describes its :class:`Task`;
:func:`rdrop_experiments.protocol.run_task` trains it.

A family file holds its config, data, model and evaluation; everything every arm of every family
shares is written once, in the order that seeds it:

1. seed every generator with the run's seed (:func:`~rdrop_experiments.training.seed_everything`);
2. build the model (``task.model()``) on the task's device;
3. the arm's training step (:func:`~rdrop_experiments.training.make_step`);
4. AdamW over the trainable parameters, the config's LR schedule;
5. the seeded batch order (:class:`~rdrop_experiments.resume.BatchCycle`);

(1-5: :func:`build_trainer`, here), then in :mod:`rdrop_experiments.protocol`:

6. train until validation stalls (:func:`~rdrop_experiments.protocol.train_until_patience`);
7. the record (:func:`~rdrop_experiments.protocol.run_task`): the test metrics at the
   best-validation checkpoint, the train/valid loss gap there, the protocol's fields and the
   family's extras.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rdrop_experiments.config import CommonConfig
from rdrop_experiments.resume import BatchCycle, load_step_state, step_state
from rdrop_experiments.training import (
    TrainStep,
    cycle_batches,
    lr_schedule,
    make_step,
    seed_everything,
)

__all__ = ["Task", "Trainer", "build_trainer"]


@dataclass
class Task:
    """What a family gives the skeleton: its model, its batches, its evaluation.

    Attributes:
        model: builds a fresh model (called once per run, after the seed).
        batch: ``batch(indices) -> (args, target)``: the training batch of these example
            indices (a CPU tensor from the batch order), on the task's device.
        n_train: training examples (the batch order's size, ``epoch`` on the curves).
        evaluate: ``evaluate(model, split) -> {name: value}`` for ``"train"`` (a fixed slice),
            ``"valid"`` and ``"test"``; the valid dict holds ``metric``, each holds ``loss``.
        metric: the validation metric that selects the checkpoint.
        higher_is_better: its direction.
        device: where the model trains (the family put its data there).
        ignore_index, label_smoothing: of the training loss.
        clip_norm: max gradient norm (None: no clipping).
        betas: AdamW's.
        report_valid: the record's metrics also carry ``valid_<metric>``, the best validation
            value.
        parameters_key: the extra that counts the trainable parameters.
        extra: the family's fields of the record (data source, sizes, ...).
    """

    model: Callable[[], nn.Module]
    batch: Callable[[Tensor], tuple[tuple[Any, ...], Any]]
    n_train: int
    evaluate: Callable[[nn.Module, str], Mapping[str, float]]
    metric: str
    higher_is_better: bool = True
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ignore_index: int = -100
    label_smoothing: float = 0.0
    clip_norm: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    report_valid: bool = False
    parameters_key: str = "parameters"
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Trainer:
    """What :func:`build_trainer` makes for one arm and one seed, and a checkpoint saves: the
    model, the arm's step, the optimizer, its LR schedule and the batch order."""

    model: nn.Module
    step: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: BatchCycle

    def state_dict(self) -> dict[str, Any]:
        """The parts' states under the checkpoint's keys (plain tensors, numbers, dicts)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step_fn": step_state(self.step),
                "batches": self.batches.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        load_step_state(self.step, state["step_fn"])
        self.batches.load_state_dict(state["batches"])


def build_trainer(task: Task, cfg: CommonConfig, method: str, seed: int) -> Trainer:
    """Seed, then build the model, the step of arm ``method``, AdamW, the LR schedule and the
    batch order, in this order (the seeded generators are drawn in it)."""
    generator = seed_everything(seed)
    model = task.model().to(task.device)
    step = make_step(model, cfg, method, ignore_index=task.ignore_index,
                     label_smoothing=task.label_smoothing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=task.betas)
    batches = cycle_batches(task.n_train, cfg.batch_size, generator)
    return Trainer(model, step, optimizer, lr_schedule(optimizer, cfg), batches)

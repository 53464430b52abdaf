"""The pieces every recipe shares: the training step of each arm, seeding, the LR schedule.

``make_step(model, cfg, method)`` is the only place where the two arms differ. Everything else in
a recipe (data order, initialisation, optimizer, schedule, number of optimizer steps, evaluation)
is identical for both arms and seeded by the run's seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rdrop
from rdrop.batching import extract_logits
from rdrop.functional import RDropOutput, multi_pass_rdrop_loss, rdrop_loss
from rdrop.inspection import dropout_slots
from rdrop.schedule import rdrop_step
from rdrop_experiments.config import METHODS, CommonConfig
from rdrop_experiments.resume import BatchCycle

__all__ = [
    "TrainStep",
    "cycle_batches",
    "linear_warmup_decay",
    "lr_schedule",
    "make_step",
    "num_epochs",
    "resolve_device",
    "seed_everything",
    "set_dropout",
]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy (if present) and torch; return a torch generator for data order."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_dropout(model: nn.Module, p: float | list[float]) -> list[float]:
    """Set every dropout rate in ``model`` to ``p`` and return the previous rates.

    Every slot of :func:`rdrop.inspection.dropout_slots` (``nn.Dropout`` modules,
    stochastic depth, float rates used functionally such as
    ``nn.MultiheadAttention.dropout``). ``p`` may also be the list this function returned, to
    restore the previous rates.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))
        >>> old = set_dropout(net, 0.5)
        >>> net[1].p, old
        (0.5, [0.1])
        >>> _ = set_dropout(net, old); net[1].p
        0.1
    """
    slots = [(m, a) for _, m, a in dropout_slots(model)]
    old = [float(getattr(m, a)) for m, a in slots]
    values = p if isinstance(p, list) else [float(p)] * len(slots)
    for (m, a), v in zip(slots, values, strict=True):
        setattr(m, a, v)
    return old


def linear_warmup_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak LR, then linear decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def lr_schedule(
    optimizer: torch.optim.Optimizer, cfg: CommonConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's schedule: ``constant`` (linear warm-up over ``cfg.warmup_steps``, then the
    peak LR) or ``linear`` (:func:`linear_warmup_decay` to 0 at ``cfg.max_steps``).

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = lr_schedule(opt, CommonConfig(warmup_steps=2, lr_schedule="constant"))
        >>> [round(sched.lr_lambdas[0](s), 2) for s in range(4)]
        [0.5, 1.0, 1.0, 1.0]
    """
    if cfg.lr_schedule == "linear":
        return linear_warmup_decay(optimizer, cfg.warmup_steps, cfg.max_steps)
    warmup = cfg.warmup_steps

    def factor(step: int) -> float:
        return (step + 1) / warmup if warmup and step < warmup else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainStep:
    """One arm's loss for one batch: ``step(*args, target=y, **kwargs) -> RDropOutput``.

    * ``baseline``: one forward, cross-entropy (``ignore_index``, ``label_smoothing``);
      ``consistency_loss`` is 0.
    * ``rdrop_alpha0``: the ``rdrop`` arm with ``alpha = 0``: two passes, both cross-entropies,
      no consistency term (separates the KL term from the doubled-sample gradient).
    * ``rdrop_stop_gradient``: the first pass with gradients, the second under ``no_grad`` (a
      detached target): ``loss = CE(P1) + alpha * symKL(P1, sg(P2))`` with
      :func:`rdrop.rdrop_loss`'s normalization (computed as ``rdrop_loss(l1, l2.detach())``,
      whose extra ``CE(P2)`` term is a constant without gradient; it is subtracted from the
      logged ``loss`` and ``task_loss``). One backward pass, one activation graph.
    * ``rdrop``: :class:`rdrop.RDrop` with the config's ``alpha``, ``num_passes``,
      ``every_k_steps``, ``consistency``, ``rdrop_mode``, ``alpha_warmup_steps``; with
      ``pass_dropouts`` set, ``num_passes`` separate forwards, pass ``k`` with every dropout rate
      set to ``pass_dropouts[k]``, combined by :func:`rdrop.multi_pass_rdrop_loss`.

    ``logits`` of the output is the (first) pass's logits, for training metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: CommonConfig,
        method: str,
        *,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        logits_fn: Callable[[Any], Tensor] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.model = model
        self.cfg = cfg
        self.method = method
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.logits_fn = logits_fn or extract_logits
        self.calls = 0
        self.wrapped: rdrop.RDrop | None = None
        if method in ("rdrop", "rdrop_alpha0") and not cfg.pass_dropouts:
            self.wrapped = rdrop.RDrop(
                model,
                alpha=0.0 if method == "rdrop_alpha0" else cfg.alpha,
                mode=cfg.rdrop_mode,
                num_passes=cfg.num_passes,
                every_k_steps=cfg.every_k_steps,
                alpha_warmup_steps=cfg.alpha_warmup_steps,
                consistency=cfg.consistency,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                logits_fn=self.logits_fn,
                chunk_size=cfg.chunk_size,
            )

    def _plain(self, args: tuple[Any, ...], kwargs: dict[str, Any], target: Tensor) -> RDropOutput:
        logits = self.logits_fn(self.model(*args, **kwargs))
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
        return RDropOutput(loss, loss.detach(), torch.zeros((), device=loss.device), logits)

    def _stop_gradient(self, step: int, args: tuple[Any, ...], kwargs: dict[str, Any],
                       target: Tensor) -> RDropOutput:
        decision = rdrop_step(step, alpha=self.cfg.alpha, every_k_steps=self.cfg.every_k_steps,
                              alpha_warmup_steps=self.cfg.alpha_warmup_steps)
        if not decision.active:
            return self._plain(args, kwargs, target)
        logits1 = self.logits_fn(self.model(*args, **kwargs))
        with torch.no_grad():  # the target pass: dropout on, no graph kept
            logits2 = self.logits_fn(self.model(*args, **kwargs))
        out = rdrop_loss(logits1, logits2, target, alpha=decision.alpha,
                         ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                         consistency=self.cfg.consistency, chunk_size=self.cfg.chunk_size)
        # rdrop_loss sums CE over both passes; CE(P2) has no gradient here, drop it from logs.
        ce2 = F.cross_entropy(logits2.reshape(-1, logits2.shape[-1]).float(), target.reshape(-1),
                              ignore_index=self.ignore_index,
                              label_smoothing=self.label_smoothing)
        return RDropOutput(out.loss - ce2, out.task_loss - ce2, out.consistency_loss, logits1)

    def __call__(self, *args: Any, target: Tensor, **kwargs: Any) -> RDropOutput:
        step = self.calls
        self.calls += 1
        if self.method == "baseline":
            return self._plain(args, kwargs, target)
        if self.method == "rdrop_stop_gradient":
            return self._stop_gradient(step, args, kwargs, target)
        if self.wrapped is not None:
            return self.wrapped(*args, target=target, **kwargs)
        # Per-pass dropout rates (the paper's "two dropout rates" ablation).
        if step % self.cfg.every_k_steps != 0:
            return self._plain(args, kwargs, target)
        passes = []
        original = set_dropout(self.model, self.cfg.pass_dropouts[0])
        for p in self.cfg.pass_dropouts:
            set_dropout(self.model, p)
            passes.append(self.logits_fn(self.model(*args, **kwargs)))
        set_dropout(self.model, original)
        alpha = 0.0 if self.method == "rdrop_alpha0" else self.cfg.alpha
        if self.cfg.alpha_warmup_steps:
            alpha *= min(1.0, (step + 1) / self.cfg.alpha_warmup_steps)
        out = multi_pass_rdrop_loss(
            passes,
            target,
            alpha=alpha,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            consistency=self.cfg.consistency,
        )
        return RDropOutput(out.loss, out.task_loss, out.consistency_loss, passes[0])


def make_step(model: nn.Module, cfg: CommonConfig, method: str, **kwargs: Any) -> TrainStep:
    """Shorthand for :class:`TrainStep` (``kwargs``: ignore_index, label_smoothing, logits_fn)."""
    return TrainStep(model, cfg, method, **kwargs)


def cycle_batches(n: int, batch_size: int, generator: torch.Generator) -> BatchCycle:
    """Endless shuffled index batches over ``range(n)`` (a new permutation each epoch), with a
    position that a checkpoint can save (:class:`rdrop_experiments.resume.BatchCycle`)."""
    return BatchCycle(n, batch_size, generator)


def num_epochs(cfg: CommonConfig, n_train: int) -> float:
    """Passes over the training data that ``cfg.max_steps`` amounts to."""
    return cfg.max_steps * cfg.batch_size / max(1, n_train)


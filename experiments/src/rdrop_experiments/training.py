"""The pieces every recipe shares: the training step of each arm, seeding, the LR schedule.

``make_step(model, cfg, method)`` is the only place where the arms differ (each arm's
:class:`rdrop_experiments.config.ArmSpec`). Everything else in a recipe (data order,
initialisation, optimizer, schedule, number of optimizer steps, evaluation) is identical for
every arm and seeded by the run's seed (:func:`rdrop_experiments.protocol.run_task`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.losses.functional import RDropOutput
from rdrop.training import autostart
from rdrop.training.autostart import AutoStart, StartRule
from rdrop.training.batching import extract_logits
from rdrop.training.inspection import dropout_slots
from rdrop.training.noise import attach_noise
from rdrop.training.schedule import RDropStep, Schedule
from rdrop.training.step import PassLoss, PassPlan, TrainingStep, pass_loss
from rdrop_experiments.compute import plan_passes
from rdrop_experiments.config import START_RULES, CommonConfig, arm_spec
from rdrop_experiments.resume import BatchCycle

__all__ = [
    "TrainStep",
    "arm_training_step",
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

    Every slot of :func:`rdrop.training.inspection.dropout_slots` (``nn.Dropout`` modules,
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

    Every arm is the library's one step (:class:`rdrop.training.step.TrainingStep`), at the
    decision of
    :class:`rdrop.training.schedule.Schedule` of the number of calls so far (one call per optimizer
    step in the recipes):

    * ``baseline``: always a plain step: one forward, cross-entropy (``ignore_index``,
      ``label_smoothing``); ``consistency_loss`` is 0.
    * ``rdrop_alpha0``: the ``rdrop`` arm with ``alpha = 0``: the passes, their
      cross-entropies, no consistency term (separates the KL term from the doubled-sample
      gradient).
    * ``rdrop_stop_gradient``: the first pass with gradients, the second under ``no_grad`` (a
      detached target): ``loss = CE(P1) + alpha * symKL(P1, sg(P2))`` with
      :func:`rdrop.rdrop_loss`'s normalization. One backward pass, one activation graph.
    * ``rdrop``: R-Drop with the config's ``alpha``, ``num_passes``, ``every_k_steps``,
      ``consistency``, ``rdrop_mode``, ``alpha_warmup_steps``, ``chunk_size``; with
      ``pass_dropouts`` set, ``num_passes`` separate forwards, pass ``k`` with every dropout
      rate set to ``pass_dropouts[k]`` (the step's per-pass context).

    Every arm's randomness is ``cfg.noise`` (:mod:`rdrop.training.noise`), attached to the model
    here:
    ``embedding:ALPHA`` on the baseline is NEFTune alone; on ``rdrop`` the passes differ by it.
    ``cfg.consistency="bernoulli"`` gives every arm the multi-label loss (BCE task terms,
    :class:`rdrop.losses.multilabel.MultiLabelLoss`).

    The cheaper schedules are the library's options, for every R-Drop arm:
    ``second_pass_fraction`` (the step's), ``start_step`` (the schedule's), ``start_rule``
    (``"plateau"``: :class:`rdrop.PlateauStart`) and ``auto_start_patience`` (an
    :class:`rdrop.AutoStart`), the rules on the run's validation metric, fed by the
    training loop through :meth:`observe_validation`.

    ``logits`` of the output is the (first) pass's logits, for training metrics;
    ``last_passes`` is ``(g, h)`` of the last call, the samples forwarded with and without a
    backward (:func:`rdrop_experiments.compute.step_passes`), which the loop charges.
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
        self.arm = arm_spec(method)
        self.model = model
        self.cfg = cfg
        self.method = method
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.logits_fn = logits_fn or extract_logits
        self.calls = 0
        self.alpha = 0.0 if self.arm.zero_alpha else cfg.alpha
        self.schedule: Schedule | None = None  # with a start rule: made at the first validation
        if self.arm.two_pass and not self._has_rule():
            self.schedule = Schedule(self.alpha, cfg.every_k_steps, cfg.alpha_warmup_steps,
                                     cfg.start_step)
        self.last_passes: tuple[int, int] | None = None
        loss = pass_loss(cfg.consistency, ignore_index=ignore_index,
                         label_smoothing=label_smoothing, chunk_size=cfg.chunk_size,
                         # the baseline is plain cross-entropy, which checks nothing
                         check_finite=self.arm.two_pass)
        self.noise = attach_noise(model, cfg.noise)
        self.step = arm_training_step(cfg, method, loss=loss, logits_fn=self.logits_fn,
                                      pass_context=self._pass_context)

    @contextlib.contextmanager
    def _pass_context(self, passes: range, plan: PassPlan) -> Iterator[None]:
        """Each forward: the noise source's context, and the per-pass dropout rates if set.

        The baseline's noise is its own (``baseline+embedding`` is NEFTune alone), on every
        step; an R-Drop arm's noise is R-Drop's, on its R-Drop steps only (a plain step before
        the start equals the baseline's step, :meth:`rdrop.training.noise.NoiseHandle.
        pass_context`)."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.noise.forward_copies(len(passes))
                                if not self.arm.two_pass
                                else self.noise.pass_context(passes, plan))
            if self.cfg.pass_dropouts:
                stack.enter_context(self._pass_dropout(passes, plan))
            yield

    @contextlib.contextmanager
    def _pass_dropout(self, passes: range, plan: PassPlan) -> Iterator[None]:
        """Pass ``k`` of an R-Drop step runs with every dropout rate ``pass_dropouts[k]``."""
        if not plan.active:
            yield
            return
        original = set_dropout(self.model, self.cfg.pass_dropouts[passes.start])
        try:
            yield
        finally:
            set_dropout(self.model, original)

    def _has_rule(self) -> bool:
        return bool(self.cfg.auto_start_patience or self.cfg.start_rule)

    def _new_schedule(self, higher_is_better: bool) -> Schedule:
        rule: StartRule = (
            getattr(autostart, START_RULES[self.cfg.start_rule])(
                higher_is_better=higher_is_better) if self.cfg.start_rule else
            AutoStart(self.cfg.auto_start_patience, higher_is_better=higher_is_better))
        return Schedule(self.alpha, self.cfg.every_k_steps, self.cfg.alpha_warmup_steps, rule)

    @property
    def auto(self) -> StartRule | None:
        """The start rule (``None`` without one, or before the first validation)."""
        return None if self.schedule is None else self.schedule.rule  # type: ignore[return-value]

    def decision(self, step: int) -> RDropStep:
        """This arm's schedule decision at optimizer step ``step`` (plain while a start rule
        has seen no validation yet)."""
        if self.schedule is None:
            return RDropStep(active=False, alpha=0.0)
        return self.schedule.decision(step)

    def observe_validation(self, value: float, step: int, higher_is_better: bool) -> bool:
        """Feed the start rule (``cfg.start_rule``, ``cfg.auto_start_patience``) one validation
        value after ``step`` optimizer steps; ``True`` when R-Drop switches on at this call."""
        if not self._has_rule() or not self.arm.two_pass:
            return False
        if self.schedule is None:
            self.schedule = self._new_schedule(higher_is_better)
        return self.schedule.observe(value, step=step)

    def record_fields(self) -> dict[str, Any]:
        """For the run's record: the step the start rule fired at (``None``: never)."""
        if not self._has_rule() or not self.arm.two_pass:
            return {}
        return {"rdrop_start_step": None if self.schedule is None else self.schedule.start_step}

    def state_dict(self) -> dict[str, Any]:
        """The step's counters for a checkpoint (plain numbers)."""
        rule = self.auto
        return {"calls": self.calls,
                "auto": None if rule is None else
                {"higher_is_better": rule.higher_is_better, **rule.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.calls = int(state["calls"])
        auto = state.get("auto")
        if auto is not None:
            self.schedule = self._new_schedule(bool(auto["higher_is_better"]))
            self.schedule.rule.load_state_dict(auto)  # type: ignore[union-attr]

    def __call__(self, *args: Any, target: Tensor, **kwargs: Any) -> RDropOutput:
        decision = self.decision(self.calls)
        self.calls += 1
        plan = self.step.plan(decision)
        self.last_passes = plan_passes(plan, int(target.shape[0]))
        return self.step.run(self.model, args, kwargs, target, plan).out


def arm_training_step(cfg: CommonConfig, method: str, *, loss: PassLoss | None = None,
                      **kwargs: Any) -> TrainingStep:
    """The library's step for arm ``method`` under ``cfg`` (passes, mode, stop-gradient, second
    pass fraction): what :class:`TrainStep` runs and what
    :func:`rdrop_experiments.protocol.step_cost` plans from (``kwargs``: ``logits_fn``,
    ``pass_context``).

    Example:
        >>> arm_training_step(CommonConfig(), "rdrop_stop_gradient").stop_gradient
        True
    """
    return TrainingStep(
        num_passes=cfg.num_passes,
        mode="twice" if cfg.pass_dropouts else cfg.rdrop_mode,
        stop_gradient=arm_spec(method).stop_gradient,
        second_pass_fraction=cfg.second_pass_fraction,
        **({} if loss is None else {"loss": loss}),
        **kwargs,
    )


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


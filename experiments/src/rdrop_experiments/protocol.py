r"""The second protocol's training loop: train until validation stalls, under a compute cap.

Every arm of every family trains through :func:`train_until_patience`:

* after every ``cfg.eval_every`` optimizer steps the validation metric is measured; a strictly
  better value makes the current weights the *best-validation checkpoint* and the test split is
  evaluated on them at once (so the test value of the best-validation-so-far checkpoint is
  known at every evaluation point, and no weights need to be kept);
* training stops when the validation metric has not improved for ``cfg.patience`` evaluation
  points, or when the run has used ``cfg.max_sample_passes`` sample passes (the compute cap,
  the same for every arm), or after ``cfg.max_steps`` optimizer steps (a safety stop);
* the run's result is the test metrics at the best-validation checkpoint. Nothing reads a test
  value to decide anything.

Compute is counted in *sample passes*: one training forward (with its backward) of one sample
counts 1. A baseline step over :math:`B` samples costs :math:`B`; an R-Drop step (and the
two-pass ``rdrop_alpha0`` arm) costs :math:`mB` for ``m`` passes; a step on which
``every_k_steps`` switches R-Drop off costs :math:`B`. The stop-gradient arm runs its second
pass without gradients: it is charged :math:`2B` forward sample passes like R-Drop (the x-axis
is the conservative upper bound), and each curve point also carries ``backward_passes`` (it has
:math:`B` per step) so its cost in FLOPs (about :math:`B + B/3`) can be read off. Evaluation
forwards are not counted (they are the same for every arm).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from rdrop.training.schedule import RDropStep, rdrop_step
from rdrop_experiments.compute import ComputeMeter, plan_passes, step_passes_of
from rdrop_experiments.config import ARMS, arm_spec
from rdrop_experiments.progress import progress_bar
from rdrop_experiments.registry import ArmRun, RunResult
from rdrop_experiments.resume import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rdrop_experiments.task import Task, Trainer, build_trainer
from rdrop_experiments.training import arm_training_step

__all__ = [
    "PLATEAU_ALPHAS",
    "TWO_PASS_METHODS",
    "LoopState",
    "ProtocolOutcome",
    "Running",
    "StopRules",
    "branch_point",
    "cheaper_grid",
    "evaluate_point",
    "is_better",
    "passed_optimum",
    "plateau_grid",
    "protocol_grid",
    "quality_at_compute",
    "resume",
    "run_task",
    "save",
    "step_cost",
    "stopping_schedule",
    "task_metrics",
    "train_step",
    "train_until_patience",
]

TWO_PASS_METHODS = tuple(m for m, arm in ARMS.items() if arm.two_pass)


def step_cost(cfg: Any, method: str, batch_size: int, optimizer_step: int) -> tuple[int, int]:
    """``(forward, backward)`` sample passes of one optimizer step of arm ``method``: the plan
    of the arm's library step (:func:`rdrop_experiments.training.arm_training_step`) at the
    config's schedule, charged by :func:`rdrop_experiments.compute.plan_passes`, the cost
    model the training step reports by (a start rule's switch aside: it depends on the run).

    Args:
        cfg: the run's config (reads ``num_passes``, ``every_k_steps``, ``start_step``,
            ``second_pass_fraction``, ``rdrop_mode``, ``pass_dropouts``).
        method: the arm.
        batch_size: samples in the step, before R-Drop duplicates them.
        optimizer_step: 0-based optimizer step (``every_k_steps`` decides on it).

    Example:
        >>> from rdrop_experiments.config import CommonConfig
        >>> cfg = CommonConfig(every_k_steps=2)
        >>> [step_cost(cfg, m, 16, 0) for m in ("baseline", "rdrop", "rdrop_stop_gradient")]
        [(16, 16), (32, 32), (32, 16)]
        >>> step_cost(cfg, "rdrop", 16, 1)
        (16, 16)
    """
    decision = (rdrop_step(optimizer_step, alpha=1.0, every_k_steps=cfg.every_k_steps,
                           start_step=getattr(cfg, "start_step", 0))
                if arm_spec(method).two_pass else RDropStep(active=False, alpha=0.0))
    grad, no_grad = plan_passes(arm_training_step(cfg, method).plan(decision), batch_size)
    return grad + no_grad, grad


def is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Strict improvement of ``value`` over ``best`` (``None`` = nothing yet; NaN never wins).

    Example:
        >>> is_better(0.5, None, True), is_better(0.5, 0.5, True), is_better(4.0, 5.0, False)
        (True, False, True)
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


@dataclass
class ProtocolOutcome:
    """What :func:`train_until_patience` returns.

    Attributes:
        curves: one dict per evaluation point: ``step``, ``epoch``, ``sample_passes``,
            ``backward_passes``, ``train_loss`` (eval mode, fixed training slice),
            ``valid_<name>`` for every validation metric, ``best_valid`` (best validation
            metric so far), ``best_step`` (its step), ``test_<name>`` for every test metric of
            the best-validation-so-far checkpoint, and the running training objective parts.
        best_step: optimizer step of the best-validation checkpoint.
        best_sample_passes: sample passes used when it was reached.
        best_valid: its validation metric.
        test: test metrics of the best-validation checkpoint.
        stop_reason: ``"patience"``, ``"compute_cap"``, ``"max_steps"`` or ``"diverged"``
            (a non-finite training loss; the run's result is its best point before that).
        steps, sample_passes: totals when training stopped.
        test_evaluations: how many times the test split was evaluated (once per improvement).
        selection_metric, selection_higher_is_better: the validation metric that picked the
            checkpoint (``valid_<metric>``) and its direction.
    """

    curves: list[dict[str, float]]
    best_step: int
    best_sample_passes: int
    best_valid: float
    test: dict[str, float]
    stop_reason: str
    steps: int
    sample_passes: int
    test_evaluations: int
    selection_metric: str = ""
    selection_higher_is_better: bool = True
    compute: dict[str, Any] = field(default_factory=dict)

    def record_fields(self) -> dict[str, Any]:
        """The protocol's fields for a run record (``selection``, ``best_step``, ...; the
        ``forward_ratio`` behind ``fb_equivalents``, :mod:`rdrop_experiments.compute`)."""
        return {"selection": "best_valid", "best_step": self.best_step,
                "best_sample_passes": self.best_sample_passes, "best_valid": self.best_valid,
                "stop_reason": self.stop_reason, "steps": self.steps,
                "sample_passes": self.sample_passes, "test_evaluations": self.test_evaluations,
                "selection_metric": self.selection_metric,
                "selection_higher_is_better": self.selection_higher_is_better, **self.compute}


def stopping_schedule(cfg: Any, batch_size: int, n_train: int) -> tuple[int, int, int]:
    """``(eval_every, patience, cap)`` of a run, in steps, evaluation points and sample passes.

    The config may give them in steps and sample passes (``eval_every``, ``patience``,
    ``max_sample_passes``: the second protocol) or in epochs (``eval_every_epochs``,
    ``patience_epochs``, ``max_sample_pass_epochs``), which hold at every training-set size.

    Example:
        >>> from rdrop_experiments.config import CommonConfig
        >>> stopping_schedule(CommonConfig(eval_every=15, patience=4), 16, 240)
        (15, 4, 0)
        >>> stopping_schedule(CommonConfig(eval_every_epochs=0.5, patience_epochs=2,
        ...                                max_sample_pass_epochs=50), 16, 2400)
        (75, 4, 120000)
    """
    eval_every = int(cfg.eval_every)
    patience = int(getattr(cfg, "patience", 0))
    cap = int(getattr(cfg, "max_sample_passes", 0))
    per_epoch = n_train / max(1, batch_size)
    if getattr(cfg, "eval_every_epochs", 0):
        eval_every = max(1, round(cfg.eval_every_epochs * per_epoch))
    if getattr(cfg, "patience_epochs", 0):
        patience = max(1, math.ceil(cfg.patience_epochs / cfg.eval_every_epochs - 1e-9))
    if getattr(cfg, "max_sample_pass_epochs", 0):
        cap = max(1, round(cfg.max_sample_pass_epochs * n_train))
    return eval_every, patience, cap


def passed_optimum(last: float, best: float, margin: float, higher_is_better: bool) -> bool:
    """Whether the validation metric has turned: ``last`` worse than ``best`` by more than
    ``margin * |best|`` (``margin`` 0: any value counts, the patience window alone decides).

    Example:
        >>> passed_optimum(101.0, 100.0, 0.005, False), passed_optimum(100.4, 100.0, 0.005, False)
        (True, False)
        >>> passed_optimum(0.80, 0.80, 0.0, True)
        True
    """
    if margin <= 0:
        return True
    if math.isnan(last):
        return True
    worse = best - last if higher_is_better else last - best
    return worse > margin * abs(best)


@dataclass
class Running:
    """Sums of the training objective's parts since the last evaluation point."""

    loss: float = 0.0
    task: float = 0.0
    consistency: float = 0.0
    n: int = 0

    def add(self, out: Any) -> None:
        """Add one step's :class:`rdrop.losses.functional.RDropOutput`."""
        self.loss += out.loss.item()
        self.task += out.task_loss.item()
        self.consistency += out.consistency_loss.item()
        self.n += 1

    def means(self) -> dict[str, float]:
        """The curve point's ``train_objective``, ``train_task_loss``, ``train_consistency``."""
        return {"train_objective": self.loss / self.n, "train_task_loss": self.task / self.n,
                "train_consistency": self.consistency / self.n}


@dataclass
class LoopState:
    """What :func:`train_until_patience` carries from step to step; a checkpoint saves it as a
    plain dict (:meth:`state_dict`, the keys of the checkpoints written before this class).

    Attributes:
        step: optimizer steps done.
        curves: the evaluation points so far.
        best, best_step, best_passes: the best validation value (None: none yet), its step and
            the sample passes used by then.
        since_best: evaluation points since it (the patience count).
        test, test_evals: test metrics of the best-validation checkpoint; test evaluations.
        passes, backward: sample passes forwarded, and those with a backward.
        running: the training objective since the last evaluation point.
        elapsed: seconds of training loop (earlier processes of a resumed run included).
        compute: the :class:`~rdrop_experiments.compute.ComputeMeter`'s state.
    """

    step: int = 0
    curves: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_step: int = 0
    best_passes: int = 0
    since_best: int = 0
    test: dict[str, float] = field(default_factory=dict)
    test_evals: int = 0
    passes: int = 0
    backward: int = 0
    running: Running = field(default_factory=Running)
    elapsed: float = 0.0
    compute: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, lists and dicts (``torch.load(weights_only=True)`` reads them)."""
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> LoopState:
        """Restore :meth:`state_dict`.

        Example:
            >>> s = LoopState(step=4, best=0.5, running=Running(loss=2.0, n=1))
            >>> LoopState.from_state_dict(s.state_dict()) == s
            True
        """
        return cls(**{**state, "running": Running(**state["running"])})

    def charge(self, passes: tuple[int, int]) -> None:
        """Count one step's ``(g, h)`` samples forwarded with and without a backward."""
        grad, no_grad = passes
        self.passes += grad + no_grad
        self.backward += grad


@dataclass(frozen=True)
class StopRules:
    """When a run is evaluated and when it stops (:func:`stopping_schedule` of its config).

    Attributes:
        eval_every: steps between evaluation points.
        patience: evaluation points without a better validation value (0: never).
        cap: the compute cap in sample passes (0: none).
        margin: ``cfg.stop_margin`` (:func:`passed_optimum`).
        max_steps: the safety stop.
        higher_is_better: the selection metric's direction.
    """

    eval_every: int
    patience: int
    cap: int
    margin: float
    max_steps: int
    higher_is_better: bool

    @classmethod
    def of(cls, cfg: Any, n_train: int, higher_is_better: bool) -> StopRules:
        """The rules of ``cfg`` for ``n_train`` training examples.

        Example:
            >>> from rdrop_experiments.config import CommonConfig
            >>> rules = StopRules.of(CommonConfig(eval_every=5, patience=2), 100, True)
            >>> rules.eval_every, rules.patience, rules.cap, rules.max_steps
            (5, 2, 0, 1000)
        """
        eval_every, patience, cap = stopping_schedule(cfg, cfg.batch_size, n_train)
        return cls(eval_every, patience, cap, float(getattr(cfg, "stop_margin", 0.0)),
                   int(cfg.max_steps), higher_is_better)

    def capped(self, state: LoopState) -> bool:
        """The run has used its compute."""
        return self.cap > 0 and state.passes >= self.cap

    def is_eval_point(self, step: int, state: LoopState, diverged: bool) -> bool:
        """Every ``eval_every`` steps, and at every stop (cap, ``max_steps``, divergence)."""
        return (step % self.eval_every == 0 or self.capped(state) or step == self.max_steps
                or diverged)

    def should_stop(self, state: LoopState, value: float, diverged: bool) -> str | None:
        """The stop reason after an evaluation point with validation ``value``, or None.

        Example:
            >>> rules = StopRules(2, patience=2, cap=0, margin=0.0, max_steps=9,
            ...                   higher_is_better=True)
            >>> rules.should_stop(LoopState(best=0.9, since_best=1), 0.8, diverged=False) is None
            True
            >>> rules.should_stop(LoopState(best=0.9, since_best=2), 0.8, diverged=False)
            'patience'
        """
        if diverged:
            return "diverged"
        best = math.nan if state.best is None else float(state.best)
        if (self.patience and state.since_best >= self.patience
                and passed_optimum(value, best, self.margin, self.higher_is_better)):
            return "patience"
        if self.capped(state):
            return "compute_cap"
        return None


def branch_point(cfg: Any, trainer: Trainer, step: int) -> None:
    """At ``cfg.branch_step`` (with a ``cfg.branch_seed``): reseed torch, Python and the batch
    order, so the run continues as another seed's (``rdrop tryout``)."""
    branch_seed = getattr(cfg, "branch_seed", None)
    if branch_seed is not None and step == cfg.branch_step + 1:
        torch.manual_seed(branch_seed)
        random.seed(branch_seed)
        trainer.batches.reseed(branch_seed)


def train_step(task: Task, trainer: Trainer, cfg: Any, method: str, state: LoopState,
               meter: ComputeMeter) -> bool:
    """One optimizer step on the next batch; ``True`` when its loss was not finite (then no
    update and no charge: the loop evaluates once more and stops)."""
    trainer.model.train()
    args, target = task.batch(next(trainer.batches))
    out = trainer.step(*args, target=target)
    diverged = not math.isfinite(out.loss.item())
    if not diverged:
        trainer.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if task.clip_norm is not None:
            nn.utils.clip_grad_norm_(trainer.model.parameters(), task.clip_norm)
        trainer.optimizer.step()
        trainer.scheduler.step()
        passes = step_passes_of(trainer.step,
                                lambda: step_cost(cfg, method, cfg.batch_size, state.step))
        meter.add(args, target, passes=passes)
        state.charge(passes)
    state.running.add(out)
    state.step += 1
    return diverged


def evaluate_point(task: Task, trainer: Trainer, state: LoopState, meter: ComputeMeter,
                   diverged: bool, start: float) -> float:
    """Evaluate train and valid; on a strictly better validation value, test at once (the
    best-validation checkpoint's test value, no weights kept); feed the arm's start rule;
    append the curve point (``wall_s``: seconds since ``start``, a ``perf_counter`` value).
    Returns the validation value.

    Raises:
        KeyError: the valid dict lacks ``task.metric``.
    """
    step, model = state.step, trainer.model
    train = task.evaluate(model, "train")
    valid = dict(task.evaluate(model, "valid"))
    if task.metric not in valid:
        raise KeyError(f"evaluate('valid') returned no {task.metric!r}; got {sorted(valid)}.")
    value = float(valid[task.metric])
    if is_better(value, state.best, task.higher_is_better):
        state.best, state.best_step, state.best_passes, state.since_best = (
            value, step, state.passes, 0)
        state.test = {k: float(v) for k, v in task.evaluate(model, "test").items()}
        state.test_evals += 1
    else:
        state.since_best += 1
    if hasattr(trainer.step, "observe_validation") and trainer.step.observe_validation(
            value, step, task.higher_is_better):
        state.since_best = 0  # R-Drop switched on (automatic start): patience restarts
    if diverged and state.best is None:  # never a valid point: the result is this one
        state.best_step, state.best_passes = step, state.passes
        state.test = {k: float(v) for k, v in task.evaluate(model, "test").items()}
        state.test_evals += 1
    state.curves.append({
        "step": step, "epoch": step * trainer.batches.batch_size / max(1, task.n_train),
        "sample_passes": state.passes, "backward_passes": state.backward,
        **meter.point(), "train_loss": float(train.get("loss", math.nan)),
        **{f"train_{k}": float(v) for k, v in train.items() if k != "loss"},
        **{f"valid_{k}": float(v) for k, v in valid.items()},
        "best_valid": float(state.best) if state.best is not None else math.nan,
        "best_step": state.best_step,
        **{f"test_{k}": v for k, v in state.test.items()},
        **state.running.means(), "wall_s": round(time.perf_counter() - start, 2),
    })
    state.running = Running()
    state.compute = meter.state_dict()
    return value


def train_until_patience(task: Task, trainer: Trainer, cfg: Any, ctx: ArmRun) -> ProtocolOutcome:
    r"""Train one arm until its validation metric stalls; test at the best-valid checkpoint.

    Each step (:func:`train_step`): the next batch of ``trainer.batches`` through
    ``task.batch``, the arm's loss, backward, optional clipping (``task.clip_norm``), the
    optimizer and the LR schedule. At each evaluation point (:meth:`StopRules.is_eval_point`,
    :func:`evaluate_point`): train and valid evaluations; on a strictly better
    ``valid[task.metric]`` the test split, on the current weights. Stop
    (:meth:`StopRules.should_stop`) when the validation metric has not improved for
    ``patience`` evaluation points *and* has passed its optimum (:func:`passed_optimum` with
    ``cfg.stop_margin``), when the sample passes reach the cap, at ``cfg.max_steps``, or when
    the training loss is not finite (``stop_reason="diverged"``). The spacing, the patience
    and the cap come from :func:`stopping_schedule` (in steps, or in epochs).

    With ``ctx.checkpoint`` (a file path), the loop state is saved there at evaluation points
    at most every ``cfg.checkpoint_every_s`` seconds, and a run that finds a checkpoint resumes
    from it: the same curve, bit for bit on CPU, as a run never interrupted (see
    :mod:`rdrop_experiments.resume`). The caller deletes the file once the record is written.

    Args:
        task: the family's :class:`~rdrop_experiments.task.Task` (batches, evaluation, metric).
        trainer: the run's :class:`~rdrop_experiments.task.Trainer` (model, step, optimizer,
            schedule, batch order).
        cfg: the run's config (``eval_every``/``eval_every_epochs``, ``patience``/
            ``patience_epochs``, ``stop_margin``, ``max_sample_passes``/
            ``max_sample_pass_epochs``, ``max_steps``, ``batch_size``, ``checkpoint_every_s``,
            ``branch_seed``/``branch_step``).
        ctx: the arm's :class:`~rdrop_experiments.registry.ArmRun` (``method`` charges a step
            that does not report its passes, see :func:`step_cost`; ``progress``, ``label``,
            ``checkpoint``).

    Returns:
        :class:`ProtocolOutcome`.

    Raises:
        KeyError: ``task.evaluate(model, "valid")`` lacks ``task.metric``.
    """
    rules = StopRules.of(cfg, task.n_train, task.higher_is_better)
    every_s = float(getattr(cfg, "checkpoint_every_s", 0.0))
    state = resume(trainer, ctx.checkpoint)
    meter = ComputeMeter(trainer.model)  # fb_equivalents of every step (rdrop_experiments.compute)
    if state.compute is not None:
        meter.load_state_dict(state.compute)
    stop_reason = "max_steps"
    start = time.perf_counter() - state.elapsed
    last_save = time.perf_counter()
    bar = progress_bar(total=cfg.max_steps, initial=state.step, desc=ctx.label, leave=False,
                       disable=not ctx.progress, dynamic_ncols=True)
    while state.step < cfg.max_steps:
        branch_point(cfg, trainer, state.step + 1)
        diverged = train_step(task, trainer, cfg, ctx.method, state, meter)
        bar.update(1)
        if not rules.is_eval_point(state.step, state, diverged):
            continue
        value = evaluate_point(task, trainer, state, meter, diverged, start)
        bar.set_postfix(valid=f"{value:.4g}", best=f"{state.best:.4g}" if state.best else "")
        reason = rules.should_stop(state, value, diverged)
        if reason is not None:
            stop_reason = reason
            break
        if ctx.checkpoint is not None and time.perf_counter() - last_save >= every_s:
            state.elapsed = time.perf_counter() - start
            save(ctx.checkpoint, trainer, state)
            last_save = time.perf_counter()
    bar.close()
    return ProtocolOutcome(
        curves=state.curves, best_step=state.best_step, best_sample_passes=state.best_passes,
        best_valid=float(state.best) if state.best is not None else math.nan,
        test=state.test, stop_reason=stop_reason, steps=state.step,
        sample_passes=state.passes, test_evaluations=state.test_evals,
        selection_metric=f"valid_{task.metric}", selection_higher_is_better=task.higher_is_better,
        compute={**meter.record_fields(), **getattr(trainer.step, "record_fields", dict)()})


def resume(trainer: Trainer, checkpoint: str | os.PathLike[str] | None) -> LoopState:
    """The loop state of the checkpoint at ``checkpoint``, with the trainer's parts and the
    random generators restored from it; a fresh state without one."""
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is None:
        return LoopState()
    trainer.load_state_dict(saved)
    set_rng_state(saved["rng"])
    return LoopState.from_state_dict(saved["loop"])


def save(checkpoint: str | os.PathLike[str], trainer: Trainer, state: LoopState) -> None:
    """Write the resumable state: the trainer's parts, the generators, the loop state."""
    save_checkpoint(checkpoint, {**trainer.state_dict(), "rng": rng_state(),
                                 "loop": state.state_dict()})


def task_metrics(task: Task, outcome: ProtocolOutcome) -> dict[str, float]:
    """The record's metrics: every test metric at the best-validation checkpoint (``loss`` as
    ``test_loss``), ``valid_<metric>`` with ``task.report_valid``, and ``loss_gap`` (validation
    minus training loss at that checkpoint).

    Example:
        >>> out = ProtocolOutcome(curves=[{"step": 4, "valid_loss": 1.5, "train_loss": 1.0}],
        ...     best_step=4, best_sample_passes=8, best_valid=0.7, test={"loss": 1.4, "acc": 0.6},
        ...     stop_reason="patience", steps=6, sample_passes=12, test_evaluations=1)
        >>> task_metrics(Task(None, None, 1, None, "acc", report_valid=True), out)
        {'acc': 0.6, 'test_loss': 1.4, 'valid_acc': 0.7, 'loss_gap': 0.5}
    """
    best = next(c for c in outcome.curves if c["step"] == outcome.best_step)
    metrics = {k: v for k, v in outcome.test.items() if k != "loss"}
    metrics["test_loss"] = outcome.test["loss"]
    if task.report_valid:
        metrics[f"valid_{task.metric}"] = outcome.best_valid
    metrics["loss_gap"] = best["valid_loss"] - best["train_loss"]
    return metrics


def run_task(task: Task, cfg: Any, ctx: ArmRun) -> RunResult:
    """One seed of one arm of a family's ``task``: build it
    (:func:`rdrop_experiments.task.build_trainer`), train until validation stalls
    (:func:`train_until_patience`), and the record's metrics (:func:`task_metrics`), curves and
    extras (the protocol's fields, the family's, ``epochs`` and the trainable parameters)."""
    trainer = build_trainer(task, cfg, ctx.method, ctx.seed)
    outcome = train_until_patience(task, trainer, cfg, ctx)
    params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return RunResult(
        metrics=task_metrics(task, outcome),
        curves=outcome.curves,
        extra={**outcome.record_fields(), **task.extra,
               "epochs": outcome.steps * cfg.batch_size / task.n_train,
               task.parameters_key: params},
    )


def quality_at_compute(curves: list[Mapping[str, float]], key: str, budget: float) -> float:
    """Test value ``key`` of the best-validation-so-far checkpoint after ``budget`` sample passes.

    The last curve point with ``sample_passes <= budget`` carries it; a run that stopped
    earlier keeps its final best-validation checkpoint (it would not train further). NaN when
    the run had not reached its first evaluation point by then.

    Example:
        >>> c = [{"sample_passes": 10, "test_acc": 0.5}, {"sample_passes": 20, "test_acc": 0.7}]
        >>> quality_at_compute(c, "test_acc", 15), quality_at_compute(c, "test_acc", 99)
        (0.5, 0.7)
        >>> math.isnan(quality_at_compute(c, "test_acc", 5))
        True
    """
    value = math.nan
    for point in curves:
        if point["sample_passes"] > budget:
            break
        value = float(point.get(key, math.nan))
    return value


def protocol_grid(
    *,
    dropout_key: str,
    dropout_grid: tuple[float, ...],
    alpha_grid: tuple[float, ...],
    stop_gradient_alphas: tuple[float, ...] = (),
) -> list[dict[str, Any]]:
    """The arms of a family's second protocol as registry grid settings (fixed before runs).

    ``baseline`` at each rate of ``dropout_grid`` (field ``dropout_key``); ``rdrop`` at each
    alpha of ``alpha_grid`` (the model's own dropout); ``rdrop_alpha0`` once;
    ``rdrop_stop_gradient`` at each of ``stop_gradient_alphas``. Each setting names its one
    arm in ``methods``, so ``rdrop run <family>`` runs every arm of every point per seed.

    Example:
        >>> [tuple(s.items()) for s in protocol_grid(dropout_key="dropout",
        ...     dropout_grid=(0.1,), alpha_grid=(1.0,), stop_gradient_alphas=(1.0,))]
        ... # doctest: +NORMALIZE_WHITESPACE
        [(('methods', ('baseline',)), ('dropout', 0.1)),
         (('methods', ('rdrop',)), ('alpha', 1.0)),
         (('methods', ('rdrop_alpha0',)),),
         (('methods', ('rdrop_stop_gradient',)), ('alpha', 1.0))]
    """
    return [
        *({"methods": ("baseline",), dropout_key: p} for p in dropout_grid),
        *({"methods": ("rdrop",), "alpha": a} for a in alpha_grid),
        {"methods": ("rdrop_alpha0",)},
        *({"methods": ("rdrop_stop_gradient",), "alpha": a} for a in stop_gradient_alphas),
    ]


def cheaper_grid(
    *,
    alpha: float,
    alpha_grid: tuple[float, ...],
    fractions: tuple[float, ...] = (0.25, 0.5),
    auto_start_patience: int = 2,
) -> list[dict[str, Any]]:
    r"""The cheaper-schedule arms of issue 20 as registry grid settings, in the registered order.

    Each arm is a method plus schedule options (:func:`rdrop_experiments.frontier.arm_name`)
    on a grid of two points, the size of the baseline's: ``rdrop+fraction`` and
    ``rdrop_stop_gradient+fraction`` at each rate of ``fractions`` (second pass on
    :math:`\lceil rB \rceil` rows; alpha ``alpha``, full R-Drop's alpha chosen on
    validation), ``rdrop+auto_start`` at each alpha of ``alpha_grid``
    (:class:`rdrop.training.autostart.AutoStart` with ``auto_start_patience``), then
    ``rdrop+auto_start+fraction`` and ``rdrop_stop_gradient+auto_start+fraction`` at each rate.

    Args:
        alpha: the consistency weight of the fraction and combined arms.
        alpha_grid: the two alphas of the automatic-start arm.
        fractions: the grid of ``second_pass_fraction``.
        auto_start_patience: evaluations without a better validation value before R-Drop
            switches on.

    Example:
        >>> grid = cheaper_grid(alpha=1.0, alpha_grid=(0.3, 1.0))
        >>> len(grid), grid[0]
        (10, {'methods': ('rdrop',), 'alpha': 1.0, 'second_pass_fraction': 0.25})
    """
    auto = {"auto_start_patience": auto_start_patience}
    return [
        *({"methods": ("rdrop",), "alpha": alpha, "second_pass_fraction": r} for r in fractions),
        *({"methods": ("rdrop_stop_gradient",), "alpha": alpha, "second_pass_fraction": r}
          for r in fractions),
        *({"methods": ("rdrop",), "alpha": a, **auto} for a in alpha_grid),
        *({"methods": ("rdrop",), "alpha": alpha, **auto, "second_pass_fraction": r}
          for r in fractions),
        *({"methods": ("rdrop_stop_gradient",), "alpha": alpha, **auto,
           "second_pass_fraction": r} for r in fractions),
    ]


# The plateau-start arm (issue 32; docs/EXPERIMENTS.md, "Plateau start", registered 2026-12-07
# before any of its runs): two alphas a decade apart, the size of the baseline's grid, reaching
# above the paper's values; an edge choice is extended by a factor 3 until validation turns.
PLATEAU_ALPHAS = (1.0, 10.0)


def plateau_grid(alpha_grid: tuple[float, ...] = PLATEAU_ALPHAS) -> list[dict[str, Any]]:
    """The ``rdrop+plateau`` arm as registry grid settings: R-Drop from where the registered
    :class:`rdrop.PlateauStart` fires on the run's own validation curve (the run is
    the baseline's, at the model's own dropout, up to there), at each alpha of ``alpha_grid``.

    Example:
        >>> plateau_grid((1.0,))
        [{'methods': ('rdrop',), 'alpha': 1.0, 'start_rule': 'plateau'}]
    """
    return [{"methods": ("rdrop",), "alpha": a, "start_rule": "plateau"} for a in alpha_grid]

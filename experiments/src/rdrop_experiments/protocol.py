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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rdrop.training.schedule import rdrop_step
from rdrop_experiments.compute import ComputeMeter, step_passes_of

__all__ = [
    "PLATEAU_ALPHAS",
    "ProtocolOutcome",
    "cheaper_grid",
    "is_better",
    "passed_optimum",
    "plateau_grid",
    "protocol_grid",
    "quality_at_compute",
    "step_cost",
    "stopping_schedule",
    "train_until_patience",
]

TWO_PASS_METHODS = ("rdrop", "rdrop_alpha0", "rdrop_stop_gradient")


def step_cost(cfg: Any, method: str, batch_size: int, optimizer_step: int) -> tuple[int, int]:
    """``(forward, backward)`` sample passes of one optimizer step of arm ``method``.

    Args:
        cfg: the run's config (reads ``num_passes``, ``every_k_steps``).
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
    if method == "baseline":
        return batch_size, batch_size
    if method not in TWO_PASS_METHODS:
        raise ValueError(f"unknown method {method!r}; expected baseline or one of "
                         f"{TWO_PASS_METHODS}.")
    active = rdrop_step(optimizer_step, alpha=1.0, every_k_steps=cfg.every_k_steps).active
    if not active:
        return batch_size, batch_size
    if method == "rdrop_stop_gradient":
        return 2 * batch_size, batch_size
    return cfg.num_passes * batch_size, cfg.num_passes * batch_size


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


def train_until_patience(
    *,
    cfg: Any,
    method: str,
    model: nn.Module,
    step_fn: Callable[..., Any],
    optimizer: Any,
    scheduler: Any,
    next_batch: Callable[[], tuple[tuple[Any, ...], Any]],
    batch_size: int,
    n_train: int,
    evaluate: Callable[[str], Mapping[str, float]],
    metric: str,
    higher_is_better: bool,
    clip_norm: float | None = None,
    progress: bool = False,
    label: str = "",
    batches: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> ProtocolOutcome:
    r"""Train one arm until its validation ``metric`` stalls; test at the best-valid checkpoint.

    Loop: take ``next_batch() -> (args, target)``, ``out = step_fn(*args, target=target)``,
    ``out.loss.backward()``, optional gradient clipping, ``optimizer.step()``,
    ``scheduler.step()``. Every ``eval_every`` steps (and when a stop condition is met):
    ``evaluate("train")`` and ``evaluate("valid")``; if ``valid[metric]`` is strictly better
    than every earlier value, ``evaluate("test")`` on the current weights. Stop when the
    validation metric has not improved for ``patience`` evaluation points *and* has passed its
    optimum (:func:`passed_optimum` with ``cfg.stop_margin``; ``0`` = never stop on patience),
    when the sample passes reach the cap (``0`` = no cap), at ``cfg.max_steps``, or when the
    training loss is not finite (``stop_reason="diverged"``). The spacing, the patience and the
    cap come from :func:`stopping_schedule` (in steps, or in epochs).

    With ``checkpoint`` (a file path) and ``batches`` (the :class:`~rdrop_experiments.resume.
    BatchCycle` behind ``next_batch``), the loop state is saved there at evaluation points at
    most every ``cfg.checkpoint_every_s`` seconds, and a run that finds a checkpoint resumes
    from it: the same curve, bit for bit on CPU, as a run never interrupted (see
    :mod:`rdrop_experiments.resume`). The caller deletes the file once the record is written.

    Args:
        cfg: the run's config (``eval_every``/``eval_every_epochs``, ``patience``/
            ``patience_epochs``, ``stop_margin``, ``max_sample_passes``/
            ``max_sample_pass_epochs``, ``max_steps``, ``num_passes``, ``every_k_steps``,
            ``checkpoint_every_s``).
        method: the arm (charges compute, see :func:`step_cost`).
        model: put in train mode before each step (``evaluate`` may switch it to eval).
        step_fn: the arm's loss (:class:`rdrop_experiments.training.TrainStep`).
        optimizer, scheduler: stepped once per optimizer step.
        next_batch: returns ``(args, target)`` for the next training batch.
        batch_size: samples per step before duplication (for the compute count).
        n_train: training examples (for ``epoch`` on the curves, and the epoch units).
        evaluate: ``evaluate(split) -> {name: value}`` for ``"train"``, ``"valid"``, ``"test"``;
            the ``"valid"`` dict must contain ``metric``.
        metric: the validation metric that selects the checkpoint.
        higher_is_better: its direction.
        clip_norm: max gradient norm (None = no clipping).
        progress, label: tqdm bar.
        batches: the batch order to save in a checkpoint (needed with ``checkpoint``).
        checkpoint: where to keep the resumable state (None = no checkpoints).

    Returns:
        :class:`ProtocolOutcome`.

    Raises:
        KeyError: ``evaluate("valid")`` lacks ``metric``.
        ValueError: ``checkpoint`` without ``batches``.
    """
    from rdrop_experiments.progress import progress_bar as tqdm  # plain lines in a log
    from rdrop_experiments.resume import (
        load_checkpoint,
        load_step_state,
        rng_state,
        save_checkpoint,
        set_rng_state,
        step_state,
    )

    if checkpoint is not None and batches is None:
        raise ValueError("checkpoint needs batches= (the BatchCycle behind next_batch), or a "
                         "resumed run would draw a different data order.")
    eval_every, patience, cap = stopping_schedule(cfg, batch_size, n_train)
    margin = float(getattr(cfg, "stop_margin", 0.0))
    every_s = float(getattr(cfg, "checkpoint_every_s", 0.0))
    loop: dict[str, Any] = {
        "step": 0, "curves": [], "best": None, "best_step": 0, "best_passes": 0,
        "since_best": 0, "test": {}, "test_evals": 0, "passes": 0, "backward": 0,
        "running": {"loss": 0.0, "task": 0.0, "consistency": 0.0, "n": 0}, "elapsed": 0.0,
    }
    saved = load_checkpoint(checkpoint) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        load_step_state(step_fn, saved["step_fn"])
        batches.load_state_dict(saved["batches"])
        set_rng_state(saved["rng"])
        loop = saved["loop"]
    meter = ComputeMeter(model)  # fb_equivalents of every step (rdrop_experiments.compute)
    meter.load_state_dict(loop.setdefault("compute", meter.state_dict()))
    stop_reason = "max_steps"
    start = time.perf_counter() - loop["elapsed"]
    last_save = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=loop["step"], desc=label, leave=False,
               disable=not progress, dynamic_ncols=True)
    running = loop["running"]
    step = loop["step"]
    branch_seed = getattr(cfg, "branch_seed", None)
    if branch_seed is not None and batches is None:
        raise ValueError("branch_seed needs batches= (the BatchCycle behind next_batch) to "
                         "reseed the batch order at the branch.")
    for step in range(loop["step"] + 1, cfg.max_steps + 1):
        model.train()
        if branch_seed is not None and step == cfg.branch_step + 1:  # the branch: a new seed
            torch.manual_seed(branch_seed)
            random.seed(branch_seed)
            batches.reseed(branch_seed)  # type: ignore[union-attr]
        args, target = next_batch()
        out = step_fn(*args, target=target)
        loss_value = out.loss.item()
        diverged = not math.isfinite(loss_value)
        if not diverged:  # a non-finite loss: no update; one last evaluation point, then stop
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            scheduler.step()
            grad, no_grad = step_passes_of(step_fn, step_cost(cfg, method, batch_size, step - 1))
            meter.add(args, target, passes=(grad, no_grad))
            loop["passes"] += grad + no_grad
            loop["backward"] += grad
        running["loss"] += loss_value
        running["task"] += out.task_loss.item()
        running["consistency"] += out.consistency_loss.item()
        running["n"] += 1
        bar.update(1)
        capped = cap > 0 and loop["passes"] >= cap
        if step % eval_every and not capped and step != cfg.max_steps and not diverged:
            continue
        train = evaluate("train")
        valid = dict(evaluate("valid"))
        if metric not in valid:
            raise KeyError(f"evaluate('valid') returned no {metric!r}; got {sorted(valid)}.")
        value = float(valid[metric])
        if is_better(value, loop["best"], higher_is_better):
            loop.update(best=value, best_step=step, best_passes=loop["passes"], since_best=0)
            loop["test"] = {k: float(v) for k, v in evaluate("test").items()}
            loop["test_evals"] += 1
        else:
            loop["since_best"] += 1
        if hasattr(step_fn, "observe_validation") and step_fn.observe_validation(
                value, step, higher_is_better):
            loop["since_best"] = 0  # R-Drop switched on (automatic start): patience restarts
        if diverged and loop["best"] is None:  # never a valid point: the result is this one
            loop.update(best_step=step, best_passes=loop["passes"])
            loop["test"] = {k: float(v) for k, v in evaluate("test").items()}
            loop["test_evals"] += 1
        n = running["n"]
        best = loop["best"]
        loop["curves"].append({
            "step": step, "epoch": step * batch_size / max(1, n_train),
            "sample_passes": loop["passes"], "backward_passes": loop["backward"],
            **meter.point(), "train_loss": float(train.get("loss", math.nan)),
            **{f"train_{k}": float(v) for k, v in train.items() if k != "loss"},
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            "best_valid": float(best) if best is not None else math.nan,
            "best_step": loop["best_step"],
            **{f"test_{k}": v for k, v in loop["test"].items()},
            "train_objective": running["loss"] / n, "train_task_loss": running["task"] / n,
            "train_consistency": running["consistency"] / n,
            "wall_s": round(time.perf_counter() - start, 2),
        })
        running = loop["running"] = {"loss": 0.0, "task": 0.0, "consistency": 0.0, "n": 0}
        loop["compute"] = meter.state_dict()
        bar.set_postfix(valid=f"{value:.4g}", best=f"{best:.4g}" if best else "")
        if diverged:
            stop_reason = "diverged"
            break
        if (patience and loop["since_best"] >= patience
                and passed_optimum(value, float(best) if best is not None else math.nan,
                                   margin, higher_is_better)):
            stop_reason = "patience"
            break
        if capped:
            stop_reason = "compute_cap"
            break
        if checkpoint is not None and time.perf_counter() - last_save >= every_s:
            loop["step"], loop["elapsed"] = step, time.perf_counter() - start
            save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step_fn": step_state(step_fn),
                "batches": batches.state_dict(), "rng": rng_state(), "loop": loop})
            last_save = time.perf_counter()
    bar.close()
    best = loop["best"]
    return ProtocolOutcome(curves=loop["curves"], best_step=loop["best_step"],
                           best_sample_passes=loop["best_passes"],
                           best_valid=float(best) if best is not None else math.nan,
                           test=loop["test"], stop_reason=stop_reason, steps=step,
                           sample_passes=loop["passes"], test_evaluations=loop["test_evals"],
                           selection_metric=f"valid_{metric}",
                           selection_higher_is_better=higher_is_better,
                           compute={**meter.record_fields(),
                                    **getattr(step_fn, "record_fields", dict)()})


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

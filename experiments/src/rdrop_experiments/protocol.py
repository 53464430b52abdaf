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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from rdrop.schedule import rdrop_step

__all__ = ["ProtocolOutcome", "is_better", "protocol_grid", "quality_at_compute", "step_cost",
           "train_until_patience"]

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
        stop_reason: ``"patience"``, ``"compute_cap"`` or ``"max_steps"``.
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

    def record_fields(self) -> dict[str, Any]:
        """The protocol's fields for a run record (``selection``, ``best_step``, ...)."""
        return {"selection": "best_valid", "best_step": self.best_step,
                "best_sample_passes": self.best_sample_passes, "best_valid": self.best_valid,
                "stop_reason": self.stop_reason, "steps": self.steps,
                "sample_passes": self.sample_passes, "test_evaluations": self.test_evaluations,
                "selection_metric": self.selection_metric,
                "selection_higher_is_better": self.selection_higher_is_better}


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
) -> ProtocolOutcome:
    r"""Train one arm until its validation ``metric`` stalls; test at the best-valid checkpoint.

    Loop: take ``next_batch() -> (args, target)``, ``out = step_fn(*args, target=target)``,
    ``out.loss.backward()``, optional gradient clipping, ``optimizer.step()``,
    ``scheduler.step()``. Every ``cfg.eval_every`` steps (and when a stop condition is met):
    ``evaluate("train")`` and ``evaluate("valid")``; if ``valid[metric]`` is strictly better
    than every earlier value, ``evaluate("test")`` on the current weights. Stop when the
    validation metric has not improved for ``cfg.patience`` evaluation points (``0`` = never on
    patience), when the sample passes reach ``cfg.max_sample_passes`` (``0`` = no cap), or at
    ``cfg.max_steps``.

    Args:
        cfg: the run's config (``eval_every``, ``patience``, ``max_sample_passes``,
            ``max_steps``, ``num_passes``, ``every_k_steps``).
        method: the arm (charges compute, see :func:`step_cost`).
        model: put in train mode before each step (``evaluate`` may switch it to eval).
        step_fn: the arm's loss (:class:`rdrop_experiments.training.TrainStep`).
        optimizer, scheduler: stepped once per optimizer step.
        next_batch: returns ``(args, target)`` for the next training batch.
        batch_size: samples per step before duplication (for the compute count).
        n_train: training examples (for ``epoch`` on the curves).
        evaluate: ``evaluate(split) -> {name: value}`` for ``"train"``, ``"valid"``, ``"test"``;
            the ``"valid"`` dict must contain ``metric``.
        metric: the validation metric that selects the checkpoint.
        higher_is_better: its direction.
        clip_norm: max gradient norm (None = no clipping).
        progress, label: tqdm bar.

    Returns:
        :class:`ProtocolOutcome`.

    Raises:
        KeyError: ``evaluate("valid")`` lacks ``metric``.
    """
    from rdrop_experiments.progress import progress_bar as tqdm  # plain lines in a log

    cap = int(getattr(cfg, "max_sample_passes", 0))
    patience = int(getattr(cfg, "patience", 0))
    curves: list[dict[str, float]] = []
    best: float | None = None
    best_step = best_passes = since_best = 0
    test: dict[str, float] = {}
    test_evals = 0
    passes = backward = 0
    running = {"loss": 0.0, "task": 0.0, "consistency": 0.0, "n": 0}
    stop_reason = "max_steps"
    start = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, desc=label, leave=False, disable=not progress,
               dynamic_ncols=True)
    for step in range(1, cfg.max_steps + 1):
        model.train()
        args, target = next_batch()
        out = step_fn(*args, target=target)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        scheduler.step()
        fwd, bwd = step_cost(cfg, method, batch_size, step - 1)
        passes += fwd
        backward += bwd
        running["loss"] += out.loss.item()
        running["task"] += out.task_loss.item()
        running["consistency"] += out.consistency_loss.item()
        running["n"] += 1
        bar.update(1)
        capped = cap > 0 and passes >= cap
        if step % cfg.eval_every and not capped and step != cfg.max_steps:
            continue
        train = evaluate("train")
        valid = dict(evaluate("valid"))
        if metric not in valid:
            raise KeyError(f"evaluate('valid') returned no {metric!r}; got {sorted(valid)}.")
        if is_better(float(valid[metric]), best, higher_is_better):
            best, best_step, best_passes, since_best = float(valid[metric]), step, passes, 0
            test = {k: float(v) for k, v in evaluate("test").items()}
            test_evals += 1
        else:
            since_best += 1
        n = running["n"]
        curves.append({
            "step": step, "epoch": step * batch_size / max(1, n_train),
            "sample_passes": passes, "backward_passes": backward,
            "train_loss": float(train.get("loss", math.nan)),
            **{f"train_{k}": float(v) for k, v in train.items() if k != "loss"},
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            "best_valid": float(best) if best is not None else math.nan,
            "best_step": best_step,
            **{f"test_{k}": v for k, v in test.items()},
            "train_objective": running["loss"] / n, "train_task_loss": running["task"] / n,
            "train_consistency": running["consistency"] / n,
            "wall_s": round(time.perf_counter() - start, 2),
        })
        running = {"loss": 0.0, "task": 0.0, "consistency": 0.0, "n": 0}
        bar.set_postfix(valid=f"{valid[metric]:.4g}", best=f"{best:.4g}" if best else "")
        if patience and since_best >= patience:
            stop_reason = "patience"
            break
        if capped:
            stop_reason = "compute_cap"
            break
    bar.close()
    return ProtocolOutcome(curves=curves, best_step=best_step, best_sample_passes=best_passes,
                           best_valid=float(best) if best is not None else math.nan, test=test,
                           stop_reason=stop_reason, steps=step, sample_passes=passes,
                           test_evaluations=test_evals, selection_metric=f"valid_{metric}",
                           selection_higher_is_better=higher_is_better)


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

r"""When R-Drop starts, chosen from validation values: the start rules.

A start rule trains plainly and switches R-Drop on at an evaluation, reading only the validation
metric. Call ``rule.update(value, step=s)`` after every validation (``s`` = optimizer steps so
far); from the evaluation that fires, :attr:`start_step` is ``s`` and R-Drop runs from the next
optimizer step. Two rules:

* :class:`PlateauStart` (**the recommended rule**): on the baseline's plateau, *before* its
  validation optimum. With ``b_i`` the best value after evaluation ``i`` (oriented so that lower
  is better) and ``b_0`` the first value,

  .. math::
      \text{fire at the first } i \ge W \text{ with }
      b_{i-W} - b_i \;\le\; q \, (b_0 - b_i) \quad\text{and}\quad b_0 - b_i > 0,

  i.e. the improvement over the last ``W`` evaluations is at most a fraction ``q`` of the
  improvement so far. The registered parameters (``W = 3``, ``q = 0.25``) were chosen on the
  committed baseline curves of the second protocol (``scripts/design_plateau_rule.py``;
  registered in docs/EXPERIMENTS.md before any run that uses them).
* :class:`AutoStart`: after ``patience`` evaluations without a better value, i.e. *after* the
  optimum. Measured: it starts too late to pay (docs/EXPERIMENTS.md); kept for comparison.

:func:`plateau_step` applies :class:`PlateauStart` to a finished run's validation curve (post
hoc; the same code). Both rules log one line (logger ``"rdrop"``, INFO) when they fire and why,
and their state (``state_dict``) is plain numbers, so a resumed run fires at the same step.
:class:`rdrop.Schedule` takes either as its ``start``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Protocol, runtime_checkable

from rdrop.losses.checks import check_positive_int

__all__ = ["PLATEAU_FRACTION", "PLATEAU_WINDOW", "AutoStart", "PlateauStart", "StartRule",
           "plateau_step"]

logger = logging.getLogger("rdrop")

# The registered plateau rule (docs/EXPERIMENTS.md, "Plateau start"): chosen on the second
# protocol's baseline curves only, before any run that uses it.
PLATEAU_WINDOW = 3
PLATEAU_FRACTION = 0.25


@runtime_checkable
class StartRule(Protocol):
    """What :class:`rdrop.Schedule` needs of a start rule."""

    start_step: int | None
    higher_is_better: bool

    def update(self, value: float, *, step: int) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_direction(higher_is_better: object) -> bool:
    if not isinstance(higher_is_better, bool):
        raise TypeError(
            f"higher_is_better must be a bool, got {type(higher_is_better).__name__}.")
    return higher_is_better


def _check_value(value: object, step: object) -> tuple[float, int]:
    step = check_positive_int("step", step, 0)  # type: ignore[arg-type]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"value must be a number (the validation metric), got "
                        f"{type(value).__name__}; pass float(metric).")
    return float(value), step


class AutoStart:
    """Switch R-Drop on after ``patience`` evaluations without a better validation metric.

    A value is *better* when it beats the best so far by more than ``min_delta`` (NaN never
    does). This rule fires after the validation optimum; :class:`PlateauStart` fires before it.

    Args:
        patience: evaluations without improvement before R-Drop starts (``>= 1``).
        higher_is_better: the metric's direction (``False`` for a loss or perplexity).
        min_delta: the margin an improvement must exceed (``>= 0``).

    Raises:
        TypeError, ValueError: a non-int or ``< 1`` patience, a negative ``min_delta``.

    Example:
        >>> auto = AutoStart(patience=2)
        >>> [auto.update(loss, step=100 * i) for i, loss in enumerate([3.0, 2.5, 2.6, 2.55])]
        [False, False, False, True]
        >>> auto.start_step
        300
        >>> restored = AutoStart(patience=2)
        >>> restored.load_state_dict(auto.state_dict())
        >>> restored.start_step, restored.best
        (300, 2.5)
    """

    def __init__(self, patience: int = 2, *, higher_is_better: bool = False,
                 min_delta: float = 0.0) -> None:
        self.patience = check_positive_int("patience", patience, 1)
        self.higher_is_better = _check_direction(higher_is_better)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
            math.isfinite(min_delta) and min_delta >= 0
        ):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}.")
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.start_step: int | None = None

    @property
    def started(self) -> bool:
        """Whether R-Drop has been switched on."""
        return self.start_step is not None

    def update(self, value: float, *, step: int) -> bool:
        """Record one validation value measured after ``step`` optimizer steps.

        Returns:
            ``True`` exactly at the call that switches R-Drop on (then :attr:`start_step` is
            ``step``); ``False`` before and after.

        Raises:
            TypeError, ValueError: ``step`` not an int ``>= 0``; ``value`` not a number.
        """
        value, step = _check_value(value, step)
        if self.started:
            return False
        if self._better(value):
            self.best, self.best_step, self.since_best = value, step, 0
            return False
        self.since_best += 1
        if self.since_best < self.patience:
            return False
        self.start_step = step
        logger.info(
            "rdrop: validation has not improved for %d evaluation(s) (best %.6g at optimizer "
            "step %s); R-Drop on from optimizer step %d.",
            self.patience, math.nan if self.best is None else self.best, self.best_step, step)
        return True

    def _better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.higher_is_better:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def state_dict(self) -> dict[str, Any]:
        """The progress so far, as plain numbers (JSON-safe; the settings are not included)."""
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best,
                "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            KeyError: a missing field.
        """
        self.best = None if state["best"] is None else float(state["best"])
        self.best_step = None if state["best_step"] is None else int(state["best_step"])
        self.since_best = int(state["since_best"])
        self.start_step = None if state["start_step"] is None else int(state["start_step"])

    def __repr__(self) -> str:
        return (f"AutoStart(patience={self.patience}, higher_is_better={self.higher_is_better}, "
                f"min_delta={self.min_delta}, start_step={self.start_step})")


class PlateauStart:
    r"""Switch R-Drop on where validation reaches its plateau, before its optimum.

    With ``b_i`` the best validation value after evaluation ``i`` (lower is better after
    orienting by ``higher_is_better``; NaN never improves, NaNs before the first finite value
    are skipped) and ``b_0`` the first value, the rule fires at the first evaluation ``i >= W``
    where

    .. math::
        b_{i-W} - b_i \le q\,(b_0 - b_i), \qquad b_0 - b_i > 0 .

    Args:
        window: ``W >= 1``, the evaluations the recent improvement is measured over.
        fraction: ``0 < q < 1``, the share of the improvement so far below which the curve is
            on its plateau.
        higher_is_better: the metric's direction (``False`` for a loss or perplexity).

    Raises:
        TypeError, ValueError: a non-int or ``< 1`` window, a fraction outside ``(0, 1)``.

    Example:
        >>> rule = PlateauStart(window=2, fraction=0.2)
        >>> curve = [10.0, 6.0, 4.0, 3.5, 3.3, 3.2]
        >>> [rule.update(v, step=10 * i) for i, v in enumerate(curve)]
        [False, False, False, False, True, False]
        >>> rule.start_step
        40
    """

    def __init__(self, window: int = PLATEAU_WINDOW, fraction: float = PLATEAU_FRACTION, *,
                 higher_is_better: bool = False) -> None:
        self.window = check_positive_int("window", window, 1)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
            0.0 < fraction < 1.0
        ):
            raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r} (the "
                             f"registered rule uses {PLATEAU_FRACTION}).")
        self.fraction = float(fraction)
        self.higher_is_better = _check_direction(higher_is_better)
        self.bests: list[float] = []  # oriented running best after each evaluation
        self.start_step: int | None = None

    @property
    def started(self) -> bool:
        """Whether R-Drop has been switched on."""
        return self.start_step is not None

    def update(self, value: float, *, step: int) -> bool:
        """Record one validation value measured after ``step`` optimizer steps.

        Returns:
            ``True`` exactly at the call that switches R-Drop on; ``False`` before and after.

        Raises:
            TypeError, ValueError: ``step`` not an int ``>= 0``; ``value`` not a number.
        """
        value, step = _check_value(value, step)
        if self.started:
            return False
        oriented = -value if self.higher_is_better else value
        if not self.bests:
            if not math.isnan(oriented):
                self.bests.append(oriented)
            return False
        best = self.bests[-1] if math.isnan(oriented) else min(self.bests[-1], oriented)
        self.bests.append(best)
        i = len(self.bests) - 1
        if i < self.window:
            return False
        recent, total = self.bests[i - self.window] - best, self.bests[0] - best
        if total <= 0 or recent > self.fraction * total:
            return False
        self.start_step = step
        logger.info(
            "rdrop: validation is on its plateau at optimizer step %d: it improved %.4g over "
            "the last %d evaluations, %.1f%% of its %.4g improvement so far (rule: <= %.0f%%); "
            "R-Drop on from optimizer step %d.",
            step, recent, self.window, 100 * recent / total, total, 100 * self.fraction, step)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The progress so far, as plain numbers (JSON-safe; the settings are not included)."""
        return {"bests": list(self.bests), "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            KeyError: a missing field.
        """
        self.bests = [float(b) for b in state["bests"]]
        self.start_step = None if state["start_step"] is None else int(state["start_step"])

    def __repr__(self) -> str:
        return (f"PlateauStart(window={self.window}, fraction={self.fraction}, "
                f"higher_is_better={self.higher_is_better}, start_step={self.start_step})")


def plateau_step(values: Sequence[float], steps: Sequence[int], *,
                 window: int = PLATEAU_WINDOW, fraction: float = PLATEAU_FRACTION,
                 higher_is_better: bool = False) -> int | None:
    """:class:`PlateauStart` over a finished run's validation curve (post hoc, the same code).

    Args:
        values: the validation metric at each evaluation, in order.
        steps: the optimizer step of each evaluation (same length, increasing).
        window, fraction, higher_is_better: as :class:`PlateauStart`.

    Returns:
        The optimizer step at which the rule fires, or ``None`` when the curve has not reached
        its plateau yet (train on, or raise ``fraction``).

    Raises:
        ValueError: ``values`` and ``steps`` of different lengths, or steps not increasing.

    Example:
        >>> plateau_step([10.0, 6.0, 4.0, 3.5, 3.3, 3.2], [10, 20, 30, 40, 50, 60],
        ...              window=2, fraction=0.2)
        50
    """
    if len(values) != len(steps):
        raise ValueError(f"values and steps must have one entry per evaluation, got "
                         f"{len(values)} values and {len(steps)} steps.")
    if any(b <= a for a, b in pairwise(steps)):
        raise ValueError("steps must be strictly increasing (one evaluation per step).")
    rule = PlateauStart(window, fraction, higher_is_better=higher_is_better)
    for value, step in zip(values, steps, strict=True):
        if rule.update(float(value), step=int(step)):
            return rule.start_step
    return None

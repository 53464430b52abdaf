r"""Start R-Drop when validation stops improving: ``AutoStart``, a helper for any training loop.

Early in training the second pass buys little: R-Drop's validation curve lags the baseline's
until the baseline begins to overfit. ``AutoStart`` trains plainly and switches R-Drop on once
the validation metric has not improved for ``patience`` evaluations:

.. math::
    s^\ast = \text{the optimizer step of the first evaluation at which the metric has not
    improved on its best for } \text{patience} \text{ evaluations in a row}

and from then on the schedule is :func:`rdrop.schedule.rdrop_step` with ``start_step = s*``
(``every_k_steps`` and the alpha warm-up count from ``s*``). Only validation values are read.
One log line (logger ``"rdrop"``, level INFO) says when it switched. The state
(:meth:`AutoStart.state_dict`) is plain numbers, so a resumed run switches at the same step.

The Hugging Face trainers take the same helper as a callback
(:class:`rdrop.integrations.hf.RDropAutoStartCallback`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from rdrop.checks import check_positive_int
from rdrop.schedule import RDropStep, rdrop_step

__all__ = ["AutoStart", "scheduled_step"]

logger = logging.getLogger("rdrop")


class AutoStart:
    """Switch R-Drop on after ``patience`` evaluations without a better validation metric.

    Call :meth:`update` after every validation with the metric and the number of optimizer
    steps taken so far. Before the switch :attr:`start_step` is ``None`` (R-Drop off); from the
    evaluation that exhausts the patience on, it is that step, and R-Drop runs from the next
    optimizer step. A value is *better* when it beats the best so far by more than
    ``min_delta`` (NaN never does).

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
        if not isinstance(higher_is_better, bool):
            raise TypeError(
                f"higher_is_better must be a bool, got {type(higher_is_better).__name__}.")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
            math.isfinite(min_delta) and min_delta >= 0
        ):
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}.")
        self.higher_is_better = higher_is_better
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
        step = check_positive_int("step", step, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"value must be a number (the validation metric), got "
                            f"{type(value).__name__}; pass float(metric).")
        if self.started:
            return False
        value = float(value)
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


def scheduled_step(optimizer_step: int, *, alpha: float, every_k_steps: int = 1,
                   alpha_warmup_steps: int = 0, start_step: int | AutoStart = 0) -> RDropStep:
    """:func:`rdrop.schedule.rdrop_step` with ``start_step`` an int or an :class:`AutoStart`
    (inactive until it has switched, then ``start_step = auto.start_step``).

    Example:
        >>> auto = AutoStart(patience=1)
        >>> scheduled_step(5, alpha=1.0, start_step=auto).active
        False
        >>> auto.update(1.0, step=0), auto.update(1.5, step=4)
        (False, True)
        >>> scheduled_step(5, alpha=1.0, start_step=auto).active
        True
    """
    if isinstance(start_step, AutoStart):
        if start_step.start_step is None:
            return RDropStep(active=False, alpha=0.0)
        start_step = start_step.start_step
    return rdrop_step(optimizer_step, alpha=alpha, every_k_steps=every_k_steps,
                      alpha_warmup_steps=alpha_warmup_steps, start_step=start_step)

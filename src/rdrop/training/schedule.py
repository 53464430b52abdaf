r"""When R-Drop runs and with which alpha: one pure function of the optimizer step.

The wrapper, the Hugging Face trainers, the Lightning recipe and the experiment harness each
build one :class:`Schedule` from their own arguments and ask it :meth:`Schedule.decision` at
every step, so ``start`` (a step or a start rule), ``every_k_steps`` and the alpha warm-up mean
the same thing everywhere and are checked once, at construction. The step is the *optimizer*
step (the number of ``optimizer.step()`` calls before
the current one), not the number of forward calls: under gradient accumulation every micro-batch
of one optimizer step gets the same decision, so R-Drop never runs on only part of a step.

With ``t = s - start_step`` the steps since R-Drop started:

Options about *when* R-Drop runs belong here; how a step runs its passes once decided is
:mod:`rdrop.training.step`.

.. math::
    \text{active}(s) = [\, t \ge 0 \ \text{and}\ t \bmod k = 0 \,], \qquad
    \alpha(s) = \alpha \cdot \min\!\left(1, \frac{t + 1}{n}\right) \ (n > 0), \quad
    \alpha(s) = \alpha \ (n = 0)

Both ``every_k_steps`` and the warm-up count from ``start_step``: the first R-Drop step is
``start_step`` itself, and alpha ramps up from there (a warm-up that had already elapsed during
the plain steps would switch the full consistency term on at once, which is what the warm-up is
there to avoid).

**The loss scale at the switch.** Before ``start_step`` the loss is one pass's task loss
(:func:`rdrop.losses.functional.single_pass_loss`, e.g. the per-token CE ``L``). From ``start_step``
on it is R-Drop's ``CE(P1) + CE(P2) + alpha * D``: the task term sums two passes, so the logged
loss jumps to about ``2L + alpha * D`` and the task gradient doubles in expectation (each pass
contributes one CE gradient; the same happens on the off-steps of ``every_k_steps``). Nothing
is rescaled: the steps before ``start_step`` are exactly the baseline's, so a run with
``start_step = s`` is a baseline run up to ``s``. Adam-type optimizers normalize the gradient
scale within a few steps; with SGD the switch acts like doubling the learning rate of the task
term. Compare ``task_loss / passes`` (the wrappers log it) with a validation loss across the
switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rdrop.losses.checks import check_alpha, check_positive_int
from rdrop.training.autostart import StartRule

__all__ = ["RDropStep", "Schedule", "rdrop_step"]

@dataclass(frozen=True)
class RDropStep:
    """The decision for one optimizer step: run R-Drop (``active``) and with which ``alpha``."""

    active: bool
    alpha: float


_OFF = RDropStep(active=False, alpha=0.0)


@dataclass(frozen=True)
class Schedule:
    r"""When R-Drop runs and with which alpha, validated once: ``decision(s)`` at each step.

    ``start`` is the first optimizer step with R-Drop (an int), or a start rule
    (:class:`rdrop.PlateauStart`, :class:`rdrop.AutoStart`) fed the
    validation values through :meth:`observe`. A rule that fires at an evaluation made after
    ``s*`` optimizer steps sets ``start_step = s*``: the next optimizer step is the first with
    R-Drop. Before that every step is the plain single-pass step. See the module docstring for
    the formula and the loss scale at the switch.

    Args:
        alpha: the target consistency weight (``>= 0``).
        every_k_steps: ``k >= 1``, counted from the start.
        alpha_warmup_steps: ``n >= 0`` (0 = no warm-up), counted from the start.
        start: an int ``>= 0`` or a start rule.

    Raises:
        TypeError, ValueError: a negative or non-finite alpha, ``k < 1``, ``n < 0``, a start
            that is neither an int ``>= 0`` nor a start rule.

    Example:
        >>> from rdrop.training.autostart import PlateauStart
        >>> s = Schedule(alpha=2.0, start=PlateauStart(window=1, fraction=0.5))
        >>> s.decision(0).active
        False
        >>> s.observe(4.0, step=5), s.observe(2.0, step=10), s.observe(1.9, step=20)
        (False, False, True)
        >>> s.decision(20)
        RDropStep(active=True, alpha=2.0)
        >>> s.start_step
        20
    """

    alpha: float
    every_k_steps: int = 1
    alpha_warmup_steps: int = 0
    start: int | StartRule = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        check_positive_int("every_k_steps", self.every_k_steps, 1)
        check_positive_int("alpha_warmup_steps", self.alpha_warmup_steps, 0)
        if not isinstance(self.start, StartRule):
            if isinstance(self.start, bool) or not isinstance(self.start, int):
                raise TypeError(
                    f"start_step must be an int (the first R-Drop optimizer step) or a start rule "
                    f"(rdrop.PlateauStart(), rdrop.AutoStart()), got {self.start!r}.")
            check_positive_int("start_step", self.start, 0)

    @property
    def rule(self) -> StartRule | None:
        """The start rule, or ``None`` for a fixed start step."""
        return None if isinstance(self.start, int) else self.start

    @property
    def start_step(self) -> int | None:
        """The first R-Drop optimizer step; ``None`` while a start rule has not fired."""
        return self.start if isinstance(self.start, int) else self.start.start_step

    def decision(self, optimizer_step: int) -> RDropStep:
        """R-Drop's decision at optimizer step ``optimizer_step`` (0-based, trusted: an int).

        Example:
            >>> [Schedule(1.0, every_k_steps=2).decision(s).active for s in range(4)]
            [True, False, True, False]
        """
        start = self.start_step
        if start is None:
            return _OFF
        since_start = optimizer_step - start
        if since_start < 0 or since_start % self.every_k_steps:
            return _OFF
        alpha = self.alpha
        if self.alpha_warmup_steps:
            alpha = alpha * min(1.0, (since_start + 1) / self.alpha_warmup_steps)
        return RDropStep(active=True, alpha=float(alpha))

    def observe(self, value: float, *, step: int) -> bool:
        """Feed one validation value (after ``step`` optimizer steps) to the start rule.

        Returns:
            ``True`` exactly when the rule fires; always ``False`` for a fixed start step.
        """
        rule = self.rule
        return False if rule is None else rule.update(value, step=step)

    def state_dict(self) -> dict[str, Any]:
        """The start rule's progress (plain numbers; empty for a fixed start step)."""
        rule = self.rule
        return {} if rule is None else {"start_rule": rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (a no-op without a start rule)."""
        rule = self.rule
        if rule is not None and "start_rule" in state:
            rule.load_state_dict(state["start_rule"])


def rdrop_step(
    optimizer_step: int,
    *,
    alpha: float,
    every_k_steps: int = 1,
    alpha_warmup_steps: int = 0,
    start_step: int = 0,
) -> RDropStep:
    r"""R-Drop's decision at optimizer step ``s`` (0-based): :meth:`Schedule.decision` of a
    schedule built (and checked) for this one call.

    Before ``start_step`` every step is a plain single-pass step. From ``start_step`` on, with
    ``t = s - start_step``, R-Drop is active on every ``k``-th step (``t mod k == 0``; the others
    are plain single-pass steps), and alpha ramps linearly from ``alpha / n`` at ``t = 0`` to
    ``alpha`` at ``t = n - 1`` when ``alpha_warmup_steps = n > 0``:
    ``alpha(s) = alpha * min(1, (t + 1) / n)``. See the module docstring for the loss scale at
    the switch.

    Args:
        optimizer_step: optimizer steps taken before the current one (``>= 0``).
        alpha: the target consistency weight (``>= 0``).
        every_k_steps: ``k >= 1``, counted from ``start_step``.
        alpha_warmup_steps: ``n >= 0`` (0 = no warm-up), counted from ``start_step``.
        start_step: the first optimizer step with R-Drop (``>= 0``; 0 = from the start).

    Returns:
        :class:`RDropStep` ``(active, alpha)``; ``alpha`` is 0.0 when not active.

    Raises:
        TypeError, ValueError: a non-integer or negative step or ``start_step``, ``k < 1`` or
            ``n < 0``.

    Example:
        >>> [rdrop_step(s, alpha=1.0, every_k_steps=2).active for s in range(4)]
        [True, False, True, False]
        >>> [rdrop_step(s, alpha=1.0, alpha_warmup_steps=4).alpha for s in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
        >>> [rdrop_step(s, alpha=1.0, start_step=2, alpha_warmup_steps=2).alpha for s in range(5)]
        [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    check_positive_int("optimizer_step", optimizer_step, 0)
    return Schedule(alpha, every_k_steps, alpha_warmup_steps, start_step).decision(optimizer_step)

r"""When R-Drop runs and with which alpha: one pure function of the optimizer step.

The wrapper, the Hugging Face trainers, the Lightning recipe and the experiment harness all
ask this module, so ``every_k_steps`` and the alpha warm-up mean the same thing everywhere.
The step is the *optimizer* step (the number of ``optimizer.step()`` calls before the current
one), not the number of forward calls: under gradient accumulation every micro-batch of one
optimizer step gets the same decision, so R-Drop never runs on only part of a step.

Options about *when* R-Drop runs belong here; how a step runs its passes once decided is
:mod:`rdrop.step`.

.. math::
    \text{active}(s) = [\, s \bmod k = 0 \,], \qquad
    \alpha(s) = \alpha \cdot \min\!\left(1, \frac{s + 1}{n}\right) \ (n > 0), \quad
    \alpha(s) = \alpha \ (n = 0)
"""

from __future__ import annotations

from dataclasses import dataclass

from rdrop.argchecks import check_positive_int

__all__ = ["RDropStep", "rdrop_step"]


@dataclass(frozen=True)
class RDropStep:
    """The decision for one optimizer step: run R-Drop (``active``) and with which ``alpha``."""

    active: bool
    alpha: float


def rdrop_step(
    optimizer_step: int, *, alpha: float, every_k_steps: int = 1, alpha_warmup_steps: int = 0
) -> RDropStep:
    r"""R-Drop's decision at optimizer step ``s`` (0-based).

    R-Drop is active on every ``k``-th optimizer step (``s mod k == 0``; the others are plain
    single-pass steps), and alpha ramps linearly from ``alpha / n`` at step 0 to ``alpha`` at
    step ``n - 1`` when ``alpha_warmup_steps = n > 0``:
    ``alpha(s) = alpha * min(1, (s + 1) / n)``.

    Args:
        optimizer_step: optimizer steps taken before the current one (``>= 0``); every
            micro-batch of one accumulated step passes the same value.
        alpha: the target consistency weight (``>= 0``).
        every_k_steps: ``k >= 1``.
        alpha_warmup_steps: ``n >= 0`` (0 = no warm-up).

    Returns:
        :class:`RDropStep` ``(active, alpha)``; ``alpha`` is 0.0 when not active.

    Raises:
        TypeError, ValueError: a non-integer or negative step, ``k < 1`` or ``n < 0``.

    Example:
        >>> [rdrop_step(s, alpha=1.0, every_k_steps=2).active for s in range(4)]
        [True, False, True, False]
        >>> [rdrop_step(s, alpha=1.0, alpha_warmup_steps=4).alpha for s in range(5)]
        [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    check_positive_int("optimizer_step", optimizer_step, 0)
    check_positive_int("every_k_steps", every_k_steps, 1)
    check_positive_int("alpha_warmup_steps", alpha_warmup_steps, 0)
    if optimizer_step % every_k_steps != 0:
        return RDropStep(active=False, alpha=0.0)
    if alpha_warmup_steps:
        alpha = alpha * min(1.0, (optimizer_step + 1) / alpha_warmup_steps)
    return RDropStep(active=True, alpha=float(alpha))

r"""When R-Drop runs and with which alpha: one pure function of the optimizer step.

The wrapper, the Hugging Face trainers, the Lightning recipe and the experiment harness all
ask this module, so ``start_step``, ``every_k_steps`` and the alpha warm-up mean the same thing
everywhere. The step is the *optimizer* step (the number of ``optimizer.step()`` calls before
the current one), not the number of forward calls: under gradient accumulation every micro-batch
of one optimizer step gets the same decision, so R-Drop never runs on only part of a step.

With ``t = s - start_step`` the steps since R-Drop started:

Options about *when* R-Drop runs belong here; how a step runs its passes once decided is
:mod:`rdrop.step`.

.. math::
    \text{active}(s) = [\, t \ge 0 \ \text{and}\ t \bmod k = 0 \,], \qquad
    \alpha(s) = \alpha \cdot \min\!\left(1, \frac{t + 1}{n}\right) \ (n > 0), \quad
    \alpha(s) = \alpha \ (n = 0)

Both ``every_k_steps`` and the warm-up count from ``start_step``: the first R-Drop step is
``start_step`` itself, and alpha ramps up from there (a warm-up that had already elapsed during
the plain steps would switch the full consistency term on at once, which is what the warm-up is
there to avoid).

**The loss scale at the switch.** Before ``start_step`` the loss is one pass's task loss
(:func:`rdrop.functional.single_pass_loss`, e.g. the per-token CE ``L``). From ``start_step``
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

from rdrop.checks import check_positive_int

__all__ = ["RDropStep", "rdrop_step"]


@dataclass(frozen=True)
class RDropStep:
    """The decision for one optimizer step: run R-Drop (``active``) and with which ``alpha``."""

    active: bool
    alpha: float


def rdrop_step(
    optimizer_step: int,
    *,
    alpha: float,
    every_k_steps: int = 1,
    alpha_warmup_steps: int = 0,
    start_step: int = 0,
) -> RDropStep:
    r"""R-Drop's decision at optimizer step ``s`` (0-based).

    Before ``start_step`` every step is a plain single-pass step. From ``start_step`` on, with
    ``t = s - start_step``, R-Drop is active on every ``k``-th step (``t mod k == 0``; the others
    are plain single-pass steps), and alpha ramps linearly from ``alpha / n`` at ``t = 0`` to
    ``alpha`` at ``t = n - 1`` when ``alpha_warmup_steps = n > 0``:
    ``alpha(s) = alpha * min(1, (t + 1) / n)``. See the module docstring for the loss scale at
    the switch.

    Args:
        optimizer_step: optimizer steps taken before the current one (``>= 0``); every
            micro-batch of one accumulated step passes the same value.
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
    check_positive_int("every_k_steps", every_k_steps, 1)
    check_positive_int("alpha_warmup_steps", alpha_warmup_steps, 0)
    check_positive_int("start_step", start_step, 0)
    since_start = optimizer_step - start_step
    if since_start < 0 or since_start % every_k_steps != 0:
        return RDropStep(active=False, alpha=0.0)
    if alpha_warmup_steps:
        alpha = alpha * min(1.0, (since_start + 1) / alpha_warmup_steps)
    return RDropStep(active=True, alpha=float(alpha))

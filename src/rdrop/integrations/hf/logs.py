"""Windowed logging of the loss parts, averaged like the Trainer's own ``loss``.

The Trainer logs ``loss`` averaged over the optimizer steps since its last log. Beside it the
trainers log, averaged the same way:

* ``task_loss``: the task term summed over the passes (``loss = task_loss + alpha *
  consistency_loss`` on R-Drop steps), so about ``m`` times one pass's cross-entropy;
* ``consistency_loss``: the divergence between the passes, before alpha;
* ``task_loss_per_pass``: ``task_loss / m``, one pass's cross-entropy (or MSE): the number to
  compare with ``eval_loss``, which evaluates one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rdrop.losses.functional import RDropOutput

__all__ = ["PART_NAMES", "PartsWindow"]

PART_NAMES = ("task_loss", "consistency_loss", "task_loss_per_pass")


class PartsWindow:
    """Sums of the loss parts of every micro-batch since the last log.

    Example:
        >>> import torch
        >>> from rdrop.losses.functional import RDropOutput
        >>> window = PartsWindow()
        >>> out = RDropOutput(torch.tensor(5.0), torch.tensor(4.0), torch.tensor(1.0))
        >>> window.add(out, passes=2, weight=1.0, step=0)
        >>> window.pop(step=1)
        {'task_loss': 4.0, 'consistency_loss': 1.0, 'task_loss_per_pass': 2.0}
    """

    def __init__(self) -> None:
        self.sums: Tensor | None = None
        self.start = 0

    def add(self, out: RDropOutput, *, passes: int, weight: float, step: int) -> None:
        """Add one micro-batch's parts.

        Args:
            out: the micro-batch's loss parts.
            passes: the passes it ran (1 on the steps R-Drop skips).
            weight: the factor that makes the micro-batch's parts sum to the step's (the
                loss scale under DDP; ``1 / accumulation steps`` when the loss is a
                per-micro-batch mean).
            step: the optimizer step (``state.global_step``).
        """
        task = out.task_loss.detach().float()
        parts = torch.stack([task, out.consistency_loss.detach().float(), task / passes]) * weight
        if self.sums is None:
            self.sums = torch.zeros_like(parts)
            self.start = step
        self.sums += parts

    def pop(self, step: int, gather: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """The parts averaged over the optimizer steps since the first :meth:`add` (and over
        processes, through ``gather``), then start a new window. Empty if nothing was added."""
        if self.sums is None:
            return {}
        sums = self.sums if gather is None else gather(self.sums)
        steps = max(step - self.start, 1)
        values = (sums.reshape(-1, len(PART_NAMES)).mean(0) / steps).tolist()
        self.sums = None
        return dict(zip(PART_NAMES, values, strict=True))

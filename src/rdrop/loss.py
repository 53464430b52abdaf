"""``RDropLoss``: the functional loss as an ``nn.Module`` with validated hyperparameters."""

from __future__ import annotations

from torch import Tensor, nn

from rdrop.checks import (
    ALPHA,
    IGNORE_INDEX,
    check_alpha,
    check_loss_arguments,
    check_num_items_in_batch,
)
from rdrop.functional import RDropOutput, _multi_pass

__all__ = ["RDropLoss"]


class RDropLoss(nn.Module):
    r"""R-Drop loss module: ``CE(P1, y) + CE(P2, y) + alpha * 0.5 * (KL(P1||P2) + KL(P2||P1))``.

    A thin module over :func:`rdrop.functional.rdrop_loss`; see there for the normalization
    (per counted row mean by default, so ``alpha`` is independent of batch size and length).
    Hyperparameters are validated here, at construction, not at the first step.

    Args:
        alpha: consistency weight ``>= 0``.
        ignore_index: target value of rows that do not count.
        label_smoothing: on each CE term, ``[0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        consistency: ``"kl"``, ``"js"`` or ``"mse"``.
        chunk_size: memory-lean chunked computation (see :func:`rdrop.functional.rdrop_loss`);
            needs ``consistency="kl"`` and a ``"mean"``/``"sum"`` reduction.
        check_finite: the one device sync per call that checks the loss and the targets (see
            :func:`rdrop.functional.rdrop_loss`); ``False`` to skip it.

    Raises:
        TypeError, ValueError: invalid hyperparameters, with the valid choices in the message.

    Example:
        >>> import torch
        >>> from rdrop import RDropLoss
        >>> criterion = RDropLoss(alpha=0.5, label_smoothing=0.1)
        >>> logits1, logits2 = torch.randn(3, 4), torch.randn(3, 4)
        >>> out = criterion(logits1, logits2, torch.tensor([0, 3, 1]))
        >>> out.loss.shape
        torch.Size([])
    """

    def __init__(
        self,
        alpha: float = ALPHA,
        *,
        ignore_index: int = IGNORE_INDEX,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        consistency: str = "kl",
        chunk_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        check_loss_arguments(ignore_index=ignore_index, label_smoothing=label_smoothing,
                             reduction=reduction, consistency=consistency, chunk_size=chunk_size)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.consistency = consistency
        self.chunk_size = chunk_size
        self.check_finite = bool(check_finite)

    def forward(
        self,
        logits1: Tensor,
        logits2: Tensor,
        target: Tensor,
        *,
        num_items_in_batch: int | Tensor | None = None,
    ) -> RDropOutput:
        """Compute the loss of two passes; see :func:`rdrop.functional.rdrop_loss`."""
        # The hyperparameters were checked at construction; the call checks its count.
        return _multi_pass(
            [logits1, logits2],
            target,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
            consistency=self.consistency,
            num_items_in_batch=check_num_items_in_batch(num_items_in_batch),
            chunk_size=self.chunk_size,
            check_finite=self.check_finite,
        )

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, consistency={self.consistency!r}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index}, "
            f"chunk_size={self.chunk_size}, check_finite={self.check_finite}"
        )

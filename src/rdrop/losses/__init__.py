r"""The losses wing: how two dropout passes are compared. Pure math on tensors; nothing here
knows about models, optimizers or steps (that is :mod:`rdrop.training`).

The loss, as the paper states it (eq. 3), averaged over the rows that count (targets that are
not ``ignore_index``): :func:`plain_rdrop_loss` below, in a few lines of torch. Everything else
in this package computes the same number faster, leaner or for other heads, and is tested
against it (``tests/losses/test_plain.py``):

* :mod:`.functional`: :func:`rdrop.rdrop_loss` and :class:`rdrop.RDropLoss` (numerically safe,
  fp32 inside, ``reduction``, label smoothing, ``num_items_in_batch``, one device sync);
* :mod:`.kernels`: the chunked, compiled and fused computations of the same sums;
* :mod:`.fused_linear`: the output layer fused into the loss (hidden states in);
* :mod:`.multilabel`, :mod:`.ctc`, :mod:`.subset`: sigmoid heads, CTC, a second pass on a
  subset of the rows;
* :mod:`.checks`: the argument and tensor checks of every entry point; :mod:`._rows`: row math.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["plain_rdrop_loss"]


def plain_rdrop_loss(logits1: Tensor, logits2: Tensor, target: Tensor, *, alpha: float,
                     ignore_index: int = -100) -> Tensor:
    r"""R-Drop, plainly: :math:`CE(P_1, y) + CE(P_2, y) + \alpha \cdot \tfrac12 (KL(P_1 \| P_2)
    + KL(P_2 \| P_1))`, the mean over counted rows (0 when no row counts).

    A reading aid and the tests' yardstick, not the fast path: use :func:`rdrop.rdrop_loss`.

    Example:
        >>> import torch
        >>> from rdrop import rdrop_loss
        >>> l1, l2, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, -100, 1])
        >>> bool(torch.allclose(plain_rdrop_loss(l1, l2, y, alpha=1.0),
        ...                     rdrop_loss(l1, l2, y, alpha=1.0).loss))
        True
    """
    keep = target != ignore_index                       # the rows that count
    logp1 = logits1[keep].log_softmax(-1)               # (N, C): one row per counted target
    logp2 = logits2[keep].log_softmax(-1)
    y = target[keep]
    ce = F.nll_loss(logp1, y, reduction="sum") + F.nll_loss(logp2, y, reduction="sum")
    kl_12 = F.kl_div(logp2, logp1, reduction="sum", log_target=True)  # KL(P1 || P2)
    kl_21 = F.kl_div(logp1, logp2, reduction="sum", log_target=True)  # KL(P2 || P1)
    counted = keep.sum().clamp(min=1)                    # all padding: 0, not NaN
    return (ce + alpha * 0.5 * (kl_12 + kl_21)) / counted

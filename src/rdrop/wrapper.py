"""``RDrop``: wrap any model so that one call in training mode returns the R-Drop loss."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from rdrop.batching import batch_size_of, duplicate_batch, extract_logits
from rdrop.functional import (
    CONSISTENCIES,
    _check_alpha,
    _check_label_smoothing,
    _check_reduction,
    _single_pass_loss,
    multi_pass_rdrop_loss,
)
from rdrop.inspection import active_dropout_rates, batchnorm_layers

__all__ = ["RDrop"]

MODES = ("concat", "twice")


def _check_positive_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


class RDrop(nn.Module):
    r"""Wrap a model so that a training call runs R-Drop and returns the loss.

    In training mode, ``out = wrapped(*args, target=y, **kwargs)``:

    * ``mode="concat"`` (default) runs ONE forward over the inputs duplicated along the batch
      dimension (``[x; x]``: every tensor whose dim 0 is the batch size, in nested dicts, tuples
      and Hugging Face ``BatchEncoding`` too), so each copy draws its own dropout masks, then
      splits the logits into the passes;
    * ``mode="twice"`` runs ``num_passes`` separate forwards (for models that cannot take a
      doubled batch, or to keep each BatchNorm batch a real batch);

    and returns :func:`rdrop.functional.multi_pass_rdrop_loss` of the passes as an
    :class:`~rdrop.functional.RDropOutput` whose ``logits`` are the first pass's. Per counted row:

    .. math::
        \mathcal{L} = \sum_k CE(P^k, y) + \alpha_t \cdot \overline{D_{sym}}(P^j, P^k)

    In eval mode, or without ``target``, the call is a plain single forward returning the model's
    own output, so evaluation and generation code need no change.

    Args:
        model: any ``nn.Module`` with dropout. Its output must be logits, or hold them (``.logits``,
            ``["logits"]``, first tuple item), or ``logits_fn`` must select them.
        alpha: consistency weight ``>= 0`` (paper: 5 translation, 0.7 summarization, 1 LM,
            0.1-1 GLUE, 0.6 ViT), under the per-row normalization of
            :func:`rdrop.functional.rdrop_loss`.
        mode: ``"concat"`` or ``"twice"``.
        num_passes: ``m >= 2`` dropout passes (consistency = mean pairwise divergence).
        every_k_steps: apply R-Drop on every k-th training call; the others are plain
            single-pass steps whose loss is the task loss of one pass (CE, no consistency).
        alpha_warmup_steps: ramp alpha linearly from ``alpha / n`` to ``alpha`` over the first
            ``n`` training calls (0 = no warm-up).
        consistency: ``"kl"``, ``"js"``, or ``"mse"`` for regression heads.
        ignore_index, label_smoothing, reduction, chunk_size: as in
            :func:`rdrop.functional.rdrop_loss`.
        logits_fn: optional callable mapping the model output to the logits tensor.
        check_dropout: warn at construction if the model has no active dropout (R-Drop then
            only doubles the cost) and raise at a training call if the model is in eval mode.
        warn_batchnorm: warn at construction about BatchNorm layers.

    Raises:
        TypeError, ValueError: invalid hyperparameters; target/logit shape mismatch at call time;
            a training call while the wrapped model is in eval mode.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rdrop import RDrop
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        >>> model = RDrop(net, alpha=1.0)
        >>> x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
        >>> out = model(x, target=y)           # one forward over [x; x]
        >>> out.loss.backward()
        >>> out.logits.shape
        torch.Size([5, 3])
        >>> _ = model.eval()
        >>> model(x).shape                     # eval: the plain model
        torch.Size([5, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        alpha: float = 1.0,
        *,
        mode: str = "concat",
        num_passes: int = 2,
        every_k_steps: int = 1,
        alpha_warmup_steps: int = 0,
        consistency: str = "kl",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        chunk_size: int | None = None,
        logits_fn: Callable[[Any], Tensor] | None = None,
        check_dropout: bool = True,
        warn_batchnorm: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        _check_alpha(alpha)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        _check_positive_int("num_passes", num_passes, 2)
        _check_positive_int("every_k_steps", every_k_steps, 1)
        _check_positive_int("alpha_warmup_steps", alpha_warmup_steps, 0)
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {CONSISTENCIES}, got {consistency!r}.")
        _check_label_smoothing(label_smoothing)
        _check_reduction(reduction)
        self.model = model
        self.alpha = float(alpha)
        self.mode = mode
        self.num_passes = num_passes
        self.every_k_steps = every_k_steps
        self.alpha_warmup_steps = alpha_warmup_steps
        self.consistency = consistency
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.logits_fn = logits_fn or extract_logits
        self.check_dropout = check_dropout
        self.num_steps = 0  # training calls with a target so far (checkpointed via extra state)
        if check_dropout and not active_dropout_rates(model):
            warnings.warn(
                "RDrop: the model has no dropout layer with p > 0, so both passes are identical "
                "and R-Drop only doubles the cost. Add dropout (or raise its rate), or pass "
                "check_dropout=False if the model applies dropout functionally.",
                UserWarning,
                stacklevel=2,
            )
        bn = batchnorm_layers(model)
        if warn_batchnorm and bn:
            warnings.warn(
                f"RDrop: BatchNorm layers {bn[:3]}{'...' if len(bn) > 3 else ''} see the "
                "duplicated batch: in concat mode their batch statistics mix both passes and "
                "running statistics update once per step; in twice mode they update once per "
                "pass. This is usually harmless. To keep statistics per real batch use "
                "mode='twice' with momentum halved, or switch to LayerNorm/GroupNorm; pass "
                "warn_batchnorm=False to silence this.",
                UserWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------------------------ state
    def current_alpha(self) -> float:
        """Alpha at the current step, after the linear warm-up (if any)."""
        if self.alpha_warmup_steps == 0:
            return self.alpha
        return self.alpha * min(1.0, (self.num_steps + 1) / self.alpha_warmup_steps)

    def get_extra_state(self) -> dict[str, int]:
        return {"num_steps": self.num_steps}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.num_steps = int(state["num_steps"])

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, mode={self.mode!r}, num_passes={self.num_passes}, "
            f"every_k_steps={self.every_k_steps}, consistency={self.consistency!r}"
        )

    # ---------------------------------------------------------------------------------- forward
    def forward(
        self,
        *args: Any,
        target: Tensor | None = None,
        num_items_in_batch: int | Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if not self.training or target is None:
            return self.model(*args, **kwargs)
        if self.check_dropout and not self.model.training:
            raise ValueError(
                "RDrop was called for training (a target was given) but the wrapped model is in "
                "eval mode, so dropout is off and both passes are identical. Call .train() on the "
                "RDrop wrapper (not only on the inner model), or call it without target to predict."
            )
        step = self.num_steps
        self.num_steps += 1
        loss_kwargs = {
            "ignore_index": self.ignore_index,
            "label_smoothing": self.label_smoothing,
            "reduction": self.reduction,
            "consistency": self.consistency,
            "num_items_in_batch": num_items_in_batch,
        }
        if step % self.every_k_steps != 0:
            logits = self.logits_fn(self.model(*args, **kwargs))
            out = _single_pass_loss(logits, target, **loss_kwargs)
            return dataclasses.replace(out, logits=logits)

        passes = self._passes(args, kwargs)
        out = multi_pass_rdrop_loss(
            passes, target, alpha=self.current_alpha(), chunk_size=self.chunk_size, **loss_kwargs
        )
        return dataclasses.replace(out, logits=passes[0])

    def _passes(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Tensor]:
        m = self.num_passes
        if self.mode == "twice":
            return [self.logits_fn(self.model(*args, **kwargs)) for _ in range(m)]
        b = batch_size_of((args, kwargs))
        dup_args, dup_kwargs = duplicate_batch((args, kwargs), m, batch_size=b)
        logits = self.logits_fn(self.model(*dup_args, **dup_kwargs))
        if logits.dim() == 0 or logits.shape[0] != m * b:
            raise ValueError(
                f"the model returned logits with {logits.shape[0] if logits.dim() else 0} rows "
                f"for a duplicated batch of {m * b} ({m} x {b}); concat mode needs the batch "
                "dimension first in inputs and outputs. Use mode='twice' for this model."
            )
        return list(logits.split(b, dim=0))

"""Settings under which R-Drop trains silently wrong or for nothing: refused, or warned about.

* Activation (gradient) checkpointing that does not preserve the RNG state: the backward pass
  recomputes each checkpointed block, and without the saved RNG state its dropout draws NEW
  masks, so the gradients belong to other passes than the loss that was computed (wrong
  gradients, a plausible loss, no error). ``torch.utils.checkpoint`` preserves the RNG state by
  default (``preserve_rng_state=True``), with ``use_reentrant`` True or False; rdrop refuses
  ``preserve_rng_state=False``.
* No dropout: every pass is identical, the consistency term is 0 and each step costs twice as
  much for nothing. The warning names where to set the dropout for the model it sees.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from rdrop.training.inspection import active_dropout_rates, no_dropout_advice
from rdrop.training.noise import parse_noise

__all__ = ["check_checkpointing_args", "check_checkpointing_model", "check_checkpointing_noise",
           "no_dropout_message"]

_FIX = ("Remove preserve_rng_state from the checkpointing kwargs (its default True replays the "
        "forward's dropout masks exactly), or turn checkpointing off.")


def _why(where: str) -> str:
    return (f"{where} sets preserve_rng_state=False: the backward pass recomputes each "
            "checkpointed block with NEW dropout masks, so R-Drop's gradients would belong to "
            "other passes than its loss (wrong gradients, no error). ")


def check_checkpointing_args(args: Any, owner: str) -> None:
    """Refuse training arguments whose activation checkpointing drops the RNG state.

    Reads ``activation_checkpointing(_kwargs)`` and the older ``gradient_checkpointing(_kwargs)``.

    Raises:
        ValueError: checkpointing on with ``preserve_rng_state=False``.

    Example:
        >>> from types import SimpleNamespace
        >>> args = SimpleNamespace(gradient_checkpointing=True,
        ...                        gradient_checkpointing_kwargs={"preserve_rng_state": False})
        >>> check_checkpointing_args(args, "RDropTrainer")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: RDropTrainer: gradient_checkpointing_kwargs sets preserve_rng_state=False: ...
    """
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        kwargs = getattr(args, f"{name}_kwargs", None)
        if getattr(args, name, False) and isinstance(kwargs, dict) and (
                kwargs.get("preserve_rng_state", True) is False):
            raise ValueError(f"{owner}: " + _why(f"{name}_kwargs") + _FIX)


def check_checkpointing_model(model: nn.Module, owner: str) -> None:
    """Refuse a model whose checkpointed modules (Hugging Face ``gradient_checkpointing``
    flags, as set by ``activation_checkpointing_enable``) drop the RNG state.

    Raises:
        ValueError: a module checkpoints with ``preserve_rng_state=False``.
    """
    for name, module in model.named_modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if (getattr(module, "gradient_checkpointing", False)
                and isinstance(func, functools.partial)
                and func.keywords.get("preserve_rng_state", True) is False):
            where = f"the model's checkpointing ({name or 'the model'})"
            raise ValueError(f"{owner}: " + _why(where) + _FIX)


def check_checkpointing_noise(model: nn.Module, noise: str, plain_steps: bool,
                              owner: str) -> None:
    """Refuse gradient checkpointing with a ``dropout:P`` or ``lora:P`` noise source when the
    schedule has plain steps: a plain step runs the model's own rates (the noise is R-Drop's),
    but the backward's recompute runs outside that step and would use ``P``, a silently wrong
    gradient.

    Raises:
        ValueError: that combination.
    """
    kind = parse_noise(noise)
    if kind.kind == "embedding" or (kind.kind == "dropout" and kind.rate is None):
        return
    if not plain_steps or not any(getattr(m, "gradient_checkpointing", False)
                                  for m in model.modules()):
        return
    raise ValueError(
        f"{owner}: rdrop_noise={noise!r} with gradient checkpointing and plain steps "
        "(rdrop_start_step > 0, rdrop_every_k_steps > 1 or a start callback): a plain step "
        "runs the model's own dropout, but the checkpointed recompute would use the noise's "
        "rate. Use rdrop_noise='embedding:5', switch gradient checkpointing off, or set the "
        "model's own dropout in its config instead of rdrop_noise."
    )


def no_dropout_message(model: nn.Module, owner: str) -> str | None:
    """The warning for a model without active dropout (stochastic depth counts), naming the fix
    for this kind of model (:func:`rdrop.training.inspection.no_dropout_advice`: PEFT's
    ``lora_dropout``, timm's ``drop_rate``/``drop_path_rate``, a Hugging Face config's dropout
    keys), or ``None`` when the model has dropout.

    Example:
        >>> from torch import nn
        >>> no_dropout_message(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), "X") is None
        True
    """
    if active_dropout_rates(model):
        return None
    return (f"{owner}: the model has no dropout with p > 0, so all R-Drop passes are identical, "
            "the consistency term is 0 and each step costs twice as much for nothing. "
            + no_dropout_advice(model, option="rdrop_noise"))

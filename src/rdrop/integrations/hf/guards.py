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

from rdrop.inspection import active_dropout_rates

__all__ = ["check_checkpointing_args", "check_checkpointing_model", "no_dropout_message"]

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


def _dropout_keys(config: Any) -> dict[str, float]:
    if config is None or not hasattr(config, "to_dict"):
        return {}
    return {k: v for k, v in config.to_dict().items()
            if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}


def no_dropout_message(model: nn.Module, owner: str) -> str | None:
    """The warning for a model without active dropout, naming the fix for this kind of model
    (PEFT: the adapters' ``lora_dropout``; timm: ``drop_rate``/``drop_path_rate``; Hugging
    Face: that config's dropout keys), or ``None`` when the model has dropout.

    Example:
        >>> from torch import nn
        >>> no_dropout_message(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)), "X") is None
        True
    """
    if active_dropout_rates(model):
        return None
    head = (f"{owner}: the model has no dropout with p > 0, so all R-Drop passes are identical, "
            "the consistency term is 0 and each step costs twice as much for nothing. ")
    peft_config = getattr(model, "peft_config", None)
    if isinstance(peft_config, dict):  # a PEFT model: only the adapters train
        base = getattr(model, "get_base_model", lambda: model)()
        return head + (
            "With PEFT the base model is frozen and its dropout is usually off: set the "
            "adapters' dropout, e.g. LoraConfig(lora_dropout=0.1), before get_peft_model "
            f"(base model config: {_dropout_keys(getattr(base, 'config', None)) or 'none'}).")
    if hasattr(model, "drop_path_rate") or hasattr(model, "default_cfg"):  # a timm model
        return head + ("Create the timm model with drop_rate=0.1 and/or drop_path_rate=0.1 "
                       "(stochastic depth).")
    keys = _dropout_keys(getattr(model, "config", None))
    if keys:
        names = ", ".join(f"{k}=0.1" for k in keys)
        return head + (f"Its config has {keys}: create the model with a dropout > 0, e.g. "
                       f"from_pretrained(..., {names}).")
    return head + ("Add dropout layers (nn.Dropout) to the model, or use a model that has "
                   "them.")

"""Model inspections: does R-Drop have anything to do (dropout), what to change if not, and
which layers (BatchNorm) see the duplicated batch."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["active_dropout_rates", "batchnorm_layers", "dropout_slots", "no_dropout_advice"]

# Attribute names under which models keep dropout probabilities applied functionally
# (torch.nn.MultiheadAttention.dropout, HF attention modules' dropout / attention_dropout floats).
_FLOAT_DROPOUT_ATTRS = ("dropout", "attention_dropout", "dropout_p", "attn_dropout", "dropout_prob")
# Stochastic depth drops whole residual branches at random: two passes differ as with dropout.
# timm's DropPath / DropBlock keep ``drop_prob``; torchvision's StochasticDepth keeps ``p``.
_STOCHASTIC_DEPTH_NAMES = ("DropPath", "DropBlock", "StochasticDepth")


def _stochastic_depth_attr(module: nn.Module) -> str | None:
    if not any(n in type(module).__name__ for n in _STOCHASTIC_DEPTH_NAMES):
        return None
    for attr in ("drop_prob", "p"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return attr
    return None


def dropout_slots(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every dropout rate in ``model``, as ``(qualified name, module, attribute)``: the one walk
    over dropout layers that reading rates (:func:`active_dropout_rates`) and setting them (the
    evidence suite's per-pass rates) share.

    Covers ``nn.Dropout``-family modules (``p``), stochastic-depth layers (any module whose class
    name contains ``DropPath``, ``DropBlock`` or ``StochasticDepth``: ``drop_prob`` or ``p``) and
    float dropout attributes used functionally (``nn.MultiheadAttention.dropout``, Hugging Face
    attention modules' ``attention_dropout`` / ``dropout_prob``), whatever their value.

    Example:
        >>> from torch import nn
        >>> [(n, a) for n, _, a in dropout_slots(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0)))]
        [('1', 'p')]
    """
    slots: list[tuple[str, nn.Module, str]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            slots.append((name, module, "p"))
            continue
        depth = _stochastic_depth_attr(module)
        if depth is not None:
            slots.append((name, module, depth))
            continue
        for attr in _FLOAT_DROPOUT_ATTRS:
            if isinstance(getattr(module, attr, None), float):
                slots.append((f"{name}.{attr}" if name else attr, module, attr))
    return slots


def active_dropout_rates(model: nn.Module) -> dict[str, float]:
    """Names and probabilities of the dropout layers in ``model`` with ``p > 0``.

    Counts every slot of :func:`dropout_slots` (``nn.Dropout``-family modules, stochastic-depth
    layers such as timm's DropPath, float dropout attributes such as
    ``nn.MultiheadAttention.dropout``) whose probability is above 0. Dropout applied with
    ``F.dropout`` on a literal inside ``forward`` cannot be seen; pass ``check_dropout=False`` to
    :class:`rdrop.RDrop` then.

    Args:
        model: any module.

    Returns:
        ``{qualified name: p}`` for every dropout with ``p > 0`` (empty if none).

    Example:
        >>> from torch import nn
        >>> active_dropout_rates(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
        {'1': 0.1}
    """
    rates: dict[str, float] = {}
    for name, module, attr in dropout_slots(model):
        value = float(getattr(module, attr))
        if value > 0:
            rates[name] = value
    return rates


def _config_dropout_keys(config: Any) -> list[str]:
    to_dict = getattr(config, "to_dict", None)
    items = to_dict() if callable(to_dict) else getattr(config, "__dict__", {})
    return sorted(k for k, v in items.items()
                  if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool))


def no_dropout_advice(model: nn.Module) -> str:
    """How to give *this* model dropout, for the warning that it has none.

    Recognizes PEFT LoRA models (modules with ``lora_dropout``), timm models (defined in a
    ``timm`` module) and Hugging Face models (a ``config`` with dropout keys; those keys are
    named), in that order; otherwise suggests ``nn.Dropout``.

    Args:
        model: the model that has no active dropout.

    Returns:
        One or two sentences naming the setting to change.

    Example:
        >>> from torch import nn
        >>> no_dropout_advice(nn.Linear(2, 2))
        'Add dropout (nn.Dropout) to the model or raise its rate.'
    """
    if any(hasattr(m, "lora_dropout") for m in model.modules()):
        return ("This is a PEFT LoRA model: set LoraConfig(lora_dropout=0.1) (or more); the "
                "frozen base model's dropout applies only if its config enables it.")
    if type(model).__module__.split(".")[0] == "timm":
        return ("This is a timm model: create it with dropout, e.g. "
                "timm.create_model(name, drop_rate=0.1, drop_path_rate=0.1).")
    config = getattr(model, "config", None)
    keys = _config_dropout_keys(config) if config is not None else []
    if keys:
        settings = ", ".join(f"{k}=0.1" for k in keys)
        return (f"Its config's dropout settings are {keys}: raise them, e.g. "
                f"from_pretrained(..., {settings}).")
    return "Add dropout (nn.Dropout) to the model or raise its rate."


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Qualified names of BatchNorm layers (their statistics see the duplicated R-Drop batch).

    Example:
        >>> from torch import nn
        >>> batchnorm_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        ['1']
    """
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

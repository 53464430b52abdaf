"""Model inspections: does R-Drop have anything to do (dropout), what to change if not, and
which layers (BatchNorm) see the duplicated batch."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = [
    "active_dropout_rates",
    "batchnorm_layers",
    "dropout_slots",
    "input_embedding",
    "lora_dropout_layers",
    "module_summary",
    "no_dropout_advice",
]

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


def module_summary(model: nn.Module, limit: int = 8) -> str:
    """The model's submodules as ``name (Type)``, the first ``limit`` of them, for messages that
    say where rdrop looked.

    Example:
        >>> from torch import nn
        >>> module_summary(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
        "'0' (Linear), '1' (ReLU)"
    """
    named = [(n, type(m).__name__) for n, m in model.named_modules() if n]
    if not named:
        return f"none (a bare {type(model).__name__})"
    shown = ", ".join(f"{n!r} ({t})" for n, t in named[:limit])
    return shown + (f" and {len(named) - limit} more" if len(named) > limit else "")


def input_embedding(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The layer that embeds the model's input tokens, as ``(qualified name, module)``.

    ``model.get_input_embeddings()`` when the model has it (Hugging Face and PEFT models), else
    the model's only ``nn.Embedding``; ``None`` when there is no such layer, or several
    ``nn.Embedding`` modules and no ``get_input_embeddings`` to say which one embeds the input.

    Example:
        >>> from torch import nn
        >>> input_embedding(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))[0]
        '0'
        >>> input_embedding(nn.Linear(4, 2)) is None
        True
    """
    named = dict((id(m), n) for n, m in model.named_modules())
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            layer = getter()
        except (NotImplementedError, AttributeError):
            layer = None
        if isinstance(layer, nn.Module) and id(layer) in named:
            return named[id(layer)], layer
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)]
    return embeddings[0] if len(embeddings) == 1 else None


def lora_dropout_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """PEFT LoRA layers whose per-adapter dropout can be set: ``(qualified name, layer)`` for
    every module holding a ``lora_dropout`` ``nn.ModuleDict`` (PEFT's ``LoraLayer``), except
    PEFT's parameter wrappers, which refuse LoRA dropout.

    Example:
        >>> from torch import nn
        >>> lora_dropout_layers(nn.Linear(2, 2))
        []
    """
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
            and "ParamWrapper" not in type(m).__name__]


def _noise_advice(model: nn.Module, option: str) -> str:
    # What noise= (rdrop.training.noise) could use in this model: named so the user can pick one.
    found = []
    embedding = input_embedding(model)
    if embedding is not None:
        found.append(f"the input embedding {embedding[0]!r}")
    slots = dropout_slots(model)
    if slots:
        found.append(f"{len(slots)} dropout slot(s) at 0 ({slots[0][0]!r}...)")
    if lora_dropout_layers(model):
        found.append("LoRA layers")
    has = ("; this model has " + ", ".join(found)) if found else (
        "; this model has none of these (no input embedding, dropout slot or LoRA layer)")
    return (f"Or give R-Drop another source of randomness with {option}=: 'embedding:5' "
            "(NEFTune-style uniform noise on the input embeddings), 'dropout:0.1' (the model's "
            "own dropout slots switched on at 0.1 for training), 'lora:0.1' (PEFT LoRA dropout)"
            + has + ".")


def _config_dropout_keys(config: Any) -> list[str]:
    to_dict = getattr(config, "to_dict", None)
    items = to_dict() if callable(to_dict) else getattr(config, "__dict__", {})
    return sorted(k for k, v in items.items()
                  if "dropout" in k and isinstance(v, (int, float)) and not isinstance(v, bool))


def no_dropout_advice(model: nn.Module, option: str = "noise") -> str:
    """How to give *this* model dropout, for the warning that it has none.

    Recognizes PEFT LoRA models (modules with ``lora_dropout``), timm models (defined in a
    ``timm`` module) and Hugging Face models (a ``config`` with dropout keys; those keys are
    named), in that order; otherwise suggests ``nn.Dropout``.

    Args:
        model: the model that has no active dropout.
        option: the name of the noise option where the advice is read (``noise`` for
            :class:`rdrop.RDrop`, ``rdrop_noise`` for the trainers).

    Returns:
        Sentences naming the setting to change, then the ``noise=`` options
        (:mod:`rdrop.training.noise`) this model can take.

    Example:
        >>> from torch import nn
        >>> no_dropout_advice(nn.Linear(2, 2)).split(". Or")[0]
        'Add dropout (nn.Dropout) to the model or raise its rate'
    """
    return f"{_dropout_setting_advice(model)} {_noise_advice(model, option)}"


def _dropout_setting_advice(model: nn.Module) -> str:
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

"""Model inspections that decide whether R-Drop can do anything, and warnings about BatchNorm."""

from __future__ import annotations

from torch import nn

__all__ = ["active_dropout_rates", "batchnorm_layers"]

# Attribute names under which models keep dropout probabilities applied functionally
# (torch.nn.MultiheadAttention.dropout, HF attention modules' dropout / attention_dropout floats).
_FLOAT_DROPOUT_ATTRS = ("dropout", "attention_dropout", "dropout_p", "attn_dropout")


def active_dropout_rates(model: nn.Module) -> dict[str, float]:
    """Names and probabilities of the dropout layers in ``model`` with ``p > 0``.

    Counts ``nn.Dropout``-family modules and float dropout attributes such as
    ``nn.MultiheadAttention.dropout``. Dropout applied with ``F.dropout`` on a literal inside
    ``forward`` cannot be seen; pass ``check_dropout=False`` to :class:`rdrop.RDrop` then.

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
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            if module.p > 0:
                rates[name] = float(module.p)
            continue
        for attr in _FLOAT_DROPOUT_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, float) and value > 0:
                rates[f"{name}.{attr}" if name else attr] = value
    return rates


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Qualified names of BatchNorm layers (their statistics see the duplicated R-Drop batch).

    Example:
        >>> from torch import nn
        >>> batchnorm_layers(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
        ['1']
    """
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

"""Duplicate a model's inputs along the batch dimension and split its outputs back.

R-Drop's concat mode runs one forward over ``[x; x]``: every tensor whose first dimension is the
batch size is repeated ``copies`` times along dim 0 (``torch.cat``, so copy ``k`` occupies rows
``k*B : (k+1)*B``), and the outputs are split back into ``copies`` chunks of ``B`` rows. Nested
dicts, lists, tuples (named ones included) and Hugging Face ``BatchEncoding`` are walked.
"""

from __future__ import annotations

import copy
from collections import UserDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["batch_size_of", "duplicate_batch", "extract_logits", "split_batch"]


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj if obj.dim() > 0 else None
    if isinstance(obj, (Mapping, UserDict)):
        items = obj.data.values() if isinstance(obj, UserDict) else obj.values()
        for v in items:
            found = _first_tensor(v)
            if found is not None:
                return found
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


def batch_size_of(obj: Any) -> int:
    """The batch size: dim 0 of the first tensor (depth-first) with at least one dimension.

    Args:
        obj: a tensor or a nested dict/list/tuple/BatchEncoding of them.

    Returns:
        The size of dim 0 of the first tensor found.

    Raises:
        ValueError: if ``obj`` holds no tensor with a batch dimension.

    Example:
        >>> import torch
        >>> batch_size_of({"input_ids": torch.zeros(4, 7), "n": 3})
        4
    """
    t = _first_tensor(obj)
    if t is None:
        raise ValueError(
            "found no tensor with a batch dimension in the model inputs; R-Drop's concat mode "
            "duplicates tensors along dim 0. Pass inputs as tensors, or use mode='twice'."
        )
    return int(t.shape[0])


def _map(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, UserDict):  # transformers.BatchEncoding and friends
        new = copy.copy(obj)
        new.data = {k: _map(v, fn) for k, v in obj.data.items()}
        return new
    if isinstance(obj, Mapping):
        mapped = {k: _map(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(mapped)
        except TypeError:
            return mapped
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def duplicate_batch(obj: Any, copies: int = 2, batch_size: int | None = None) -> Any:
    """Repeat every batch-dimension tensor ``copies`` times along dim 0: ``x -> [x; x; ...]``.

    Tensors whose first dimension is not the batch size (scalars, buffers) pass through unchanged,
    as do non-tensor values.

    Args:
        obj: a tensor or nested container of model inputs.
        copies: how many copies (the number of R-Drop passes), ``>= 1``.
        batch_size: the batch size; inferred with :func:`batch_size_of` when ``None``.

    Returns:
        The same structure with batch tensors of ``copies * B`` rows.

    Raises:
        ValueError: if ``copies < 1`` or no batch tensor is found.

    Example:
        >>> import torch
        >>> x = {"ids": torch.tensor([[1, 2], [3, 4]]), "scale": torch.tensor(2.0)}
        >>> d = duplicate_batch(x)
        >>> d["ids"].tolist(), d["scale"].item()
        ([[1, 2], [3, 4], [1, 2], [3, 4]], 2.0)
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}.")
    b = batch_size_of(obj) if batch_size is None else batch_size

    def rep(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != b or copies == 1:
            return t
        return torch.cat([t] * copies, dim=0)

    return _map(obj, rep)


def split_batch(obj: Any, copies: int = 2) -> list[Any]:
    """Split every tensor along dim 0 into ``copies`` equal chunks; the inverse of duplication.

    Tensors whose first dimension is not divisible by ``copies`` (or scalars) are shared by all
    chunks unchanged.

    Args:
        obj: a model output: tensor, tuple, dict, ``ModelOutput`` or nested containers.
        copies: the number of chunks.

    Returns:
        A list of ``copies`` structures, the ``k``-th holding rows ``k*B : (k+1)*B``.

    Example:
        >>> import torch
        >>> a, b = split_batch(torch.arange(4).reshape(4, 1))
        >>> a.flatten().tolist(), b.flatten().tolist()
        ([0, 1], [2, 3])
    """
    total = batch_size_of(obj)
    if total % copies:
        raise ValueError(
            f"output batch {total} is not divisible by {copies} passes: the model changed the "
            "batch size of the duplicated inputs. Use mode='twice' for such models."
        )
    b = total // copies
    return [
        _map(obj, lambda t, k=k: t[k * b:(k + 1) * b] if t.dim() and t.shape[0] == total else t)
        for k in range(copies)
    ]


def extract_logits(output: Any) -> Tensor:
    """The logits tensor of a model output.

    Accepts a tensor, an object with ``.logits`` (Hugging Face ``ModelOutput``), a mapping with a
    ``"logits"`` key, or a tuple/list whose first element is the logits.

    Args:
        output: what the model's forward returned.

    Returns:
        The logits tensor.

    Raises:
        TypeError: if no logits can be found (pass ``logits_fn=`` to :class:`rdrop.RDrop`).

    Example:
        >>> import torch
        >>> extract_logits({"logits": torch.zeros(2, 3)}).shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, (Mapping, UserDict)) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: expected a tensor, "
        "an object with .logits, a dict with 'logits', or a tuple whose first item is the logits. "
        "Pass logits_fn=lambda out: ... to select them."
    )

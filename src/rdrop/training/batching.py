r"""Duplicate a model's inputs for R-Drop's concat mode and split its outputs back.

R-Drop's concat mode runs one forward over ``[x; x]`` so that each copy draws its own dropout
masks. Which inputs are batched is decided by one rule, the same for :class:`rdrop.RDrop` and the
Hugging Face trainers (both call :func:`concat_inputs` / :func:`concat_forward`):

1. ``batched=`` names the inputs that carry the batch (an ``int`` for a positional input, a
   ``str`` for a keyword input). Only those are duplicated.
2. Otherwise the batch size ``B`` is dim 0 of the first tensor found depth-first in the
   positional inputs, then the keyword inputs (in call order). Every tensor with dim 0 equal to
   ``B`` is duplicated (nested dicts, lists, tuples, named tuples and Hugging Face
   ``BatchEncoding`` are walked), except inside the inputs named by ``unbatched=``. Other tensors
   (scalars, buffers, tensors of another length) and non-tensors pass through unchanged.
3. Duplication is ``torch.cat`` along dim 0, so copy ``k`` occupies rows ``k*B:(k+1)*B``; the
   output must have ``copies * B`` rows, split back in the same order.
4. Packed (padding-free) batches: when the keyword inputs hold flash-attention varlen metadata
   (``cu_seq_lens_q``/``cu_seq_lens_k``, ``cu_seqlens``...), the batch is one row of ``T`` tokens
   from several sequences (``B == 1``). Every ``(1, T, ...)`` tensor (``input_ids``,
   ``position_ids``...) is duplicated along the token dimension (dim 1), each boundary tensor
   gets the second copy's boundaries offset by ``T`` (without repeating the 0:
   ``[0, 3, 7] -> [0, 3, 7, 10, 14]``), and ``max_length_q``/``max_length_k`` are kept (a copy
   adds no longer sequence). ``seq_idx`` (the sequence of each token, ``(1, T)``, from TRL's
   and Hugging Face's padding-free collators) is laid along the tokens too, copy ``k`` adding
   ``k * S`` for a pack of ``S`` sequences, so each copy's sequences keep their own indices
   (``[[0, 0, 1]] -> [[0, 0, 1, 2, 2, 3]]``). Outputs are split along dim 1. Metadata the rule
   does not know is refused with an error rather than duplicated wrongly.

A tensor whose dim 0 equals ``B`` by coincidence (class embeddings with ``C == B``, a
sequence-first ``nn.LSTM`` input) must be named in ``unbatched=`` (or the batched inputs in
``batched=``); the training step (:class:`rdrop.training.step.TrainingStep`, which
:class:`rdrop.RDrop` and the Lightning module run) checks this once, on its first concat forward.
"""

from __future__ import annotations

import copy
from collections import UserDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rdrop.losses.checks import check_positive_int

__all__ = [
    "ConcatForward",
    "ConcatLayout",
    "batch_size_of",
    "concat_forward",
    "concat_inputs",
    "duplicate_batch",
    "extract_logits",
    "split_batch",
]

# flash-attention varlen boundaries (HF names first, then the flash_attn names).
CU_SEQLENS_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "cu_seqlens", "cu_seqlens_q", "cu_seqlens_k")
# the longest sequence of the pack: a copy of the pack adds no longer sequence, so these are kept.
MAX_LENGTH_KEYS = ("max_length_q", "max_length_k", "max_seqlen", "max_seqlen_q", "max_seqlen_k")
# the sequence index of each token of a pack: renumbered for each copy.
SEQ_IDX_KEYS = ("seq_idx",)
# keys that mark a packed batch, and keys that look like packing metadata once one is packed.
_PACKED_MARKERS = ("cu_seq", "seq_idx")
_PACKING_HINTS = ("cu_seq", "seqlen", "seq_len", "seq_idx", "max_length")

InputName = int | str


# ------------------------------------------------------------------------------------ walking
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


def _packing_keys(obj: Any) -> list[str]:
    """The packing-metadata keys of a batch mapping; empty unless it holds boundaries."""
    if not isinstance(obj, (Mapping, UserDict)):
        return []
    keys = [k for k in obj if isinstance(k, str)]
    if not any(m in k for k in keys for m in _PACKED_MARKERS):
        return []
    return [k for k in keys if any(h in k for h in _PACKING_HINTS)]


def duplicate_batch(obj: Any, copies: int = 2, batch_size: int | None = None) -> Any:
    """Repeat every batch-dimension tensor ``copies`` times along dim 0: ``x -> [x; x; ...]``.

    Tensors whose first dimension is not the batch size (scalars, buffers) pass through unchanged,
    as do non-tensor values. This is rule 2 of the module docstring without names; model calls
    should go through :func:`concat_inputs`, which also knows packed batches.

    Args:
        obj: a tensor or nested container of model inputs.
        copies: how many copies (the number of R-Drop passes), ``>= 1``.
        batch_size: the batch size; inferred with :func:`batch_size_of` when ``None``.

    Returns:
        The same structure with batch tensors of ``copies * B`` rows.

    Raises:
        TypeError: ``copies`` is not an int.
        ValueError: if ``copies < 1``, no batch tensor is found, or ``obj`` holds packed-batch
            metadata (``cu_seq_lens_q``...), which dim-0 duplication would get wrong.

    Example:
        >>> import torch
        >>> x = {"ids": torch.tensor([[1, 2], [3, 4]]), "scale": torch.tensor(2.0)}
        >>> d = duplicate_batch(x)
        >>> d["ids"].tolist(), d["scale"].item()
        ([[1, 2], [3, 4], [1, 2], [3, 4]], 2.0)
    """
    copies = check_positive_int("copies", copies, 1)
    packing = _packing_keys(obj)
    if packing and copies > 1:
        raise ValueError(
            f"the batch holds packed-sequence metadata {packing}; duplicating it along dim 0 "
            "would leave the boundaries of the first copy only. Use "
            "rdrop.training.batching.concat_inputs(args, kwargs, copies), which offsets them."
        )
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


# ------------------------------------------------------------------------------- concat mode
@dataclass(frozen=True)
class ConcatLayout:
    """How :func:`concat_inputs` laid the copies out, so outputs can be split back.

    Attributes:
        copies: the number of copies (R-Drop passes).
        batch_size: ``B``, the rows of one copy (1 for a packed batch).
        dim: the dimension the copies are concatenated along: 0, or 1 for a packed batch.
        length: the size of one copy along ``dim`` (``B``, or the tokens ``T`` of a pack).
        duplicated: the names of the inputs that were duplicated (ints: positional).
    """

    copies: int
    batch_size: int
    dim: int
    length: int
    duplicated: tuple[InputName, ...]

    @property
    def packed(self) -> bool:
        """Whether the copies are concatenated along the tokens of a packed batch."""
        return self.dim == 1

    def split(self, tensor: Tensor, what: str = "logits") -> list[Tensor]:
        """Split an output tensor of the duplicated batch into the ``copies`` passes.

        Raises:
            ValueError: the tensor does not have ``copies * length`` entries along ``dim``
                (the message says why that happens and what to change).
        """
        total = self.copies * self.length
        if tensor.dim() <= self.dim or tensor.shape[self.dim] != total:
            raise ValueError(self._mismatch(tensor, what))
        return list(tensor.split(self.length, dim=self.dim))

    def split_output(self, output: Any) -> list[Any]:
        """Split every tensor of a model output (tuple, dict, ``ModelOutput``) into the passes;
        tensors without the duplicated dimension are shared by all passes."""
        total = self.copies * self.length

        def take(t: Tensor, k: int) -> Tensor:
            if t.dim() > self.dim and t.shape[self.dim] == total:
                return t.narrow(self.dim, k * self.length, self.length)
            return t

        return [_map(output, lambda t, k=k: take(t, k)) for k in range(self.copies)]

    def _mismatch(self, tensor: Tensor, what: str) -> str:
        shape = tuple(tensor.shape)
        if tensor.dim() == 0:
            return (
                f"the model's {what} are a scalar (shape ()): the selected output is probably a "
                "loss. If the model returns (loss, logits), pass logits_fn=lambda out: out[1]."
            )
        if self.packed:
            return (
                f"the model returned {what} of shape {shape} for a packed batch duplicated to "
                f"{self.copies} x {self.length} tokens along dim 1; expected "
                f"(1, {self.copies * self.length}, ...). Use mode='twice' for this model."
            )
        return (
            f"the model returned {what} of shape {shape} for a batch duplicated to "
            f"{self.copies} x {self.batch_size} rows (inputs {list(self.duplicated)}); expected "
            f"{self.copies * self.batch_size} rows in dim 0. Concat mode needs the batch first in "
            "inputs and outputs: use batch_first=True (e.g. nn.LSTM), name the inputs with "
            "batched=/unbatched=, or use mode='twice'."
        )


def _check_names(label: str, names: Collection[InputName] | None,
                 known: Sequence[InputName]) -> frozenset[InputName]:
    if names is None:
        return frozenset()
    if isinstance(names, (str, int)):
        names = (names,)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"{label}= names {unknown}, which this call does not have; its inputs are "
            f"{list(known)} (ints for positional inputs, strings for keyword inputs)."
        )
    return frozenset(names)


def concat_inputs(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    copies: int = 2,
    *,
    batched: Collection[InputName] | None = None,
    unbatched: Collection[InputName] | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any], ConcatLayout]:
    """Duplicate a model call's inputs for concat mode, by the rule of the module docstring.

    Args:
        args: the positional inputs of the model call.
        kwargs: the keyword inputs (a ``dict`` or a Hugging Face ``BatchEncoding``).
        copies: the number of copies, ``>= 1``.
        batched: names of the only inputs to duplicate (``int`` positional, ``str`` keyword).
        unbatched: names of inputs never to duplicate.

    Returns:
        ``(args, kwargs, layout)``: the duplicated inputs and the :class:`ConcatLayout` that
        splits the outputs back.

    Raises:
        TypeError: ``copies`` is not an int.
        ValueError: ``copies < 1``; a name in ``batched``/``unbatched`` that the call does not
            have, or in both; no batch tensor; packed-batch metadata with batch size above 1,
            of an unknown kind, or beside a tensor that is not ``(1, T, ...)``; a ``seq_idx``
            that is not an integer ``(1, T)`` tensor of indices of the pack's sequences.

    Example:
        >>> import torch
        >>> ids, pos = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[0, 1, 2, 0, 1]])
        >>> cu = torch.tensor([0, 3, 5], dtype=torch.int32)
        >>> seq_idx = torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.int32)
        >>> _, kw, layout = concat_inputs((), {"input_ids": ids, "position_ids": pos,
        ...                                    "cu_seq_lens_q": cu, "max_length_q": 3,
        ...                                    "seq_idx": seq_idx})
        >>> kw["position_ids"].tolist(), kw["cu_seq_lens_q"].tolist(), kw["max_length_q"]
        ([[0, 1, 2, 0, 1, 0, 1, 2, 0, 1]], [0, 3, 5, 8, 10], 3)
        >>> kw["seq_idx"].tolist()
        [[0, 0, 0, 1, 1, 2, 2, 2, 3, 3]]
        >>> layout.dim, layout.length
        (1, 5)
    """
    copies = check_positive_int("copies", copies, 1)
    kwargs = dict(kwargs.data if isinstance(kwargs, UserDict) else kwargs)
    names: list[InputName] = [*range(len(args)), *kwargs]
    only = _check_names("batched", batched, names)
    skip = _check_names("unbatched", unbatched, names)
    if only & skip:
        raise ValueError(f"inputs {sorted(map(str, only & skip))} are in both batched= and "
                         "unbatched=; name each input in one of them.")
    candidates = [n for n in names if (n in only if only else n not in skip)]

    def value(name: InputName) -> Any:
        return args[name] if isinstance(name, int) else kwargs[name]

    first = _first_tensor([value(n) for n in candidates])
    if first is None:
        where = f"the inputs named by batched={sorted(map(str, only))}" if only else "the inputs"
        raise ValueError(
            f"found no tensor with a batch dimension in {where}; R-Drop's concat mode duplicates "
            "tensors along dim 0. Pass inputs as tensors, or use mode='twice'."
        )
    packing = [k for k in _packing_keys(kwargs)
               if k in CU_SEQLENS_KEYS + MAX_LENGTH_KEYS or k not in skip]
    if packing:
        first = _first_tensor([value(n) for n in candidates if n not in packing])
        if first is None:
            raise ValueError("packed batch: found no token tensor (such as input_ids) to "
                             "duplicate beside the packing metadata.")
        # the boundaries are always offset, whatever batched=/unbatched= say: a pack whose
        # tokens double without them is the silent failure this mode exists to prevent.
        candidates += [k for k in packing if k not in candidates]
        return _concat_packed(args, kwargs, copies, candidates, packing, first)

    b = int(first.shape[0])
    duplicated: list[InputName] = []

    def rep(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != b or copies == 1:
            return t
        return torch.cat([t] * copies, dim=0)

    new_args, new_kwargs = list(args), dict(kwargs)
    for n in candidates:
        v = value(n)
        mapped = _map(v, rep)
        if _first_tensor(v) is not None and _first_tensor(v).shape[0] == b:  # type: ignore[union-attr]
            duplicated.append(n)
        if isinstance(n, int):
            new_args[n] = mapped
        else:
            new_kwargs[n] = mapped
    layout = ConcatLayout(copies=copies, batch_size=b, dim=0, length=b,
                          duplicated=tuple(duplicated))
    return tuple(new_args), new_kwargs, layout


def _concat_packed(
    args: Sequence[Any],
    kwargs: dict[str, Any],
    copies: int,
    candidates: list[InputName],
    packing: list[str],
    first: Tensor,
) -> tuple[tuple[Any, ...], dict[str, Any], ConcatLayout]:
    unknown = [k for k in packing if k not in CU_SEQLENS_KEYS + MAX_LENGTH_KEYS + SEQ_IDX_KEYS]
    if unknown:
        raise ValueError(
            f"packed batch: R-Drop's concat mode does not know how to duplicate {unknown} "
            f"(it offsets {list(CU_SEQLENS_KEYS + SEQ_IDX_KEYS)} and keeps "
            f"{list(MAX_LENGTH_KEYS)}). Use "
            "mode='twice', or name the input in unbatched= if it does not depend on the tokens."
        )
    if first.dim() < 2 or first.shape[0] != 1:
        raise ValueError(
            f"packed batch (inputs {packing}) must be one row of concatenated sequences, shape "
            f"(1, T, ...), got a first tensor of shape {tuple(first.shape)}. Flatten the batch "
            "(padding-free collator) or use mode='twice'."
        )
    t = int(first.shape[1])
    new_args, new_kwargs = list(args), dict(kwargs)
    duplicated: list[InputName] = []
    for n in candidates:
        v = args[n] if isinstance(n, int) else kwargs[n]
        if n in CU_SEQLENS_KEYS:
            if not isinstance(v, Tensor) or v.dim() != 1 or v.is_floating_point():
                raise ValueError(f"packed batch: {n!r} must be a 1-D integer tensor of sequence "
                                 f"boundaries, got {type(v).__name__}.")
            # copy k's boundaries are the first copy's shifted by k * T; its leading 0 is dropped
            # because it is the previous copy's end.
            v = torch.cat([v] + [v[1:] + k * t for k in range(1, copies)])
        elif n in MAX_LENGTH_KEYS:
            pass
        elif n in SEQ_IDX_KEYS:
            v = _offset_seq_idx(v, n, kwargs, copies, t)
        elif isinstance(v, Tensor) and v.dim() >= 2 and v.shape[0] == 1 and v.shape[1] == t:
            v = torch.cat([v] * copies, dim=1)
        elif _first_tensor(v) is not None:
            raise ValueError(
                f"packed batch of {t} tokens: cannot tell how to duplicate input {n!r} of shape "
                f"{tuple(_first_tensor(v).shape)} (expected (1, {t}, ...)). "  # type: ignore[union-attr]
                "Name it in unbatched= if it does not depend on the tokens, or use mode='twice'."
            )
        else:
            continue
        duplicated.append(n)
        if isinstance(n, int):
            new_args[n] = v
        else:
            new_kwargs[n] = v
    layout = ConcatLayout(copies=copies, batch_size=1, dim=1, length=t,
                          duplicated=tuple(duplicated))
    return tuple(new_args), new_kwargs, layout


def _offset_seq_idx(seq_idx: Any, name: str, kwargs: Mapping[str, Any], copies: int,
                    tokens: int) -> Tensor:
    """``seq_idx`` of ``copies`` copies of a pack: copy ``k`` is the first plus ``k * S``, where
    ``S`` is the number of sequences of the pack (from its boundaries, else ``max + 1``)."""
    if (not isinstance(seq_idx, Tensor) or seq_idx.is_floating_point()
            or tuple(seq_idx.shape) != (1, tokens)):
        shape = tuple(seq_idx.shape) if isinstance(seq_idx, Tensor) else type(seq_idx).__name__
        raise ValueError(f"packed batch of {tokens} tokens: {name!r} must be an integer tensor "
                         f"of shape (1, {tokens}) (the sequence of each token), got {shape}.")
    cu = next((kwargs[k] for k in CU_SEQLENS_KEYS if isinstance(kwargs.get(k), Tensor)), None)
    top = int(seq_idx.max()) + 1 if seq_idx.numel() else 0
    sequences = cu.numel() - 1 if cu is not None else top
    if top > sequences or (seq_idx.numel() and int(seq_idx.min()) < 0):
        raise ValueError(f"packed batch: {name!r} holds indices outside 0..{sequences - 1}, the "
                         f"{sequences} sequences of its boundaries; fix the collator.")
    return torch.cat([seq_idx + k * sequences for k in range(copies)], dim=1)


@dataclass(frozen=True)
class ConcatForward:
    """What :func:`concat_forward` returns.

    Attributes:
        output: the model's output on the duplicated batch (all copies).
        passes: the logits of each copy, ``copies`` tensors of the single batch's shape.
        layout: the :class:`ConcatLayout`; ``layout.split_output(output)[0]`` is the first
            copy's full output.
    """

    output: Any
    passes: list[Tensor]
    layout: ConcatLayout


def concat_forward(
    model: nn.Module | Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    copies: int = 2,
    *,
    logits_fn: Callable[[Any], Tensor] | None = None,
    batched: Collection[InputName] | None = None,
    unbatched: Collection[InputName] | None = None,
) -> ConcatForward:
    """One forward over ``copies`` concatenated copies of the inputs, split into the passes.

    The concat-mode forward in one call: inputs duplicated by :func:`concat_inputs` (packed
    batches included), logits split by :meth:`ConcatLayout.split`, which checks the duplicated
    dimension. :class:`rdrop.RDrop` and the Hugging Face trainers use these two steps (with
    their own checks between them); call this for a custom loop.

    Args:
        model: the model (or any callable) to run once.
        args, kwargs: the inputs of one (single-copy) call.
        copies: the number of passes.
        logits_fn: selects the logits from the output (default :func:`extract_logits`).
        batched, unbatched: as in :func:`concat_inputs`.

    Returns:
        :class:`ConcatForward` ``(output, passes, layout)``.

    Raises:
        ValueError: as :func:`concat_inputs`; the logits do not have ``copies * B`` rows (or
            ``copies * T`` tokens for a packed batch).
        TypeError: the output holds no logits (pass ``logits_fn``).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5))
        >>> fwd = concat_forward(net, (torch.randn(5, 4),), {}, copies=2)
        >>> [tuple(p.shape) for p in fwd.passes]
        [(5, 3), (5, 3)]
    """
    dup_args, dup_kwargs, layout = concat_inputs(args, kwargs, copies, batched=batched,
                                                 unbatched=unbatched)
    output = model(*dup_args, **dup_kwargs)
    logits = (logits_fn or extract_logits)(output)
    return ConcatForward(output=output, passes=layout.split(logits), layout=layout)


def extract_logits(output: Any) -> Tensor:
    """The logits tensor of a model output.

    Accepts a tensor, an object with ``.logits`` (Hugging Face ``ModelOutput``), a mapping with a
    ``"logits"`` key, or a tuple/list whose first element is the logits.

    Args:
        output: what the model's forward returned.

    Returns:
        The logits tensor.

    Raises:
        TypeError: if no logits can be found, or a tuple starts with a scalar (a loss: pass
            ``logits_fn=lambda out: out[1]`` to :class:`rdrop.RDrop`).

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
        if output[0].dim() == 0 and len(output) > 1 and isinstance(output[1], Tensor):
            raise TypeError(
                "the model returned a tuple whose first item is a scalar (a loss?), so it holds "
                "no logits there; if it returns (loss, logits), pass "
                "logits_fn=lambda out: out[1]."
            )
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}: expected a tensor, "
        "an object with .logits, a dict with 'logits', or a tuple whose first item is the logits. "
        "Pass logits_fn=lambda out: ... to select them."
    )

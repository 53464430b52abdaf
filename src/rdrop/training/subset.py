"""The second pass on a subset of the rows (``second_pass_fraction``): the inputs it runs on.

The first ``n = ceil(r * B)`` rows (:func:`rdrop.losses.subset.subset_size`) of every batched
input, appended to the batch (one forward, concat mode) or alone (the second pass's own
forward); :class:`SubsetLayout` splits the outputs back. The loss that compares the passes is
:func:`rdrop.subset_rdrop_loss`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rdrop.losses.subset import subset_size
from rdrop.training.batching import InputName, _map, concat_inputs

__all__ = ["SubsetLayout", "subset_inputs"]


@dataclass(frozen=True)
class SubsetLayout:
    """How :func:`subset_inputs` laid out a batch: ``B`` rows for the first pass, then the
    first ``n`` of them again for the second (concat mode), so outputs can be split back.

    Attributes:
        batch_size: ``B``. rows: ``n``. duplicated: the inputs that carry the batch.
        copies: 2 (the passes), dim: 0, packed: ``False`` (a pack cannot be subset).
    """

    batch_size: int
    rows: int
    duplicated: tuple[InputName, ...]
    copies: int = 2
    dim: int = 0
    packed: bool = False

    def split(self, tensor: Tensor, what: str = "logits") -> list[Tensor]:
        """``[tensor[:B], tensor[B:B + n]]``.

        Raises:
            ValueError: ``tensor`` does not have ``B + n`` rows in dim 0.
        """
        total = self.batch_size + self.rows
        if tensor.dim() == 0 or tensor.shape[0] != total:
            raise ValueError(
                f"the model returned {what} of shape {tuple(tensor.shape)} for a batch of "
                f"{self.batch_size} rows plus its first {self.rows} again (second_pass_fraction; "
                f"inputs {list(self.duplicated)}); expected {total} rows in dim 0. The model "
                "must keep the batch first in inputs and outputs; use mode='twice' otherwise."
            )
        return [tensor[: self.batch_size], tensor[self.batch_size:]]

    def split_output(self, output: Any) -> list[Any]:
        """Every tensor of a model output with ``B + n`` rows split into the two passes."""
        total = self.batch_size + self.rows

        def take(t: Tensor, first: bool) -> Tensor:
            if t.dim() > 0 and t.shape[0] == total:
                return t[: self.batch_size] if first else t[self.batch_size:]
            return t

        return [_map(output, lambda t: take(t, True)), _map(output, lambda t: take(t, False))]


def subset_inputs(args: Sequence[Any], kwargs: dict[str, Any], fraction: float, *,
                  append: bool, batched: Collection[InputName] | None = None,
                  unbatched: Collection[InputName] | None = None,
                  ) -> tuple[tuple[Any, ...], dict[str, Any], SubsetLayout]:
    """The inputs of the second pass on the first ``n = ceil(r * B)`` rows.

    Which inputs carry the batch follows :func:`rdrop.training.batching.concat_inputs`'s rule (the
    first tensor defines ``B``; every tensor with dim 0 equal to ``B``, unless named in
    ``unbatched=``, or only those in ``batched=``). ``append=True`` gives ``[x; x[:n]]`` (one
    forward for both passes, concat mode); ``append=False`` gives ``x[:n]`` (the second pass's
    own forward).

    Raises:
        TypeError, ValueError: a ``fraction`` outside ``(0, 1]`` (checked by
            :func:`rdrop.losses.subset.subset_size`).
        ValueError: a packed batch (its sequences share one row, see :func:`subset_size`), a
            batch of one row with ``fraction < 1``, or as
            :func:`rdrop.training.batching.concat_inputs`.

    Example:
        >>> import torch
        >>> x, mask = torch.arange(8).view(4, 2), torch.ones(4, 2)
        >>> args, kwargs, layout = subset_inputs((x,), {"mask": mask}, 0.5, append=True)
        >>> args[0][:, 0].tolist(), kwargs["mask"].shape[0], layout.rows
        ([0, 2, 4, 6, 0, 2], 6, 2)
    """
    _, _, layout = concat_inputs(args, kwargs, 1, batched=batched, unbatched=unbatched)
    if layout.packed:
        raise ValueError(
            "second_pass_fraction < 1 cannot take a subset of a packed batch: its sequences "
            "share one row (cu_seq_lens / padding-free packing). Use padded batches (disable "
            "packing and padding_free) or second_pass_fraction=1.0."
        )
    b = layout.batch_size
    n = subset_size(b, fraction)

    def rows(t: Tensor) -> Tensor:
        if t.dim() == 0 or t.shape[0] != b:
            return t
        return torch.cat([t, t[:n]]) if append else t[:n]

    new_args, new_kwargs = list(args), dict(kwargs)
    for name in layout.duplicated:
        if isinstance(name, int):
            new_args[name] = _map(args[name], rows)
        else:
            new_kwargs[name] = _map(kwargs[name], rows)
    return tuple(new_args), new_kwargs, SubsetLayout(b, n, layout.duplicated)

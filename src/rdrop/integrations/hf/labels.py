"""Which labels count, and which logits predict them: the normalization of the trainers' loss.

The loss is divided by ``num_items_in_batch``, the number of counted labels of the whole
accumulated batch (and, with ``average_tokens_across_devices``, of all processes), so gradient
accumulation gives the full-batch gradient. Counts follow the model: labels ``[..., 1:]`` for
causal LMs (whose logits at position ``t`` predict label ``t + 1``), labels as they are for
encoder-decoder models and classifiers, one per sample for regression heads (float labels:
the Trainer's own count, ``labels.ne(-100).sum()``, is ``N * D`` for ``(N, D)`` labels, which
would make rdrop's per-sample MSE ``D`` times too small, so the trainers recount those).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rdrop.losses.checks import IGNORE_INDEX
from rdrop.losses.subset import subset_size

__all__ = ["IGNORE_INDEX", "align", "base_model", "count_items", "first_count",
           "shifts_labels"]

# IGNORE_INDEX (-100): the label value the Trainer, its collators and HF losses ignore.


def base_model(model: nn.Module) -> nn.Module:
    """The model under its wrappers: ``torch.compile``'s ``OptimizedModule`` (``_orig_mod``),
    DDP / FSDP / DataParallel (``.module``), PEFT (``get_base_model()``), in any nesting.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> base_model(torch.nn.DataParallel(net)) is net
        True
    """
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and type(model).__name__ in _PARALLEL_WRAPPERS:
            inner = getattr(model, "module", None)
        if inner is None:
            get_base = getattr(model, "get_base_model", None)  # PEFT
            inner = get_base() if callable(get_base) else None
        if not isinstance(inner, nn.Module) or inner is model:
            break
        model = inner
    return model


_PARALLEL_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel", "DataParallel")


def shifts_labels(model: nn.Module, trainer_rule: bool = False) -> bool:
    """True for causal LMs: logits at position ``t`` predict label ``t + 1`` (HF shifts inside
    the model's own loss).

    Decided from the model itself, not from the name of the object the trainer holds: the
    wrappers are removed (:func:`base_model`), then the class or any of its bases must be a
    causal LM class of transformers (``GPT2LMHeadModel``, ``LlamaForCausalLM``...), so a user
    subclass (``class MyGPT2(GPT2LMHeadModel)``) and a compiled model count as what they are.

    Args:
        model: the model, wrapped or not.
        trainer_rule: the Trainer's own answer (``Trainer._loss_shifts_labels``, transformers 5).

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> class MyGPT2(GPT2LMHeadModel):
        ...     pass
        >>> shifts_labels(MyGPT2(GPT2Config(n_embd=8, n_layer=1, n_head=2)))
        True
    """
    model = base_model(model)
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    if trainer_rule:
        return True
    # The Trainer's rule misses causal LMs whose class name is not "...ForCausalLM" (e.g.
    # GPT2LMHeadModel) and subclasses of them: their loss still shifts, so rdrop shifts and
    # counts them too.
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return any(cls.__name__ in causal for cls in type(model).__mro__)


def count_items(batches: list[Any], shift: bool, fraction: float = 1.0) -> Tensor | None:
    """Counted labels of one optimizer step's micro-batches (``None`` if a batch holds
    non-tensor labels): float labels count one per sample, class labels those
    ``!= IGNORE_INDEX`` (after the causal shift, unless the collator gave ``shift_labels``).
    With ``fraction < 1``, only the first ``ceil(fraction * B)`` rows of each micro-batch
    (the rows of the second pass, :func:`rdrop.losses.subset.subset_size`).

    Example:
        >>> import torch
        >>> batch = {"labels": torch.tensor([[5, 6, -100], [7, -100, -100]])}
        >>> int(count_items([batch], shift=False)), int(count_items([batch], shift=True))
        (3, 1)
        >>> int(count_items([batch], shift=False, fraction=0.5))
        2
    """
    total = torch.zeros((), dtype=torch.long)
    for batch in batches:
        labels = batch.get("shift_labels", batch["labels"])
        if not isinstance(labels, Tensor):
            return None
        if fraction < 1.0:
            labels = labels[: subset_size(labels.shape[0], fraction)]
        if labels.is_floating_point():  # regression: one row per sample
            total += labels.shape[0]
            continue
        if shift and "shift_labels" not in batch:
            labels = labels[..., 1:]
        total += labels.ne(IGNORE_INDEX).sum().cpu()
    return total


def first_count(num_items_in_batch: Tensor | int | None) -> Tensor | int | None:
    """The count as rdrop's losses take it: the Trainer may pass a 1-element tensor (one per
    process, gathered), and counts in a float dtype (whole numbers), which become ``long``."""
    if isinstance(num_items_in_batch, Tensor):
        if num_items_in_batch.dim() > 0:
            num_items_in_batch = num_items_in_batch.reshape(-1)[0]
        if num_items_in_batch.is_floating_point():
            num_items_in_batch = num_items_in_batch.round().long()
    return num_items_in_batch


def align(passes: list[Tensor], labels: Tensor, shift_labels: Tensor | None,
          shift: bool) -> tuple[list[Tensor], Tensor]:
    """Per-pass outputs (logits or last hidden states) and the labels they predict.

    Example:
        >>> import torch
        >>> passes, target = align([torch.zeros(1, 4, 3)], torch.arange(4)[None], None, True)
        >>> passes[0].shape, target.tolist()
        (torch.Size([1, 3, 3]), [[1, 2, 3]])
    """
    if shift_labels is not None:
        return passes, shift_labels
    if shift:  # position t predicts label t + 1
        return [p[:, :-1] for p in passes], labels[:, 1:]
    return passes, labels

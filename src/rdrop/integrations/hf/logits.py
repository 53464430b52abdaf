"""The logits path of the trainers' step (:class:`rdrop.training.step.TrainingStep`): the logits
of an output, the packed-batch check (the loss's options with the Trainer's conventions are
:func:`rdrop.integrations.hf.arguments.step_options`).

Packed and padding-free batches (TRL ``padding_free``, packing, ``DataCollatorWithFlattening``)
carry varlen metadata: ``cu_seq_lens_q/k`` (the boundaries of the sequences in the flattened
tokens) and ``max_length_q/k``. A varlen attention kernel reads the duplicated batch through
them, so after duplication they must describe the doubled tokens (the second copy's boundaries
offset by the first copy's token count). :func:`rdrop.training.batching.concat_inputs` lays a pack's
copies out along its tokens (one row of ``2T`` tokens) and offsets the boundaries;
:func:`check_packed_batch` checks the result as a varlen kernel would read it and refuses a batch
where they disagree, instead of letting the kernel attend across the wrong boundaries. TRL's
``seq_idx`` (the sequence of each token, for linear-attention layers) is renumbered there too,
each copy's sequences after the previous copy's.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rdrop.training.batching import ConcatLayout, extract_logits

__all__ = [
    "check_packed_batch",
    "logits_of",
    "prepare_decoder_inputs",
]

_VARLEN_BOUNDARIES = ("cu_seq_lens_q", "cu_seq_lens_k")
_FLASH = ("flash_attention", "flash_attn", "kernels-community/flash")


def prepare_decoder_inputs(model: nn.Module, inputs: dict[str, Any], labels: Tensor) -> None:
    """Encoder-decoder models build ``decoder_input_ids`` from ``labels``, which the trainer
    popped: build them here (in place), or hand the labels back to a model that cannot."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False):
        return
    if "decoder_input_ids" in inputs or "decoder_inputs_embeds" in inputs:
        return
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if prepare is not None:
        inputs["decoder_input_ids"] = prepare(labels=labels)
    else:  # let the model shift them itself; its own loss is computed and ignored
        inputs["labels"] = labels


def check_packed_batch(model: nn.Module, batch: dict[str, Any], layout: ConcatLayout | None,
                       owner: str) -> None:
    """Refuse a duplicated packed batch whose varlen metadata does not describe its tokens.

    Args:
        model: the unwrapped model (its ``config._attn_implementation`` is read).
        batch: the batch as the model will see it (after duplication).
        layout: how the copies were laid out (:func:`rdrop.training.batching.concat_inputs`);
            ``None`` for the one forward of a plain step.
        owner: the trainer's class name, for the message.

    Raises:
        ValueError: ``cu_seq_lens_q/k`` do not end at the number of tokens of the batch, or
            ``max_length_q/k`` is shorter than their longest sequence; or a padding-free batch
            (``position_ids``, no ``attention_mask``) without them, duplicated into several
            rows, goes to a flash-attention model (which recognizes packing from
            ``position_ids`` only in a batch of one row, so the rows would attend across their
            sequences).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from rdrop.training.batching import ConcatLayout
        >>> layout = ConcatLayout(copies=2, batch_size=1, dim=0, length=1, duplicated=())
        >>> batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long),
        ...          "cu_seq_lens_q": torch.tensor([0, 3, 5])}
        >>> check_packed_batch(nn.Linear(1, 1), batch, layout, "X")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: X: the packed batch's cu_seq_lens_q ends at 5 tokens, but the ...
    """
    tokens = next((batch[k] for k in ("input_ids", "position_ids", "inputs_embeds")
                   if isinstance(batch.get(k), Tensor)), None)
    if tokens is None:
        return
    n = tokens.shape[0] * tokens.shape[1]
    copies = layout.copies if layout is not None else 1
    for key in _VARLEN_BOUNDARIES:
        cu = batch.get(key)
        if not isinstance(cu, Tensor) or not cu.numel():
            continue
        if int(cu[-1]) != n:
            raise ValueError(
                f"{owner}: the packed batch's {key} ends at {int(cu[-1])} tokens, but the "
                f"duplicated batch ({copies} copies) has {n}: a varlen attention kernel "
                "would read the first copy's boundaries for all tokens. The duplication must "
                "offset the second copy's boundaries (rdrop.training.batching.concat_inputs "
                "does); if this batch was built by hand, drop cu_seq_lens_q/k and "
                "max_length_q/k (the model then derives them from position_ids), or disable "
                "padding_free/packing."
            )
        longest = int(cu.diff().max()) if cu.numel() > 1 else 0
        limit = batch.get(f"max_length_{key[-1]}")
        if isinstance(limit, (int, Tensor)) and int(limit) < longest:
            raise ValueError(
                f"{owner}: the packed batch's max_length_{key[-1]} is {int(limit)}, shorter than "
                f"its longest sequence ({longest} tokens by {key}); a varlen kernel would cut "
                "it. Let the collator compute max_length_q/k."
            )
    implementation = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    padding_free = ("position_ids" in batch and "attention_mask" not in batch
                    and not any(k in batch for k in _VARLEN_BOUNDARIES))
    if (layout is not None and layout.copies > 1 and not layout.packed
            and layout.batch_size == 1 and padding_free and implementation.startswith(_FLASH)):
        raise ValueError(
            f"{owner}: a padding-free batch (one row of packed sequences, position_ids and no "
            f"attention_mask) goes to a {implementation} model without cu_seq_lens_q/k; flash "
            "attention finds the sequences from position_ids only in a batch of one row, so the "
            f"{layout.copies} duplicated rows would attend across sequences. Use a collator that "
            "returns cu_seq_lens_q/k and max_length_q/k (TRL's padding_free collator; "
            "DataCollatorWithFlattening(return_flash_attn_kwargs=True)) or attn_implementation="
            "'sdpa'."
        )


def logits_of(outputs: Any, owner: str) -> Tensor:
    """The logits of a model output (:func:`rdrop.training.batching.extract_logits`).

    Raises:
        TypeError: the output holds no logits (the message names the trainer).
    """
    try:
        return extract_logits(outputs)
    except TypeError as err:
        raise TypeError(
            f"{owner}: the model returned no logits ({type(outputs).__name__}); R-Drop compares "
            "the logits of the passes. Return a ModelOutput with .logits, a dict with 'logits', "
            "or a tuple whose first item is the logits."
        ) from err

"""The logits path: one forward over ``[x; x]``, the logits split into passes, the R-Drop loss.

Packed and padding-free batches (TRL ``padding_free``, packing, ``DataCollatorWithFlattening``)
carry varlen metadata: ``cu_seq_lens_q/k`` (the boundaries of the sequences in the flattened
tokens) and ``max_length_q/k``. A varlen attention kernel reads the duplicated batch through
them, so after duplication they must describe the doubled tokens (the second copy's boundaries
offset by the first copy's token count); :func:`check_packed_batch` refuses a batch where they
do not, instead of letting the kernel attend across the wrong boundaries.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rdrop.batching import extract_logits
from rdrop.functional import RDropOutput, multi_pass_rdrop_loss, single_pass_loss

from .labels import IGNORE_INDEX, first_count

__all__ = ["check_packed_batch", "logits_loss", "prepare_decoder_inputs", "split_logits"]

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


def check_packed_batch(model: nn.Module, batch: dict[str, Any], m: int, b: int,
                       owner: str) -> None:
    """Refuse a duplicated packed batch whose varlen metadata does not describe its tokens.

    Args:
        model: the unwrapped model (its ``config._attn_implementation`` is read).
        batch: the batch as the model will see it (after duplication when ``m > 1``).
        m: copies in the batch; b: the original batch size.
        owner: the trainer's class name, for the message.

    Raises:
        ValueError: ``cu_seq_lens_q/k`` do not end at the number of tokens of the batch (the
            duplication did not offset them), or a padding-free batch of one row without them
            goes to a flash-attention model (which recognizes packing only in a batch of one
            row, so the duplicated rows would attend across their sequences).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> batch = {"input_ids": torch.zeros(2, 5, dtype=torch.long),
        ...          "cu_seq_lens_q": torch.tensor([0, 3, 5])}
        >>> check_packed_batch(nn.Linear(1, 1), batch, 2, 1, "RDropTrainer")
        Traceback (most recent call last):
        ...
        ValueError: RDropTrainer: the packed batch's cu_seq_lens_q ends at 5 tokens, ...
    """
    tokens = next((batch[k] for k in ("input_ids", "position_ids", "inputs_embeds")
                   if isinstance(batch.get(k), Tensor)), None)
    if tokens is None:
        return
    n = tokens.shape[0] * tokens.shape[1]
    for key in _VARLEN_BOUNDARIES:
        cu = batch.get(key)
        if isinstance(cu, Tensor) and cu.numel() and int(cu[-1]) != n:
            raise ValueError(
                f"{owner}: the packed batch's {key} ends at {int(cu[-1])} tokens, but the "
                f"duplicated batch ({m} copies x {b} row(s)) has {n}: a varlen attention kernel "
                "would read the first copy's boundaries for all tokens. The duplication must "
                f"offset the second copy's boundaries (rdrop.batching does this for cu_seq_lens_"
                "q/k); if this batch was built by hand, drop cu_seq_lens_q/k and max_length_q/k "
                "(the model then derives them from position_ids), or disable padding_free/"
                "packing."
            )
    implementation = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    padding_free = ("position_ids" in batch and "attention_mask" not in batch
                    and not any(k in batch for k in _VARLEN_BOUNDARIES))
    if m > 1 and b == 1 and padding_free and implementation.startswith(_FLASH):
        raise ValueError(
            f"{owner}: a padding-free batch (one row of packed sequences, position_ids and no "
            f"attention_mask) goes to a {implementation} model without cu_seq_lens_q/k; flash "
            "attention finds the sequences from position_ids only in a batch of one row, so the "
            f"{m} duplicated rows would attend across sequences. Use a collator that returns "
            "cu_seq_lens_q/k and max_length_q/k (TRL's padding_free collator; "
            "DataCollatorWithFlattening(return_flash_attn_kwargs=True)) or attn_implementation="
            "'sdpa'."
        )


def split_logits(outputs: Any, m: int, b: int, owner: str) -> list[Tensor]:
    """The logits of a forward over ``m`` copies of a batch of ``b``, as ``m`` passes.

    Raises:
        TypeError: the output holds no logits.
        ValueError: the logits do not have ``m * b`` rows.
    """
    try:
        logits = extract_logits(outputs)
    except TypeError as err:
        raise TypeError(
            f"{owner}: the model returned no logits ({type(outputs).__name__}); R-Drop compares "
            "the logits of the passes. Return a ModelOutput with .logits, a dict with 'logits', "
            "or a tuple whose first item is the logits."
        ) from err
    if logits.dim() == 0 or logits.shape[0] != m * b:
        raise ValueError(
            f"{owner}: expected logits with {m * b} rows ({m} passes x batch {b}), got shape "
            f"{tuple(logits.shape)}. The model must keep the batch dimension first and return "
            "logits (not a loss) as its first output."
        )
    return list(logits.split(b, dim=0))


def logits_loss(passes: list[Tensor], target: Tensor, *, alpha: float, consistency: str | None,
                label_smoothing: float,
                num_items_in_batch: Tensor | int | None) -> RDropOutput:
    """R-Drop over the passes (one pass: the plain task loss, on steps R-Drop skips), with the
    Trainer's conventions: ``ignore_index=-100``; ``consistency=None`` picks ``"mse"`` for
    float targets (regression heads, no label smoothing) and ``"kl"`` otherwise."""
    if consistency is None:
        consistency = "mse" if target.is_floating_point() else "kl"
    kwargs = {
        "ignore_index": IGNORE_INDEX,
        "label_smoothing": 0.0 if consistency == "mse" else label_smoothing,
        "consistency": consistency,
        "num_items_in_batch": first_count(num_items_in_batch),
    }
    if len(passes) == 1:
        return single_pass_loss(passes[0], target, reduction="mean", **kwargs)
    return multi_pass_rdrop_loss(passes, target, alpha=alpha, **kwargs)

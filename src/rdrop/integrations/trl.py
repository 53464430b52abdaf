"""R-Drop for TRL's supervised fine-tuning: ``RDropSFTTrainer`` and ``RDropSFTConfig``.

.. code-block:: diff

    -from trl import SFTConfig, SFTTrainer
    +from rdrop.integrations.trl import RDropSFTConfig as SFTConfig
    +from rdrop.integrations.trl import RDropSFTTrainer as SFTTrainer
     args = SFTConfig(output_dir="out", ..., rdrop_alpha=1.0)

Everything of TRL's stays: its defaults (``RDropSFTConfig`` lists the R-Drop mixin first, so
``learning_rate``, ``logging_steps``, ``bf16``, ``gradient_checkpointing``... keep SFTConfig's
values), its data preparation and collators (completion-only and assistant-only masks, packing,
``padding_free``), and its training metrics (``entropy``, ``mean_token_accuracy`` of the first
pass, ``num_tokens``). The training loss is R-Drop over the next-token predictions, as in
:class:`rdrop.integrations.hf.RDropTrainer`; evaluation is SFT's own (one pass).

Packed and padding-free batches: the copies of a pack are laid along its tokens (one row of
``2T`` tokens) with ``cu_seq_lens_q/k`` offset, ``max_length_q/k`` kept and ``seq_idx``
renumbered, so a varlen kernel sees ``2 x`` the sequences, each attending only to itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "rdrop.integrations.trl needs TRL: pip install 'torch-rdrop[hf]' trl"
    ) from err

from rdrop.integrations.hf import RDropTrainerMixin
from rdrop.integrations.hf.arguments import RDropArgumentsMixin
from rdrop.integrations.hf.labels import IGNORE_INDEX

__all__ = ["RDropSFTConfig", "RDropSFTTrainer"]


@dataclass
class RDropSFTConfig(RDropArgumentsMixin, SFTConfig):
    """``trl.SFTConfig`` plus the R-Drop hyperparameters (as in
    :class:`rdrop.integrations.hf.RDropTrainingArguments`), with every SFTConfig default kept.

    Example:
        >>> from rdrop.integrations.trl import RDropSFTConfig
        >>> from trl import SFTConfig
        >>> args = RDropSFTConfig(output_dir="out", rdrop_alpha=0.5, use_cpu=True)
        >>> plain = SFTConfig(output_dir="out", use_cpu=True)
        >>> args.rdrop_alpha, args.learning_rate == plain.learning_rate
        (0.5, True)
    """


class RDropSFTTrainer(RDropTrainerMixin, SFTTrainer):
    """``trl.SFTTrainer`` whose training loss is R-Drop (negative log-likelihood, ``loss_type
    "nll"``).

    Args:
        *args, **kwargs: as for ``trl.SFTTrainer`` (``args`` an :class:`RDropSFTConfig`).
        rdrop_alpha, rdrop_num_passes, rdrop_every_k_steps, rdrop_alpha_warmup_steps,
            rdrop_consistency, rdrop_fused_linear, rdrop_chunk_size, rdrop_start_step,
            rdrop_second_pass_fraction: as for
            :class:`rdrop.integrations.hf.RDropTrainer`.

    Logs SFT's ``entropy``, ``mean_token_accuracy`` (of the first pass) and ``num_tokens``, and
    rdrop's ``task_loss``, ``consistency_loss`` and ``task_loss_per_pass`` (one pass's NLL, the
    number plain SFT logs as ``loss``).

    Raises:
        ValueError: as :class:`rdrop.integrations.hf.RDropTrainer`; ``loss_type`` other than
            ``"nll"``; a mixture-of-experts model whose router auxiliary loss is on (R-Drop
            would drop it).

    Example:
        >>> from rdrop.integrations.trl import RDropSFTTrainer
        >>> from rdrop.integrations.hf import RDropTrainerMixin
        >>> issubclass(RDropSFTTrainer, RDropTrainerMixin)
        True
    """

    _metrics: dict[str, Any]
    _total_train_tokens: int
    _tp_size: int
    aux_loss_enabled: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        loss_type = getattr(self.args, "loss_type", "nll")
        if loss_type != "nll":
            raise ValueError(
                f"RDropSFTTrainer: R-Drop's task term is the negative log-likelihood; got "
                f"loss_type={loss_type!r}. Use loss_type='nll' or the plain SFTTrainer."
            )
        if getattr(self, "aux_loss_enabled", False):
            raise ValueError(
                "RDropSFTTrainer: the model's mixture-of-experts router auxiliary loss is on "
                "(config.output_router_logits), and R-Drop's loss would silently leave it out. "
                "Set model.config.router_aux_loss_coef=0.0 (or output_router_logits=False), or "
                "use the plain SFTTrainer."
            )

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Tensor | int | None = None) -> Any:
        """R-Drop in training (see :class:`rdrop.integrations.hf.RDropTrainer`), SFT's own
        loss in evaluation."""
        if model.training:
            inputs = {**inputs, "use_cache": False}  # as SFTTrainer: no cache in training
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)

    def _rdrop_observe(self, model: nn.Module, inputs: dict[str, Any], first_pass: Tensor,
                       target: Tensor) -> None:
        """SFT's training metrics from the first pass: per-token entropy and top-1 accuracy
        over the counted next-token labels, and the running token count."""
        valid = target != IGNORE_INDEX
        with torch.no_grad():
            if self.rdrop_fused_linear:  # the first pass is the output layer's input
                head = model.get_output_embeddings()
                rows = first_pass[valid].to(head.weight.dtype)
                chunks = [head(c).float() for c in rows.split(self.rdrop_chunk_size)]
                logits = torch.cat(chunks) if chunks else rows.new_zeros(0, 1).float()
            else:
                logits = first_pass[valid].float()
            logp = torch.log_softmax(logits, dim=-1)
            entropy_sum = -(logp.exp() * logp).sum()
            num_correct = (logits.argmax(-1) == target[valid]).sum()
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(valid.sum()).sum()
        entropy_sum = gather(entropy_sum).sum()
        num_correct = gather(num_correct).sum()
        metrics = self._metrics["train"]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append(
            (num_correct / num_valid).item() if num_valid > 0 else 0.0)
        # Tokens of the real batch, one copy (as SFTTrainer counts them).
        if "attention_mask" in inputs:
            tokens = gather(inputs["attention_mask"].sum()).sum().item()
        elif "position_ids" in inputs:
            position_ids = inputs["position_ids"]
            tokens = gather(torch.tensor(position_ids.size(1), device=position_ids.device))
            tokens = tokens.sum().item()
        else:
            raise ValueError("RDropSFTTrainer: expected 'attention_mask' or 'position_ids' in "
                             "the training batch (SFT's collators provide one).")
        self._total_train_tokens += int(tokens) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

"""R-Drop for the Hugging Face ``Trainer`` and ``Seq2SeqTrainer``: change one import.

.. code-block:: diff

    -from transformers import Trainer, TrainingArguments
    +from rdrop.integrations.hf import RDropTrainer as Trainer
    +from rdrop.integrations.hf import RDropTrainingArguments as TrainingArguments
     args = TrainingArguments(output_dir="out", ..., rdrop_alpha=1.0)

What changes, and only in training (``model.training``): ``compute_loss`` pops ``labels``, runs ONE
forward over the batch duplicated along dim 0 (``[x; x]``, so each copy draws its own dropout
masks), splits the logits into the passes and returns
:func:`rdrop.functional.multi_pass_rdrop_loss` with ``ignore_index=-100`` and
``label_smoothing=args.label_smoothing_factor`` (the Trainer's own label smoother is not applied on
top). Evaluation, prediction and generation go through the parent class unchanged (one pass).

Normalization. The loss is divided by ``num_items_in_batch``, the number of counted labels of the
whole accumulated batch (and, with ``average_tokens_across_devices``, of all processes), so gradient
accumulation gives the full-batch gradient. The Trainer counts it for models whose ``forward`` takes
``**kwargs`` (every ``transformers`` 5 model); for other models this class counts it the same way.
Counts follow the model: labels ``[..., 1:]`` for causal LMs (whose logits at position ``t``
predict label ``t + 1``, so the logits are shifted too), labels as they are for encoder-decoder
models (they align with the decoder outputs) and classifiers, one per sample for regression heads
(``num_labels == 1`` with float labels: ``consistency="mse"``).

Fused output layer (opt-in, ``rdrop_fused_linear=True``, language models). The forward still runs
once over ``[x; x]``, but the output layer projects nothing: its input (the last hidden states) is
taken and :func:`rdrop.fused_linear.fused_linear_rdrop_loss` computes the same loss from it and
the layer's weight and bias, ``chunk_size`` rows at a time, so the ``(2 x tokens, vocab)`` logits
and their gradients never exist. It is exact only for models whose logits are
``hidden @ W.T + b``; the first fused step checks that on one sample and raises otherwise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

try:
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from transformers.trainer_pt_utils import nested_gather
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "rdrop.integrations.hf needs Hugging Face transformers and accelerate: "
        "pip install rdrop[hf]"
    ) from err

from rdrop.batching import batch_size_of, duplicate_batch, extract_logits, split_batch
from rdrop.functional import (
    CONSISTENCIES,
    RDropOutput,
    _check_alpha,
    _single_pass_loss,
    multi_pass_rdrop_loss,
)
from rdrop.fused_linear import fused_linear_rdrop_loss
from rdrop.inspection import active_dropout_rates

__all__ = [
    "RDropSeq2SeqTrainer",
    "RDropSeq2SeqTrainingArguments",
    "RDropTrainer",
    "RDropTrainingArguments",
]

IGNORE_INDEX = -100  # the label value the Trainer, its collators and HF losses ignore
_DEFAULTS = {"alpha": 1.0, "num_passes": 2, "every_k_steps": 1, "consistency": None,
             "fused_linear": False, "chunk_size": 1024}
# Config fields that transform the logits after the output layer, with the value that means "off".
# A fused head would silently skip them; the numerical check at the first fused step is the
# general guard, these give an early, named error.
_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None, "output_logit_soft_cap": None, "logits_soft_cap": None,
    "logit_scale": 1.0, "logits_scaling": 1.0, "output_multiplier": 1.0,
    "lm_head_multiplier": 1.0, "logits_mup_width_multiplier": 1.0,
}


def _validate(alpha: Any, num_passes: Any, every_k_steps: Any, consistency: Any,
              fused_linear: Any = False, chunk_size: Any = 1024) -> None:
    """Raise a specific error for each invalid R-Drop hyperparameter."""
    try:
        _check_alpha(alpha)
    except (TypeError, ValueError) as err:
        raise type(err)(f"rdrop_alpha: {err}") from None
    for name, value, minimum in (("rdrop_num_passes", num_passes, 2),
                                 ("rdrop_every_k_steps", every_k_steps, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if consistency is not None and consistency not in CONSISTENCIES:
        raise ValueError(
            f"rdrop_consistency must be one of {CONSISTENCIES} or None (automatic: 'mse' for "
            f"regression heads, 'kl' otherwise), got {consistency!r}."
        )
    if not isinstance(fused_linear, bool):
        raise TypeError(f"rdrop_fused_linear must be a bool, got {type(fused_linear).__name__}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"rdrop_chunk_size must be a positive int, got {chunk_size!r}.")
    if fused_linear and num_passes != 2:
        raise ValueError(
            f"rdrop_fused_linear=True supports rdrop_num_passes=2 only (the fused loss compares "
            f"two passes), got {num_passes}. Use rdrop_num_passes=2 or rdrop_fused_linear=False."
        )
    if fused_linear and consistency not in (None, "kl"):
        raise ValueError(
            f"rdrop_fused_linear=True computes the symmetric KL only, got rdrop_consistency="
            f"{consistency!r}. Use rdrop_consistency='kl' (or None) or rdrop_fused_linear=False."
        )


# ------------------------------------------------------------------------------------ arguments
@dataclass
class _RDropArguments:
    # A mixin listed first among the bases, so its fields come after the parent's and
    # RDropTrainingArguments("out") still means output_dir="out".
    rdrop_alpha: float = field(
        default=1.0,
        metadata={"help": "Weight of the R-Drop consistency term (paper: 5 translation, "
                          "0.7 summarization, 1 language modeling, 0.1-1 GLUE)."},
    )
    rdrop_num_passes: int = field(
        default=2, metadata={"help": "Dropout passes per sample (m >= 2)."}
    )
    rdrop_every_k_steps: int = field(
        default=1,
        metadata={"help": "Apply R-Drop on every k-th optimizer step; other steps are plain "
                          "single-pass steps."},
    )
    rdrop_consistency: str | None = field(
        default=None,
        metadata={"help": "'kl' (paper), 'js', 'mse', or None: 'mse' for regression heads "
                          "(float labels), 'kl' otherwise."},
    )
    rdrop_fused_linear: bool = field(
        default=False,
        metadata={"help": "Language models: compute the loss from the last hidden states and the "
                          "output layer in chunks, never building the full logits (saves the "
                          "(2 x tokens, vocab) logits and their gradients). KL, 2 passes."},
    )
    rdrop_chunk_size: int = field(
        default=1024,
        metadata={"help": "Rows (tokens) per chunk of the fused loss (rdrop_fused_linear)."},
    )

    def _validate_rdrop(self) -> None:
        _validate(self.rdrop_alpha, self.rdrop_num_passes, self.rdrop_every_k_steps,
                  self.rdrop_consistency, self.rdrop_fused_linear, self.rdrop_chunk_size)


@dataclass
class RDropTrainingArguments(_RDropArguments, TrainingArguments):
    """``TrainingArguments`` plus the R-Drop hyperparameters, validated at construction.

    Args:
        rdrop_alpha: consistency weight ``>= 0`` (default 1.0), under rdrop's per-row
            normalization (:func:`rdrop.functional.rdrop_loss`).
        rdrop_num_passes: dropout passes ``m >= 2`` (default 2).
        rdrop_every_k_steps: R-Drop on every k-th optimizer step (default 1: every step).
        rdrop_consistency: ``"kl"``, ``"js"``, ``"mse"`` or ``None`` (automatic).
        rdrop_fused_linear: language models only: fuse the output layer into the loss so the
            full logits are never built (default False; see :class:`RDropTrainer`).
        rdrop_chunk_size: tokens per chunk of the fused loss (default 1024).
        **kwargs: everything ``TrainingArguments`` takes.

    Raises:
        TypeError, ValueError: an invalid R-Drop hyperparameter (the message names it).

    Example:
        >>> from rdrop.integrations.hf import RDropTrainingArguments
        >>> args = RDropTrainingArguments(output_dir="out", rdrop_alpha=0.5, report_to="none")
        >>> args.rdrop_alpha, args.rdrop_num_passes
        (0.5, 2)
        >>> RDropTrainingArguments(output_dir="out", rdrop_alpha=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: rdrop_alpha: alpha must be a finite number >= 0, got -1.0. ...
    """

    def __post_init__(self) -> None:
        self._validate_rdrop()
        super().__post_init__()


@dataclass
class RDropSeq2SeqTrainingArguments(_RDropArguments, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the R-Drop hyperparameters (see
    :class:`RDropTrainingArguments`; the paper's alpha for translation is 5).

    Example:
        >>> from rdrop.integrations.hf import RDropSeq2SeqTrainingArguments
        >>> args = RDropSeq2SeqTrainingArguments(output_dir="out", rdrop_alpha=5.0,
        ...                                      predict_with_generate=True, report_to="none")
        >>> args.rdrop_alpha, args.predict_with_generate
        (5.0, True)
    """

    def __post_init__(self) -> None:
        self._validate_rdrop()
        super().__post_init__()


def _scalar(num_items_in_batch: Tensor | int | None) -> Tensor | int | None:
    """The Trainer may pass the count as a 1-element tensor (one per process, gathered)."""
    if isinstance(num_items_in_batch, Tensor) and num_items_in_batch.dim() > 0:
        return num_items_in_batch.reshape(-1)[0]
    return num_items_in_batch


# -------------------------------------------------------------------------------------- trainers
class _RDropMixin:
    """The R-Drop ``compute_loss`` shared by both trainers (put before the HF class in the MRO)."""

    # Attributes the HF Trainer provides (declared for type checkers).
    args: Any
    state: Any
    model: nn.Module
    accelerator: Any
    compute_loss_func: Any
    current_gradient_accumulation_steps: int
    loss_is_scaled_for_ga: bool | None

    def __init__(
        self,
        *args: Any,
        rdrop_alpha: float | None = None,
        rdrop_num_passes: int | None = None,
        rdrop_every_k_steps: int | None = None,
        rdrop_consistency: str | None = None,
        rdrop_fused_linear: bool | None = None,
        rdrop_chunk_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        given = {"alpha": rdrop_alpha, "num_passes": rdrop_num_passes,
                 "every_k_steps": rdrop_every_k_steps, "consistency": rdrop_consistency,
                 "fused_linear": rdrop_fused_linear, "chunk_size": rdrop_chunk_size}
        # The constructor wins over the arguments dataclass, which wins over the defaults.
        for key, value in given.items():
            if value is None:
                value = getattr(self.args, f"rdrop_{key}", _DEFAULTS[key])
            setattr(self, f"rdrop_{key}", value)
        _validate(self.rdrop_alpha, self.rdrop_num_passes, self.rdrop_every_k_steps,
                  self.rdrop_consistency, self.rdrop_fused_linear, self.rdrop_chunk_size)
        self.rdrop_alpha = float(self.rdrop_alpha)
        if self.compute_loss_func is not None:
            raise ValueError(
                f"{type(self).__name__} computes the R-Drop loss itself; it cannot be combined "
                "with compute_loss_func. Drop compute_loss_func, or subclass and override "
                "compute_loss."
            )
        if getattr(self.args, "n_gpu", 1) > 1:
            warnings.warn(
                f"{type(self).__name__}: several GPUs in one process (torch DataParallel) are not "
                "supported; the loss normalization assumes one device per process. Launch with "
                "torchrun or accelerate launch (DDP) instead.",
                UserWarning,
                stacklevel=2,
            )
        if not hasattr(Trainer, "loss_is_scaled_for_ga"):
            warnings.warn(
                f"{type(self).__name__} is tested with transformers 5; this Trainer has no "
                "loss_is_scaled_for_ga, so with gradient accumulation the loss scale may be off. "
                "Upgrade: pip install -U 'transformers>=5'.",
                UserWarning,
                stacklevel=2,
            )
        self._check_model_dropout()
        if self.rdrop_fused_linear:
            self._check_fused_model()
        self._fused_head_checked = False  # the numerical check runs at the first fused step
        self._rdrop_sums: Tensor | None = None  # (task, consistency) since the last log
        self._rdrop_window_start = 0

    # ------------------------------------------------------------------------------ checks
    def _check_model_dropout(self) -> None:
        model = self.model
        if model is None or active_dropout_rates(model):
            return
        config = getattr(model, "config", None)
        in_config = {}
        if config is not None and hasattr(config, "to_dict"):
            in_config = {k: v for k, v in config.to_dict().items()
                         if "dropout" in k and isinstance(v, (int, float))}
        warnings.warn(
            f"{type(self).__name__}: the model has no dropout with p > 0 "
            f"(config: {in_config or 'no dropout fields'}), so all R-Drop passes are identical, "
            "the consistency term is 0 and each step costs twice as much for nothing. Set the "
            "dropout probabilities in the model config (e.g. hidden_dropout_prob=0.1 or "
            "dropout=0.1) before creating the model.",
            UserWarning,
            stacklevel=3,
        )

    def _shifts_labels(self, model: nn.Module) -> bool:
        """True for causal LMs: logits at position t predict label t + 1 (HF shifts internally)."""
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            return False
        if getattr(self, "_loss_shifts_labels", False):  # the Trainer's own rule (v5)
            return True
        # The Trainer's rule misses causal LMs whose class name is not "...ForCausalLM" (e.g.
        # GPT2LMHeadModel): their loss still shifts, so rdrop shifts and counts them too.
        return type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()

    # ------------------------------------------------------------------------ normalization
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        """The Trainer's prefetch of one optimizer step's micro-batches, with the label count
        rdrop normalizes by: the Trainer's, or rdrop's own where the Trainer counts none (a
        ``forward`` without ``**kwargs``) or counts unshifted labels of a causal LM."""
        batches, num_items = super().get_batch_samples(  # type: ignore[misc]
            epoch_iterator, num_batches, device
        )
        if batches and "labels" in batches[0]:
            shift = self._shifts_labels(self.accelerator.unwrap_model(self.model))
            if num_items is None or (shift and not getattr(self, "_loss_shifts_labels", False)):
                num_items = self._count_items(batches, device, shift)
        return batches, num_items

    def _count_items(self, batches: list[Any], device: Any, shift: bool) -> Tensor | None:
        total = torch.zeros((), dtype=torch.long)
        for batch in batches:
            labels = batch.get("shift_labels", batch["labels"])
            if not isinstance(labels, Tensor):
                return None
            if labels.is_floating_point():  # regression: one row per sample
                total += labels.shape[0]
                continue
            if shift and "shift_labels" not in batch:
                labels = labels[..., 1:]
            total += labels.ne(IGNORE_INDEX).sum().cpu()
        total = total.to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def _loss_scale(self) -> int:
        """Under DDP with a global ``num_items_in_batch``, DDP averages gradients over processes:
        multiply by their number so the result is the global sum over the global count."""
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
            return max(self.accelerator.num_processes // tp, 1)
        return 1

    # ---------------------------------------------------------------------------- the loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """R-Drop loss in training; the parent's single-pass loss otherwise (eval, predict).

        .. math::
            \\mathcal{L} = \\frac{1}{n}\\sum_i \\Big[\\sum_{k=1}^m CE(P^k_i, y_i)
                + \\alpha\\, \\overline{D}(P^j_i, P^k_i)\\Big]

        over the counted labels ``i`` of this micro-batch, ``n = num_items_in_batch`` (the count
        over the accumulated, and under DDP global, batch) or the local count when it is None.
        With ``rdrop_fused_linear`` the same value comes from the output layer's input and
        weights (the returned outputs then hold logits with 0 positions).

        Args:
            model: the (possibly DDP-wrapped) model.
            inputs: the collated batch, with ``labels``.
            return_outputs: also return the first pass's model output.
            num_items_in_batch: counted labels of the whole accumulated batch.

        Returns:
            The loss, or ``(loss, outputs)``.

        Raises:
            ValueError: no ``labels`` in a training batch; logits whose batch dimension is not
                ``num_passes * batch``; a multi-label classification head; with
                ``rdrop_fused_linear``, a model whose logits are not its output layer applied to
                the layer's input (checked at the first fused step).
            TypeError: the model output holds no logits.
        """
        if not model.training:
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if "labels" not in inputs:
            raise ValueError(
                f"{type(self).__name__} needs 'labels' in every training batch (R-Drop's task term "
                f"is supervised); got keys {sorted(inputs)}."
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        shift_labels = inputs.pop("shift_labels", None)
        unwrapped = self.accelerator.unwrap_model(model)
        config = getattr(unwrapped, "config", None)
        if getattr(config, "problem_type", None) == "multi_label_classification":
            raise ValueError(
                f"{type(self).__name__} does not support multi-label classification (BCE heads); "
                "use rdrop.RDrop with a custom loss."
            )
        self._prepare_decoder_inputs(unwrapped, inputs, labels)

        rdrop_step = self.state.global_step % self.rdrop_every_k_steps == 0
        m = self.rdrop_num_passes if rdrop_step else 1
        b = batch_size_of(inputs)
        batch = duplicate_batch(inputs, m, batch_size=b) if m > 1 else inputs
        if self.rdrop_fused_linear:
            if not self._fused_head_checked:
                self._check_fused_head(unwrapped, inputs, b)
                self._fused_head_checked = True
            outputs, hidden = self._forward_hidden(model, unwrapped, batch, m, b)
            passes, target = self._align(unwrapped, hidden, labels, shift_labels)
            out = self._fused_loss(unwrapped, passes, target, num_items_in_batch)
        else:
            outputs = model(**batch)
            passes, target = self._align(unwrapped, self._split_logits(outputs, m, b), labels,
                                         shift_labels)
            out = self._rdrop_loss(passes, target, num_items_in_batch)
        scale = self._loss_scale() if num_items_in_batch is not None else 1
        # Normalized by num_items_in_batch: already scaled for accumulation. Otherwise a per-batch
        # mean, which the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        self._accumulate(out, scale)
        loss = out.loss * scale
        if not return_outputs:
            return loss
        first = split_batch(outputs, m)[0] if m > 1 else outputs
        return loss, first

    def _prepare_decoder_inputs(self, model: nn.Module, inputs: dict[str, Any],
                                labels: Tensor) -> None:
        """Encoder-decoder models build ``decoder_input_ids`` from ``labels``, which we popped."""
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

    def _align(self, model: nn.Module, passes: list[Tensor], labels: Tensor,
               shift_labels: Tensor | None) -> tuple[list[Tensor], Tensor]:
        """Per-pass outputs (logits or last hidden states) and the labels they predict."""
        if shift_labels is not None:
            return passes, shift_labels
        if self._shifts_labels(model):  # position t predicts label t + 1
            return [p[:, :-1] for p in passes], labels[:, 1:]
        return passes, labels

    def _split_logits(self, outputs: Any, m: int, b: int) -> list[Tensor]:
        try:
            logits = extract_logits(outputs)
        except TypeError as err:
            raise TypeError(
                f"{type(self).__name__}: the model returned no logits ({type(outputs).__name__}); "
                "R-Drop compares the logits of the passes. Return a ModelOutput with .logits, a "
                "dict with 'logits', or a tuple whose first item is the logits."
            ) from err
        if logits.dim() == 0 or logits.shape[0] != m * b:
            raise ValueError(
                f"{type(self).__name__}: expected logits with {m * b} rows ({m} passes x batch "
                f"{b}), got shape {tuple(logits.shape)}. The model must keep the batch dimension "
                "first and return logits (not a loss) as its first output."
            )
        return list(logits.split(b, dim=0))

    def _rdrop_loss(self, passes: list[Tensor], target: Tensor,
                    num_items_in_batch: Tensor | int | None) -> RDropOutput:
        consistency = self.rdrop_consistency
        if consistency is None:
            consistency = "mse" if target.is_floating_point() else "kl"
        num_items_in_batch = _scalar(num_items_in_batch)
        kwargs = {
            "ignore_index": IGNORE_INDEX,
            "label_smoothing": 0.0 if consistency == "mse" else self.args.label_smoothing_factor,
            "consistency": consistency,
            "num_items_in_batch": num_items_in_batch,
        }
        if len(passes) == 1:
            return _single_pass_loss(passes[0], target, reduction="mean", **kwargs)
        return multi_pass_rdrop_loss(passes, target, alpha=self.rdrop_alpha, **kwargs)

    # ------------------------------------------------------------------- fused output layer
    def _check_fused_model(self) -> None:
        """Refuse, at construction, models the fused loss cannot serve exactly."""
        model = self.model
        name = type(model).__name__
        config = getattr(model, "config", None)
        off = "Set rdrop_fused_linear=False."
        if not (getattr(config, "is_encoder_decoder", False) or self._shifts_labels(model)):
            raise ValueError(
                f"rdrop_fused_linear=True is for language models (causal LMs and encoder-decoder "
                f"LMs) whose logits come from one output layer; {name} is neither. {off}"
            )
        get_head = getattr(model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        if not isinstance(head, nn.Linear) or head.weight.dim() != 2:
            raise ValueError(
                f"rdrop_fused_linear=True needs the output layer as an nn.Linear "
                f"(model.get_output_embeddings()); {name} gives {type(head).__name__}. {off}"
            )
        configs = [config]
        if hasattr(config, "get_text_config"):
            configs.append(config.get_text_config())
        for cfg in configs:
            for key, identity in _LOGIT_TRANSFORMS.items():
                value = getattr(cfg, key, None)
                if value is not None and value != identity:
                    raise ValueError(
                        f"rdrop_fused_linear=True: {name} transforms its logits after the output "
                        f"layer (config.{key}={value!r}), which the fused loss would skip. {off}"
                    )
        if getattr(config, "is_encoder_decoder", False) and not hasattr(
                model, "prepare_decoder_input_ids_from_labels"):
            raise ValueError(
                f"rdrop_fused_linear=True: {name} has no prepare_decoder_input_ids_from_labels, "
                f"so its decoder inputs cannot be built without its own loss. {off}"
            )
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if getattr(self, "is_fsdp_enabled", False) or getattr(plugin, "zero_stage", 0) == 3:
            raise ValueError(
                "rdrop_fused_linear=True reads the output layer's weight outside the forward, "
                f"where FSDP and DeepSpeed ZeRO-3 keep it sharded. {off}"
            )

    def _check_fused_head(self, model: nn.Module, inputs: dict[str, Any], b: int) -> None:
        """Check, once, in eval mode on the first sample, that the model's logits are its output
        layer applied to that layer's input, as the fused loss assumes (no soft-capping,
        scaling or extra bias after it)."""
        sample = {k: v[:1] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == b else v
                  for k, v in inputs.items()}
        head = model.get_output_embeddings()
        seen: list[Tensor] = []
        handle = head.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        modes = [(mod, mod.training) for mod in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                logits = extract_logits(model(**sample)).float()
        finally:
            handle.remove()
            for mod, mode in modes:
                mod.train(mode)
        name = type(model).__name__
        if len(seen) != 1:
            raise ValueError(
                f"rdrop_fused_linear=True: {name} called its output layer {len(seen)} times in one "
                "forward; the fused loss needs exactly one call. Set rdrop_fused_linear=False."
            )
        w = head.weight
        mine = nn.functional.linear(seen[0].to(w.dtype), w, head.bias).float()
        # Half precision (weights or mixed-precision autocast of the model) rounds the model's
        # logits: compare at its resolution; in float32 the two are the same matmul.
        half = (w.dtype in (torch.float16, torch.bfloat16) or seen[0].dtype != w.dtype
                or bool(getattr(self.args, "bf16", False) or getattr(self.args, "fp16", False)))
        tol = (2e-2 if half else 1e-4) * max(1.0, logits.abs().max().item())
        diff = (mine - logits).abs().max().item() if mine.shape == logits.shape else math.inf
        if not diff <= tol:
            raise ValueError(
                f"rdrop_fused_linear=True: {name}'s logits are not its output layer applied to the "
                f"last hidden states (max |difference| {diff:.3g} > {tol:.3g} on one sample, "
                f"shapes {tuple(mine.shape)} and {tuple(logits.shape)}): the model transforms "
                "its logits after the layer (soft-capping, scaling, a final bias), which the "
                "fused loss would skip. Set rdrop_fused_linear=False."
            )

    def _forward_hidden(self, model: nn.Module, unwrapped: nn.Module, batch: dict[str, Any],
                        m: int, b: int) -> tuple[Any, list[Tensor]]:
        """One forward (through the DDP/accelerate wrapper) whose output layer projects no
        position; returns the model output and its input per pass, ``m x (b, T, H)``."""
        seen: list[Tensor] = []

        def take_input(_: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            seen.append(args[0])
            return (args[0][..., :0, :], *args[1:])  # project no position: no (N, V) logits

        handle = unwrapped.get_output_embeddings().register_forward_pre_hook(take_input)
        try:
            outputs = model(**batch)
        finally:
            handle.remove()
        name = type(unwrapped).__name__
        if len(seen) != 1:
            raise ValueError(
                f"rdrop_fused_linear=True: {name} called its output layer {len(seen)} times in one "
                "forward; the fused loss needs exactly one call. Set rdrop_fused_linear=False."
            )
        hidden = seen[0]
        if hidden.dim() != 3 or hidden.shape[0] != m * b:
            raise ValueError(
                f"rdrop_fused_linear=True: expected the output layer's input of {name} to be "
                f"({m * b}, seq, hidden) ({m} passes x batch {b}), got {tuple(hidden.shape)}. "
                "Set rdrop_fused_linear=False."
            )
        return outputs, list(hidden.split(b, dim=0))

    def _fused_loss(self, model: nn.Module, passes: list[Tensor], target: Tensor,
                    num_items_in_batch: Tensor | int | None) -> RDropOutput:
        head = model.get_output_embeddings()
        w, bias = head.weight, head.bias
        h = [p.to(w.dtype) for p in passes]  # the projection runs in the weight's dtype
        if len(h) == 1:  # a plain step of every_k_steps: the same chunking, CE only
            h = [h[0], h[0]]
        kwargs = {"bias": bias, "alpha": self.rdrop_alpha if len(passes) > 1 else 0.0,
                  "ignore_index": IGNORE_INDEX,
                  "label_smoothing": self.args.label_smoothing_factor,
                  "num_items_in_batch": _scalar(num_items_in_batch),
                  "chunk_size": self.rdrop_chunk_size}
        # Outside any autocast: the fused function manages its own fp32 accumulation.
        with torch.autocast(device_type=w.device.type, enabled=False):
            out = fused_linear_rdrop_loss(h[0], h[1], w, target, **kwargs)
        if len(passes) > 1:
            return out
        # The two "passes" are one tensor: its task term counts CE twice, KL is exactly 0.
        return RDropOutput(loss=out.loss / 2, task_loss=out.task_loss / 2,
                           consistency_loss=out.consistency_loss)

    # ------------------------------------------------------------------------------ logging
    def _accumulate(self, out: RDropOutput, scale: int) -> None:
        parts = torch.stack([out.task_loss.detach(), out.consistency_loss.detach()]).float()
        parts = parts * scale
        if not self.loss_is_scaled_for_ga:
            parts = parts / getattr(self, "current_gradient_accumulation_steps", 1)
        if self._rdrop_sums is None:
            self._rdrop_sums = torch.zeros_like(parts)
            self._rdrop_window_start = self.state.global_step
        self._rdrop_sums += parts

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``task_loss`` and ``consistency_loss`` (before alpha), averaged over the logging
        window like ``loss``, to the Trainer's training logs."""
        if "loss" in logs and self._rdrop_sums is not None:
            steps = max(self.state.global_step - self._rdrop_window_start, 1)
            gathered = nested_gather(self._rdrop_sums, self.args.parallel_mode)
            task, cons = (gathered.reshape(-1, 2).mean(0) / steps).tolist()
            logs["task_loss"] = task
            logs["consistency_loss"] = cons
            self._rdrop_sums = None
        super().log(logs, start_time)  # type: ignore[misc]


class RDropTrainer(_RDropMixin, Trainer):
    """``transformers.Trainer`` whose training loss is R-Drop.

    Everything else is the Trainer's: pass the usual arguments, plus optionally the R-Drop
    hyperparameters (otherwise read from :class:`RDropTrainingArguments`, else the defaults).

    Args:
        *args, **kwargs: as for ``transformers.Trainer``.
        rdrop_alpha: consistency weight ``>= 0`` (default 1.0).
        rdrop_num_passes: dropout passes per sample (default 2).
        rdrop_every_k_steps: R-Drop on every k-th optimizer step (default 1).
        rdrop_consistency: ``"kl"``, ``"js"``, ``"mse"`` or ``None`` (``"mse"`` for float labels).
        rdrop_fused_linear: language models (causal, or encoder-decoder): compute the loss from
            the output layer's input ``h`` and its weight ``W`` and bias ``b`` with
            :func:`rdrop.fused_linear.fused_linear_rdrop_loss`, ``rdrop_chunk_size`` tokens at a
            time, so the logits ``z = h W^T + b`` of the ``2 x tokens`` rows are never built
            (default False). The same loss and gradients as the logits path (tested to 1e-6 in
            float32); needs ``rdrop_num_passes=2`` and KL. The head runs in the weight's dtype
            outside autocast.
        rdrop_chunk_size: tokens per chunk of the fused loss (default 1024).

    Logs ``task_loss`` and ``consistency_loss`` next to ``loss`` (``loss = task_loss + alpha *
    consistency_loss`` on R-Drop steps).

    Raises:
        TypeError, ValueError: invalid hyperparameters; ``compute_loss_func`` given.
        ValueError: with ``rdrop_fused_linear``: more than 2 passes or a non-KL consistency; a
            model that is not a language model with an ``nn.Linear`` output layer, or that
            transforms its logits after it (a config soft-cap or logit scale at construction; at
            the first training step, the model's logits differ on one sample, in eval mode, from
            the layer applied to its input); FSDP or DeepSpeed ZeRO-3.

    Example:
        >>> import warnings
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments
        >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
        ...                  num_attention_heads=2, intermediate_size=32, num_labels=3)
        >>> args = RDropTrainingArguments(output_dir="/tmp/rdrop-doctest", rdrop_alpha=0.5,
        ...                               report_to="none", use_cpu=True)
        >>> trainer = RDropTrainer(model=BertForSequenceClassification(cfg), args=args,
        ...                        rdrop_num_passes=3)
        >>> trainer.rdrop_alpha, trainer.rdrop_num_passes
        (0.5, 3)

        A causal LM with the fused output layer:

        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2))
        >>> trainer = RDropTrainer(model=lm, args=args, rdrop_fused_linear=True)
        >>> trainer.rdrop_fused_linear, trainer.rdrop_chunk_size
        (True, 1024)
    """


class RDropSeq2SeqTrainer(_RDropMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` whose training loss is R-Drop over the decoder tokens.

    Same arguments as :class:`RDropTrainer`; ``decoder_input_ids`` are built from the labels
    (``model.prepare_decoder_input_ids_from_labels``) when the collator did not provide them.
    Evaluation with ``predict_with_generate`` is unchanged.
    """

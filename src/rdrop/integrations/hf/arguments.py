"""The R-Drop training arguments: a dataclass mixin over the HF arguments, and its checks."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from rdrop.losses.checks import (
    ALPHA,
    CHUNK_SIZE,
    STEP_CONSISTENCIES,
    check_alpha,
    check_chunk_size,
    check_consistency,
    check_positive_int,
)
from rdrop.training.options import StepOptions

__all__ = [
    "DEFAULTS",
    "RDropArgumentsMixin",
    "RDropSeq2SeqTrainingArguments",
    "RDropTrainingArguments",
    "class_smoothing",
    "step_options",
    "validate_rdrop_options",
]

# The R-Drop options of the trainers, by the name they have without the ``rdrop_`` prefix: the
# one place their defaults are named (the dataclass fields below and the trainers read them).
DEFAULTS: dict[str, Any] = {"alpha": ALPHA, "num_passes": 2, "every_k_steps": 1,
                            "alpha_warmup_steps": 0, "consistency": None,
                            "fused_linear": False, "chunk_size": CHUNK_SIZE, "noise": "dropout",
                            "start_step": 0, "second_pass_fraction": 1.0}


def _check_consistency(consistency: Any) -> None:
    if consistency is not None:
        try:
            check_consistency(consistency, name="rdrop_consistency", allowed=STEP_CONSISTENCIES)
        except ValueError as err:
            raise ValueError(f"{err} Or None (automatic: 'bernoulli' for a config's "
                             "problem_type='multi_label_classification', 'mse' for regression "
                             "heads, 'kl' otherwise).") from None


def _check_chunk_size(chunk_size: Any) -> None:
    if chunk_size is None:
        raise TypeError("rdrop_chunk_size must be a positive int (tokens per chunk), got None.")
    check_chunk_size(chunk_size, name="rdrop_chunk_size")


# One check per option that is not the step's, each naming the ``rdrop_...`` argument; the
# step's options (and every rule between them) are checked by rdrop.training.options.StepOptions.
_CHECKS: dict[str, Callable[[Any], Any]] = {
    "alpha": lambda v: check_alpha(v, name="rdrop_alpha"),
    "every_k_steps": lambda v: check_positive_int("rdrop_every_k_steps", v, 1),
    "alpha_warmup_steps": lambda v: check_positive_int("rdrop_alpha_warmup_steps", v, 0),
    "consistency": _check_consistency,
    "chunk_size": _check_chunk_size,
    "start_step": lambda v: check_positive_int("rdrop_start_step", v, 0),
}


def validate_rdrop_options(options: dict[str, Any], *, only: Collection[str] | None = None,
                           label_smoothing: float = 0.0) -> StepOptions:
    """Raise a specific error, naming the ``rdrop_...`` argument, for each invalid option.

    Args:
        options: values keyed as :data:`DEFAULTS` (``alpha``, ``num_passes``, ...).
        only: check these of the options that are not the step's alone (values already checked
            elsewhere are skipped); the step's options are always checked, with their rules.
        label_smoothing: the Trainer's ``label_smoothing_factor`` (checked by the caller).

    Returns:
        The step's options (:func:`step_options`).

    Raises:
        TypeError, ValueError: the message names the argument and the allowed values.
    """
    for key, check in _CHECKS.items():
        if only is None or key in only:
            check(options[key])
    return step_options(options, label_smoothing=label_smoothing)


def class_smoothing(consistency: str, label_smoothing: float) -> float:
    """The Trainer's ``label_smoothing_factor`` smooths class heads only: 0 for ``"mse"``
    (regression) and ``"bernoulli"`` (multi-label) heads.

    Example:
        >>> class_smoothing("mse", 0.1), class_smoothing("kl", 0.1)
        (0.0, 0.1)
    """
    return 0.0 if consistency in ("mse", "bernoulli") else label_smoothing


def step_options(options: dict[str, Any], *, consistency: str | None = None,
                 label_smoothing: float = 0.0) -> StepOptions:
    """The trainers' options (keyed as :data:`DEFAULTS`) as the step's, with the Trainer's
    conventions: ``ignore_index=-100``; ``label_smoothing_factor`` smooths class heads only
    (:func:`class_smoothing`); ``rdrop_chunk_size`` chunks the fused head's loss only (the logits
    path is not chunked).

    Args:
        options: values keyed as :data:`DEFAULTS`.
        consistency: the consistency chosen for a batch (default: ``options["consistency"]``,
            else ``"kl"``).
        label_smoothing: the Trainer's ``label_smoothing_factor``.

    Raises:
        TypeError, ValueError: as :class:`rdrop.training.options.StepOptions`, naming the
            ``rdrop_...`` arguments.

    Example:
        >>> o = step_options({**DEFAULTS, "consistency": "mse"}, label_smoothing=0.1)
        >>> o.consistency, o.label_smoothing, o.chunk_size
        ('mse', 0.0, None)
    """
    fused = options["fused_linear"]
    consistency = consistency or options["consistency"] or "kl"
    return StepOptions(consistency=consistency,
                       label_smoothing=class_smoothing(consistency, label_smoothing),
                       num_passes=options["num_passes"],
                       second_pass_fraction=options["second_pass_fraction"],
                       noise=options["noise"], fused_linear=fused,
                       chunk_size=options["chunk_size"] if fused is True else None,
                       prefix="rdrop_")


@dataclass
class RDropArgumentsMixin:
    """The ``rdrop_...`` fields, to list FIRST among the bases of an arguments dataclass.

    Listed first, its fields come after the parent's, so positional use of the parent
    (``RDropTrainingArguments("out")`` meaning ``output_dir="out"``) keeps working. Its
    ``__post_init__`` validates them, then runs the parent's.
    """

    rdrop_alpha: float = field(
        default=DEFAULTS["alpha"],
        metadata={"help": "Weight of the R-Drop consistency term (paper: 5 translation, "
                          "0.7 summarization, 1 language modeling, 0.1-1 GLUE)."},
    )
    rdrop_num_passes: int = field(
        default=DEFAULTS["num_passes"], metadata={"help": "Dropout passes per sample (m >= 2)."}
    )
    rdrop_every_k_steps: int = field(
        default=DEFAULTS["every_k_steps"],
        metadata={"help": "Apply R-Drop on every k-th optimizer step; other steps are plain "
                          "single-pass steps."},
    )
    rdrop_alpha_warmup_steps: int = field(
        default=DEFAULTS["alpha_warmup_steps"],
        metadata={"help": "Ramp alpha linearly from alpha/n to alpha over the first n optimizer "
                          "steps (0: no warm-up)."},
    )
    rdrop_consistency: str | None = field(
        default=DEFAULTS["consistency"],
        metadata={"help": "'kl' (paper), 'js', 'mse', 'bernoulli', or None: 'bernoulli' for "
                          "problem_type='multi_label_classification', 'mse' for regression "
                          "heads (float labels), 'kl' otherwise."},
    )
    rdrop_fused_linear: bool = field(
        default=DEFAULTS["fused_linear"],
        metadata={"help": "Language models: compute the loss from the last hidden states and the "
                          "output layer in chunks, never building the full logits (saves the "
                          "(2 x tokens, vocab) logits and their gradients). KL, 2 passes."},
    )
    rdrop_chunk_size: int = field(
        default=DEFAULTS["chunk_size"],
        metadata={"help": "Rows (tokens) per chunk of the fused loss (rdrop_fused_linear)."},
    )
    rdrop_noise: str = field(
        default=DEFAULTS["noise"],
        metadata={"help": "Where the passes' randomness comes from (rdrop.training.noise): "
                          "'dropout' (the model's own), 'embedding:5' (NEFTune-style embedding "
                          "noise), 'dropout:0.1' (the model's dropout slots switched on at 0.1), "
                          "'lora:0.1' (PEFT LoRA dropout). Training passes only."},
    )
    rdrop_start_step: int = field(
        default=DEFAULTS["start_step"],
        metadata={"help": "Plain single-pass training before this optimizer step, R-Drop from "
                          "it on (every_k_steps and the alpha warm-up count from it). For a "
                          "start chosen by validation use RDropAutoStartCallback."},
    )
    rdrop_second_pass_fraction: float = field(
        default=DEFAULTS["second_pass_fraction"],
        metadata={"help": "The second pass (and the consistency term) on the first "
                          "ceil(r * batch) rows of each batch only, 0 < r <= 1 (1: all rows)."},
    )

    def rdrop_options(self) -> dict[str, Any]:
        """The ``rdrop_...`` fields keyed as :data:`DEFAULTS`."""
        return {key: getattr(self, f"rdrop_{key}") for key in DEFAULTS}

    def __post_init__(self) -> None:
        validate_rdrop_options(self.rdrop_options())
        super().__post_init__()  # type: ignore[misc]


@dataclass
class RDropTrainingArguments(RDropArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` plus the R-Drop hyperparameters, validated at construction.

    Args:
        rdrop_alpha: consistency weight ``>= 0`` (default 1.0), under rdrop's per-row
            normalization (:func:`rdrop.rdrop_loss`).
        rdrop_num_passes: dropout passes ``m >= 2`` (default 2).
        rdrop_every_k_steps: R-Drop on every k-th optimizer step (default 1: every step).
        rdrop_alpha_warmup_steps: linear alpha warm-up over the first n optimizer steps
            (default 0), by :class:`rdrop.Schedule`.
        rdrop_consistency: ``"kl"``, ``"js"``, ``"mse"``, ``"bernoulli"`` or ``None``
            (automatic: ``"bernoulli"`` for ``problem_type="multi_label_classification"``,
            ``"mse"`` for float labels, ``"kl"`` otherwise).
        rdrop_fused_linear: language models only: fuse the output layer into the loss so the
            full logits are never built (default False; see :class:`RDropTrainer`).
        rdrop_chunk_size: tokens per chunk of the fused loss (default 256,
            :data:`rdrop.losses.checks.CHUNK_SIZE`).
        rdrop_noise: the passes' randomness (default ``"dropout"``, the model's own; see
            :mod:`rdrop.training.noise`: ``"embedding:5"``, ``"dropout:0.1"``, ``"lora:0.1"``).
        rdrop_start_step: plain training before this optimizer step (default 0), by
            :class:`rdrop.Schedule`; :class:`RDropAutoStartCallback` chooses it from
            validation instead.
        rdrop_second_pass_fraction: the second pass on the first ``ceil(r * B)`` rows of each
            batch (default 1.0), by :func:`rdrop.subset_rdrop_loss`.
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
        ValueError: rdrop_alpha must be a finite number >= 0, got -1.0. ...
    """


@dataclass
class RDropSeq2SeqTrainingArguments(RDropArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the R-Drop hyperparameters (see
    :class:`RDropTrainingArguments`; the paper's alpha for translation is 5).

    Example:
        >>> from rdrop.integrations.hf import RDropSeq2SeqTrainingArguments
        >>> args = RDropSeq2SeqTrainingArguments(output_dir="out", rdrop_alpha=5.0,
        ...                                      predict_with_generate=True, report_to="none")
        >>> args.rdrop_alpha, args.predict_with_generate
        (5.0, True)
    """

"""``RDropTrainer`` and ``RDropSeq2SeqTrainer``: the HF trainers whose training loss is R-Drop.

The mixin composes the jobs of this package: arguments (:mod:`.arguments`), label counting
(:mod:`.labels`), the logits path (:mod:`.logits`), the fused head (:mod:`.fused`), logging
(:mod:`.logs`) and the guards (:mod:`.guards`). When R-Drop runs and with which alpha is
:class:`rdrop.Schedule` of the optimizer step (``state.global_step``, the same for
every micro-batch of an accumulated step).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from transformers import Seq2SeqTrainer, Trainer
from transformers.trainer_pt_utils import nested_gather

from rdrop.losses.checks import check_label_smoothing
from rdrop.training.batching import ConcatLayout, batch_size_of
from rdrop.training.noise import NoiseHandle, attach_noise
from rdrop.training.options import StepOptions
from rdrop.training.schedule import RDropStep, Schedule
from rdrop.training.step import PassLoss, TrainingStep

from .arguments import DEFAULTS, class_smoothing, validate_rdrop_options
from .callbacks import RDropAutoStartCallback, check_auto_start
from .fused import FusedLoss, HiddenCapture, check_fused_head, check_fused_model
from .guards import (
    check_checkpointing_args,
    check_checkpointing_model,
    check_checkpointing_noise,
    no_dropout_message,
)
from .labels import align, count_items, first_count, shifts_labels
from .logits import check_packed_batch, logits_of, prepare_decoder_inputs
from .logs import PartsWindow

__all__ = ["RDropSeq2SeqTrainer", "RDropTrainer", "RDropTrainerMixin"]


class RDropTrainerMixin:
    """The R-Drop ``compute_loss`` shared by the trainers; list it before the HF trainer class
    among the bases (``class T(RDropTrainerMixin, SomeTrainer)``)."""

    # Attributes the HF Trainer provides (declared for type checkers).
    args: Any
    state: Any
    model: nn.Module
    accelerator: Any
    compute_loss_func: Any
    current_gradient_accumulation_steps: int
    loss_is_scaled_for_ga: bool | None

    def _rdrop_setting(name: str) -> Any:  # type: ignore[misc]
        def get(self: RDropTrainerMixin) -> Any:
            return self._rdrop_settings[name]

        def set_(self: RDropTrainerMixin, value: Any) -> None:
            raise AttributeError(
                f"rdrop_{name} is fixed when the trainer is built (the step and the schedule "
                f"were made from it, and would not see a new value); pass rdrop_{name}=... to "
                "the trainer or set it in RDropTrainingArguments.")

        return property(get, set_, doc=f"The trainer's ``rdrop_{name}`` (read-only).")

    rdrop_alpha = _rdrop_setting("alpha")
    rdrop_num_passes = _rdrop_setting("num_passes")
    rdrop_every_k_steps = _rdrop_setting("every_k_steps")
    rdrop_alpha_warmup_steps = _rdrop_setting("alpha_warmup_steps")
    rdrop_consistency = _rdrop_setting("consistency")
    rdrop_fused_linear = _rdrop_setting("fused_linear")
    rdrop_chunk_size = _rdrop_setting("chunk_size")
    rdrop_noise = _rdrop_setting("noise")
    rdrop_start_step = _rdrop_setting("start_step")
    rdrop_second_pass_fraction = _rdrop_setting("second_pass_fraction")
    del _rdrop_setting

    def __init__(
        self,
        *args: Any,
        rdrop_alpha: float | None = None,
        rdrop_num_passes: int | None = None,
        rdrop_every_k_steps: int | None = None,
        rdrop_alpha_warmup_steps: int | None = None,
        rdrop_consistency: str | None = None,
        rdrop_fused_linear: bool | None = None,
        rdrop_chunk_size: int | None = None,
        rdrop_noise: str | None = None,
        rdrop_start_step: int | None = None,
        rdrop_second_pass_fraction: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        given = {"alpha": rdrop_alpha, "num_passes": rdrop_num_passes,
                 "every_k_steps": rdrop_every_k_steps,
                 "alpha_warmup_steps": rdrop_alpha_warmup_steps,
                 "consistency": rdrop_consistency, "fused_linear": rdrop_fused_linear,
                 "chunk_size": rdrop_chunk_size, "noise": rdrop_noise,
                 "start_step": rdrop_start_step,
                 "second_pass_fraction": rdrop_second_pass_fraction}
        # The constructor wins over the arguments dataclass (checked at its construction),
        # which wins over the defaults: only the constructor's values are checked here.
        options = {key: value if value is not None
                   else getattr(self.args, f"rdrop_{key}", DEFAULTS[key])
                   for key, value in given.items()}
        smoothing = check_label_smoothing(self.args.label_smoothing_factor,
                                          name="label_smoothing_factor")
        # The step's options, with every rule between them: checked once, here. A batch whose
        # automatic consistency differs gets them re-made once (see _rdrop_training_step).
        self.rdrop_step_options = validate_rdrop_options(
            options, only=[k for k, v in given.items() if v is not None],
            label_smoothing=smoothing)
        self._rdrop_step: tuple[tuple[Any, ...], TrainingStep, Callable[..., Any]] | None = None
        self._rdrop_batch: tuple[dict[str, Any], Tensor | None] | None = None
        options["alpha"] = float(options["alpha"])
        options["second_pass_fraction"] = float(options["second_pass_fraction"])
        self._rdrop_settings = options  # read by the rdrop_* properties, never set again
        owner = type(self).__name__
        if self._rdrop_auto_start() is not None:
            check_auto_start(self.args, self.rdrop_start_step, owner)
        self._rdrop_num_items_in_subset: Tensor | None = None
        if self.compute_loss_func is not None:
            raise ValueError(
                f"{owner} computes the R-Drop loss itself; it cannot be combined with "
                "compute_loss_func. Drop compute_loss_func, or subclass and override "
                "compute_loss."
            )
        check_checkpointing_args(self.args, owner)
        if getattr(self.args, "n_gpu", 1) > 1:
            warnings.warn(
                f"{owner}: several GPUs in one process (torch DataParallel) are not supported; "
                "the loss normalization assumes one device per process. Launch with torchrun "
                "or accelerate launch (DDP) instead.",
                UserWarning,
                stacklevel=2,
            )
        if self.rdrop_step_options.noise.kind == "embedding" and getattr(
                self.args, "neftune_noise_alpha", None):
            raise ValueError(
                f"{owner}: neftune_noise_alpha={self.args.neftune_noise_alpha} and rdrop_noise="
                f"{self.rdrop_noise!r} would both add noise to the input embeddings. Keep one: "
                f"rdrop_noise='embedding:{self.args.neftune_noise_alpha:g}' (each R-Drop pass "
                "draws its own, scaled by one copy's length on packed batches) and "
                "neftune_noise_alpha=None."
            )
        # Where the passes' randomness comes from (rdrop.training.noise): attached now, so a model
        # that cannot take it is refused here, naming its modules.
        self._rdrop_noise: NoiseHandle | None = None
        if self.model is not None:
            self._rdrop_noise = attach_noise(self.model, self.rdrop_step_options.noise)
            if not self._rdrop_noise.adds_randomness:
                message = no_dropout_message(self.model, owner)
                if message:
                    warnings.warn(message, UserWarning, stacklevel=2)
        if self.rdrop_fused_linear:
            plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
            check_fused_model(
                self.model, is_language_model=self._is_language_model(self.model),
                sharded=bool((getattr(self, "is_fsdp_enabled", False)
                              and not getattr(self.accelerator, "is_fsdp2", False))
                             or getattr(plugin, "zero_stage", 0) == 3),
                compiled=bool(getattr(self.args, "torch_compile", False)
                              or hasattr(self.model, "_orig_mod")))
        self._rdrop_first_step_checked = False  # model checks that run at the first step
        self._rdrop_window = PartsWindow()

    # ------------------------------------------------------------------------------ helpers
    def _shifts_labels(self, model: nn.Module) -> bool:
        return shifts_labels(model, getattr(self, "_loss_shifts_labels", False))

    def _is_language_model(self, model: nn.Module) -> bool:
        encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        return bool(encoder_decoder or self._shifts_labels(model))

    def _half_precision(self) -> bool:
        return bool(getattr(self.args, "bf16", False) or getattr(self.args, "fp16", False))

    # ------------------------------------------------------------------------ normalization
    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> Any:
        """The Trainer's prefetch of one optimizer step's micro-batches, with the label count
        rdrop normalizes by: the Trainer's, or rdrop's own where the Trainer counts none (a
        ``forward`` without ``**kwargs``), counts unshifted labels of a causal LM, or counts
        the ``N * D`` values of ``(N, D)`` regression labels (rdrop's MSE loss is a mean over
        the ``N`` samples)."""
        batches, num_items = super().get_batch_samples(  # type: ignore[misc]
            epoch_iterator, num_batches, device
        )
        self._rdrop_num_items_in_subset = None
        if batches and "labels" in batches[0]:
            shift = self._shifts_labels(self.accelerator.unwrap_model(self.model))
            labels = batches[0]["labels"]
            regression = isinstance(labels, Tensor) and labels.is_floating_point()
            if (num_items is None or regression
                    or (shift and not getattr(self, "_loss_shifts_labels", False))):
                num_items = count_items(batches, shift)
                if num_items is not None:
                    num_items = num_items.to(device)
                    if self.args.average_tokens_across_devices and self.args.world_size > 1:
                        num_items = self.accelerator.gather(num_items).sum()
            if num_items is not None and self.rdrop_second_pass_fraction < 1.0:
                # N_S of rdrop.losses.subset: the counted labels of each micro-batch's subset rows,
                # over the whole accumulated (and, as num_items, global) batch.
                subset = count_items(batches, shift, fraction=self.rdrop_second_pass_fraction)
                if subset is not None:
                    subset = subset.to(device)
                    if self.args.average_tokens_across_devices and self.args.world_size > 1:
                        subset = self.accelerator.gather(subset).sum()
                self._rdrop_num_items_in_subset = subset
        return batches, num_items

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
        r"""R-Drop loss in training; the parent's single-pass loss otherwise (eval, predict).

        .. math::
            \mathcal{L} = \frac{1}{n}\sum_i \Big[\sum_{k=1}^m CE(P^k_i, y_i)
                + \alpha_s\, \overline{D}(P^j_i, P^k_i)\Big]

        over the counted labels ``i`` of this micro-batch, ``n = num_items_in_batch`` (the count
        over the accumulated, and under DDP global, batch) or the local count when it is None;
        ``alpha_s`` and whether R-Drop runs at all (else ``m = 1``) come from
        :class:`rdrop.Schedule` at the optimizer step ``s = state.global_step``.
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
                ``num_passes * batch``; checkpointing
                without the RNG state; a packed batch whose varlen metadata does not describe
                the duplicated tokens; with ``rdrop_fused_linear``, a model whose logits are
                not its output layer applied to the layer's input (checked at the first step).
            TypeError: the model output holds no logits.
        """
        if not model.training:
            return super().compute_loss(  # type: ignore[misc]
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        owner = type(self).__name__
        if "labels" not in inputs:
            raise ValueError(
                f"{owner} needs 'labels' in every training batch (R-Drop's task term is "
                f"supervised); got keys {sorted(inputs)}."
            )
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        shift_labels = inputs.pop("shift_labels", None)
        unwrapped = self.accelerator.unwrap_model(model)
        prepare_decoder_inputs(unwrapped, inputs, labels)
        if not self._rdrop_first_step_checked:
            check_checkpointing_model(unwrapped, owner)
            check_checkpointing_noise(
                unwrapped, self.rdrop_noise, owner=owner,
                plain_steps=bool(self.rdrop_start_step or self.rdrop_every_k_steps > 1
                                 or self._rdrop_auto_start() is not None))

        schedule = self._rdrop_schedule()
        step, call = self._rdrop_training_step(model, unwrapped, labels)
        plan = step.plan(schedule)
        m = plan.passes
        # One forward over m copies (rdrop.training.batching's rule: dim 0, or the tokens of a pack,
        # with cu_seq_lens_q/k offset and seq_idx renumbered), by rdrop.training.step like every
        # entry point.
        subset = self._rdrop_num_items_in_subset if num_items_in_batch is not None else None
        self._rdrop_batch = (inputs, shift_labels)  # what the step's hooks read of this batch
        try:
            result = step.run(call, (), inputs, labels, plan,
                              num_items_in_batch=first_count(num_items_in_batch),
                              num_items_in_subset=first_count(subset), module=unwrapped)
        finally:
            self._rdrop_batch = None
        out, passes, target = result.out, result.passes, result.target
        self._rdrop_first_step_checked = True
        scale = self._loss_scale() if num_items_in_batch is not None else 1
        # Normalized by num_items_in_batch: already scaled for accumulation. Otherwise a per-batch
        # mean, which the Trainer divides by the accumulation steps.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        weight = scale if self.loss_is_scaled_for_ga else (
            scale / getattr(self, "current_gradient_accumulation_steps", 1))
        self._rdrop_window.add(out, passes=m, weight=weight, step=self.state.global_step)
        self._rdrop_observe(unwrapped, inputs, passes[0].detach(), target)
        loss = out.loss * scale
        if not return_outputs:
            return loss
        return loss, result.first_output()

    def _rdrop_auto_start(self) -> RDropAutoStartCallback | None:
        """The automatic-start callback among the trainer's callbacks (looked up at every step:
        resuming from a checkpoint replaces the callback object)."""
        handler = getattr(self, "callback_handler", None)
        for callback in getattr(handler, "callbacks", ()):
            if isinstance(callback, RDropAutoStartCallback):
                return callback
        return None

    def _rdrop_schedule(self) -> RDropStep:
        """:meth:`rdrop.Schedule.decision` at ``state.global_step``, from
        ``rdrop_start_step`` or, with a start callback, from the step its rule fired at (plain
        steps until then). The schedule is built (and checked) once per start step."""
        auto = self._rdrop_auto_start()
        start = self.rdrop_start_step if auto is None else auto.start_step
        if start is None:
            return RDropStep(active=False, alpha=0.0)
        schedule = getattr(self, "_rdrop_schedule_for", None)
        if schedule is None or schedule.start != start:
            schedule = Schedule(self.rdrop_alpha, self.rdrop_every_k_steps,
                                self.rdrop_alpha_warmup_steps, start)
            self._rdrop_schedule_for = schedule
        return schedule.decision(self.state.global_step)

    def _rdrop_training_step(self, model: nn.Module, unwrapped: nn.Module, labels: Tensor
                             ) -> tuple[TrainingStep, Callable[..., Any]]:
        """The trainer's :class:`rdrop.training.step.TrainingStep` and what it calls for a
        forward: the trainer's loss (logits, or the fused output layer), the causal shift, and
        the packed-batch (and, at the first fused step, output layer) checks.

        Built once and kept while what it captures stays the same (the model as called and
        unwrapped, the noise source, the step's options with this batch's consistency); the
        batch's own inputs reach its hooks through ``_rdrop_batch``. The batch comes from the
        collator, every tensor batched along dim 0, so the wrapper's once-only input check is
        not run."""
        options = self.rdrop_step_options
        consistency = options.consistency
        if not options.fused_linear and self.rdrop_consistency is None:
            problem = getattr(getattr(unwrapped, "config", None), "problem_type", None)
            consistency = ("bernoulli" if problem == "multi_label_classification" else
                           "mse" if labels.is_floating_point() else "kl")
        if self._rdrop_noise is None:  # the model came later (model_init)
            self._rdrop_noise = attach_noise(unwrapped, options.noise)
        key = (model, unwrapped, self._rdrop_noise, options)
        cached = self._rdrop_step
        if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)) and (
                cached[1].options.consistency == consistency):
            return cached[1], cached[2]
        if consistency != options.consistency:  # automatic, so the options' are "kl"'s
            options = dataclasses.replace(
                options, consistency=consistency,
                label_smoothing=class_smoothing(consistency, options.label_smoothing),
                prefix="rdrop_")
        step, call = self._rdrop_build_step(model, unwrapped, options)
        self._rdrop_step = (key, step, call)
        return step, call

    def _rdrop_build_step(self, model: nn.Module, unwrapped: nn.Module, options: StepOptions
                          ) -> tuple[TrainingStep, Callable[..., Any]]:
        owner = type(self).__name__
        shift = self._shifts_labels(unwrapped)

        def check_batch(_: tuple[Any, ...], batch: dict[str, Any],
                        layout: ConcatLayout | None) -> None:
            check_packed_batch(unwrapped, batch, layout, owner)
            if options.fused_linear and not self._rdrop_first_step_checked:
                inputs = self._rdrop_inputs()[0]
                b = layout.batch_size if layout is not None else batch_size_of(inputs)
                check_fused_head(unwrapped, inputs, b, half_precision=self._half_precision())

        def align_batch(passes: list[Tensor], target: Tensor) -> tuple[list[Tensor], Tensor]:
            return align(passes, target, self._rdrop_inputs()[1], shift)

        loss: PassLoss | None = None
        if options.fused_linear:
            capture = HiddenCapture(model, unwrapped)
            loss = FusedLoss(unwrapped, label_smoothing=options.label_smoothing,
                             chunk_size=options.chunk_size)  # type: ignore[arg-type]
            call: Callable[..., Any] = capture
            logits_fn: Callable[[Any], Tensor] = capture.hidden
        else:
            call, logits_fn = model, lambda outputs: logits_of(outputs, owner)
        assert self._rdrop_noise is not None  # attached by _rdrop_training_step
        step = TrainingStep(options, loss=loss, logits_fn=logits_fn, check_inputs=False,
                            check_batch=check_batch, pass_context=self._rdrop_noise.pass_context,
                            align=align_batch)
        return step, call

    def _rdrop_inputs(self) -> tuple[dict[str, Any], Tensor | None]:
        """The batch the step runs on (its inputs without labels, and its ``shift_labels``)."""
        if self._rdrop_batch is None:
            raise RuntimeError("the R-Drop step's hooks run inside compute_loss only.")
        return self._rdrop_batch

    def _rdrop_observe(self, model: nn.Module, inputs: dict[str, Any], first_pass: Tensor,
                       target: Tensor) -> None:
        """Called after each training loss with the first pass (logits, or the output layer's
        input with ``rdrop_fused_linear``) and its target: a place for a parent trainer's
        training metrics (see :class:`rdrop.integrations.trl.RDropSFTTrainer`)."""

    # ------------------------------------------------------------------------------ logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add ``task_loss``, ``consistency_loss`` (before alpha) and ``task_loss_per_pass``
        (comparable to ``eval_loss``), averaged over the logging window like ``loss``, to the
        Trainer's training logs."""
        if "loss" in logs:
            logs.update(self._rdrop_window.pop(
                self.state.global_step, lambda t: nested_gather(t, self.args.parallel_mode)))
        super().log(logs, start_time)  # type: ignore[misc]


class RDropTrainer(RDropTrainerMixin, Trainer):
    """``transformers.Trainer`` whose training loss is R-Drop.

    Everything else is the Trainer's: pass the usual arguments, plus optionally the R-Drop
    hyperparameters (otherwise read from :class:`RDropTrainingArguments`, else the defaults).

    Args:
        *args, **kwargs: as for ``transformers.Trainer``.
        rdrop_alpha: consistency weight ``>= 0`` (default 1.0).
        rdrop_num_passes: dropout passes per sample (default 2).
        rdrop_every_k_steps: R-Drop on every k-th optimizer step (default 1).
        rdrop_alpha_warmup_steps: linear alpha warm-up over the first n optimizer steps
            (default 0), by :class:`rdrop.Schedule`.
        rdrop_consistency: ``"kl"``, ``"js"``, ``"mse"``, ``"bernoulli"`` or ``None``
            (automatic: ``"bernoulli"`` when the model's config has
            ``problem_type="multi_label_classification"``, i.e. a sigmoid head trained with
            BCE: both passes' BCE plus the per-label Bernoulli KL,
            :func:`rdrop.multilabel_rdrop_loss`; ``"mse"`` for float labels; ``"kl"``
            otherwise).
        rdrop_fused_linear: language models (causal, or encoder-decoder): compute the loss from
            the output layer's input ``h`` and its weight ``W`` and bias ``b`` with
            :func:`rdrop.losses.fused_linear.fused_linear_rdrop_loss`, ``rdrop_chunk_size`` tokens
            at a time, so the logits ``z = h W^T + b`` of the ``2 x tokens`` rows are never built
            (default False). The same loss and gradients as the logits path (tested to 1e-6 in
            float32); needs ``rdrop_num_passes=2`` and KL. The head runs in the weight's dtype
            outside autocast.
        rdrop_chunk_size: tokens per chunk of the fused loss (default 256,
            :data:`rdrop.losses.checks.CHUNK_SIZE`).
        rdrop_noise: where the passes' randomness comes from (:mod:`rdrop.training.noise`; default
            ``"dropout"``, the model's own): ``"embedding:5"`` (NEFTune-style embedding noise;
            instead of ``neftune_noise_alpha``, which is refused beside it), ``"dropout:0.1"``
            (the model's dropout slots switched on), ``"lora:0.1"`` (PEFT LoRA dropout).
            Training passes only: evaluation and generation are the plain model's.
        rdrop_start_step: plain single-pass training before this optimizer step (default 0).
            For a start chosen on validation, pass ``callbacks=[RDropAutoStartCallback(...)]``
            (with evaluation on): plain training until ``patience`` evaluations without
            improvement, R-Drop from the next step on.
        rdrop_second_pass_fraction: ``r`` in ``(0, 1]`` (default 1.0): the second pass and the
            consistency term on the first ``ceil(r * B)`` rows of each batch
            (:func:`rdrop.subset_rdrop_loss`; one forward over ``(1 + r) B`` rows). Its
            ``N_S`` is counted over the accumulated (and global) batch like
            ``num_items_in_batch``. Needs 2 passes and the logits path; packed batches are
            refused.

    Logs ``task_loss``, ``consistency_loss`` and ``task_loss_per_pass`` next to ``loss``
    (``loss = task_loss + alpha * consistency_loss`` on R-Drop steps; ``task_loss`` sums the
    passes, so ``loss`` is about twice ``eval_loss``: compare ``task_loss_per_pass`` with it).

    Raises:
        TypeError, ValueError: invalid hyperparameters; ``compute_loss_func`` given; an
            ``rdrop_noise`` the model cannot take (the message names its modules);
            activation checkpointing with ``preserve_rng_state=False`` (its recompute would
            draw new dropout masks: wrong gradients).
        ValueError: with ``rdrop_fused_linear``: more than 2 passes or a non-KL consistency; a
            model that is not a language model with an ``nn.Linear`` output layer, or that
            transforms its logits after it (a config soft-cap or logit scale at construction; at
            the first training step, the model's logits differ on one sample, in eval mode, from
            the layer applied to its input); FSDP version 1 or DeepSpeed ZeRO-3 (FSDP2 works).

    Example:
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
        (True, 256)
    """


class RDropSeq2SeqTrainer(RDropTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` whose training loss is R-Drop over the decoder tokens.

    Same arguments as :class:`RDropTrainer`; ``decoder_input_ids`` are built from the labels
    (``model.prepare_decoder_input_ids_from_labels``) when the collator did not provide them.
    Evaluation with ``predict_with_generate`` is unchanged.
    """

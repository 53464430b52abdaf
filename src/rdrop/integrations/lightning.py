r"""R-Drop for PyTorch Lightning: ``RDropLightningModule``, a ``LightningModule`` base class.

.. code-block:: diff

    -class Classifier(pl.LightningModule):
    +class Classifier(RDropLightningModule):
         def __init__(self):
    -        super().__init__()
    +        super().__init__(alpha=1.0)
             self.net = ...
         def forward(self, x):
             return self.net(x)
    -    def training_step(self, batch, batch_idx):
    -        x, y = batch
    -        return F.cross_entropy(self(x), y)

The provided ``training_step`` is :class:`rdrop.training.step.TrainingStep`, the same step as
:class:`rdrop.RDrop`: ONE forward over the batch duplicated along dim 0, checked once against a
plain forward (an input whose dim 0 equals ``B`` by coincidence, such as class prototypes
``(C, d)`` with ``C == B`` or a sequence-first ``nn.LSTM`` input, is refused as ``RDrop`` refuses
it; name it in ``unbatched=``), then :func:`rdrop.multi_pass_rdrop_loss` of the
passes. It logs ``train/loss``,
``train/task_loss``, ``train/consistency_loss``, ``train/task_loss_per_pass`` (one pass's loss,
comparable to a validation loss) and ``train/rdrop_alpha``.

When R-Drop runs and with which alpha is :class:`rdrop.Schedule` of
``self.global_step``, the number of optimizer steps taken: with ``accumulate_grad_batches`` every
micro-batch of one optimizer step gets the same decision (Lightning divides each micro-batch's
loss by the accumulation steps, as it does for any loss).

**Accumulation with padded token targets** is a mean of the micro-batches' token means, not the
full batch's token mean (as in plain Lightning): ``training_step`` sees one micro-batch and
Lightning weighs every micro-batch equally, so when their counts of counted tokens differ the
accumulated gradient is not the full batch's. (For one label per sample, or equal counts, the
two agree exactly.) rdrop cannot fix this from inside ``training_step``, which never sees the
other micro-batches' counts. Exact alternatives: the Hugging Face trainers (they prefetch an
optimizer step's micro-batches and pass ``num_items_in_batch``), or :class:`rdrop.RDrop` in a
loop that passes ``num_items_in_batch`` (the count of the accumulated batch).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

from torch import Tensor

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - the unified package
    try:
        import lightning.pytorch as pl  # type: ignore[no-redef]
    except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
        raise ImportError(
            "rdrop.integrations.lightning needs PyTorch Lightning: pip install pytorch-lightning"
        ) from err

from rdrop.losses.checks import ALPHA, IGNORE_INDEX
from rdrop.losses.functional import RDropOutput
from rdrop.training.autostart import StartRule
from rdrop.training.batching import InputName
from rdrop.training.noise import Noise, NoiseHandle, attach_noise
from rdrop.training.options import StepOptions
from rdrop.training.schedule import RDropStep, Schedule
from rdrop.training.step import TrainingStep

__all__ = ["RDropLightningModule"]


class RDropLightningModule(pl.LightningModule):
    r"""A ``LightningModule`` whose ``training_step`` is R-Drop.

    Per counted row, at optimizer step ``s`` (``self.global_step``):

    .. math::
        \mathcal{L} = \sum_{k=1}^m CE(P^k, y) + \alpha_s \cdot \overline{D}(P^j, P^k)

    on the steps :func:`rdrop.training.schedule.rdrop_step` marks active, and one pass's task loss
    on the others. Subclasses define ``forward`` (returning logits, or an output holding them) and
    ``configure_optimizers``; override :meth:`rdrop_batch` when the batch is not ``(x, y)``.

    Args:
        alpha: consistency weight ``>= 0``.
        num_passes: dropout passes ``m >= 2``.
        every_k_steps: R-Drop on every k-th optimizer step.
        alpha_warmup_steps: linear alpha warm-up over the first n optimizer steps.
        consistency: ``"kl"``, ``"js"``, ``"mse"``, or ``"bernoulli"`` (multi-label sigmoid
            heads, float 0/1 targets: :func:`rdrop.multilabel_rdrop_loss`).
        noise: where the passes' randomness comes from (:mod:`rdrop.training.noise`): ``"dropout"``
            (the module's own, the default), ``"embedding:5"``, ``"dropout:0.1"``,
            ``"lora:0.1"``. Attached to the module at the first training step (the subclass
            builds its layers after this ``__init__``), training passes only.
        ignore_index, label_smoothing: as in :func:`rdrop.rdrop_loss`.
        batched, unbatched, check_inputs: as in :class:`rdrop.RDrop` (which inputs carry the
            batch; the once-only check of the duplicated batch against a plain forward).
        stop_gradient: the second pass under ``torch.no_grad``, a detached target (see
            :class:`rdrop.RDrop`).
        start_step: the first optimizer step with R-Drop (an int; plain steps before it), or a
            start rule (:class:`rdrop.PlateauStart`, :class:`rdrop.AutoStart`), updated from
            ``auto_start_metric`` at the end of
            every validation epoch (a subclass overriding ``on_validation_epoch_end`` calls
            ``super().on_validation_epoch_end()``); its state is saved in checkpoints.
        second_pass_fraction: the second pass on the first ``ceil(r * B)`` rows only
            (:func:`rdrop.subset_rdrop_loss`); needs ``num_passes=2``.
        auto_start_metric: the logged validation metric the automatic start watches.

    Raises:
        TypeError, ValueError: invalid hyperparameters (the message names them); at the first
            training step, a duplicated input that is not batched (see above), or a ``noise``
            the module cannot take (the message names its modules).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Net(RDropLightningModule):
        ...     def __init__(self):
        ...         super().__init__(alpha=1.0)
        ...         self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
        ...     def forward(self, x):
        ...         return self.net(x)
        >>> net = Net()
        >>> out = net.rdrop_loss(torch.randn(5, 4), target=torch.randint(0, 3, (5,)))
        >>> out.loss.shape, bool(out.consistency_loss > 0)
        (torch.Size([]), True)
    """

    def __init__(self, *, alpha: float = ALPHA, num_passes: int = 2, every_k_steps: int = 1,
                 alpha_warmup_steps: int = 0, consistency: str = "kl",
                 ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0,
                 batched: list[InputName] | None = None,
                 unbatched: list[InputName] | None = None, check_inputs: bool = True,
                 noise: str | Noise | None = "dropout", stop_gradient: bool = False,
                 start_step: int | StartRule = 0, second_pass_fraction: float = 1.0,
                 auto_start_metric: str = "val_loss") -> None:
        super().__init__()
        # When R-Drop runs (rdrop.training.schedule): checked once here, asked at every step.
        self.rdrop_schedule = Schedule(alpha, every_k_steps, alpha_warmup_steps, start_step)
        self.rdrop_auto_start_metric = auto_start_metric
        # How a step runs its passes (rdrop.training.options): checked once, here.
        self.rdrop_step_options = StepOptions(
            consistency=consistency, ignore_index=ignore_index, label_smoothing=label_smoothing,
            num_passes=num_passes, stop_gradient=stop_gradient,
            second_pass_fraction=second_pass_fraction, noise=noise)
        self.rdrop_noise: NoiseHandle | None = None  # attached at the first training step
        self.rdrop_training_step = TrainingStep(self.rdrop_step_options, batched=batched,
                                                unbatched=unbatched, check_inputs=check_inputs,
                                                pass_context=self._rdrop_pass_context)

    def _rdrop_pass_context(self, passes: range, plan: Any) -> AbstractContextManager[Any]:
        if self.rdrop_noise is None:
            return contextlib.nullcontext()
        return self.rdrop_noise.pass_context(passes, plan)

    @property
    def rdrop_alpha(self) -> float:
        """The target consistency weight (the schedule's)."""
        return self.rdrop_schedule.alpha

    @property
    def rdrop_start_step(self) -> int | StartRule:
        """The first R-Drop optimizer step, or the start rule that chooses it (the schedule's)."""
        return self.rdrop_schedule.start

    def rdrop_decision(self) -> RDropStep:
        """:meth:`rdrop.Schedule.decision` at the current optimizer step (off while a
        start rule has not fired)."""
        return self.rdrop_schedule.decision(self.global_step)

    def on_validation_epoch_end(self) -> None:
        """Feed the start rule (if any) the epoch's ``auto_start_metric``."""
        trainer = self._trainer
        if self.rdrop_schedule.rule is None or trainer is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if self.rdrop_auto_start_metric not in metrics:
            raise KeyError(
                f"RDropLightningModule: the start rule watches "
                f"{self.rdrop_auto_start_metric!r}, which validation did not log (logged: "
                f"{sorted(metrics)}). Log it with self.log in validation_step, or pass "
                "auto_start_metric= one of those."
            )
        self.rdrop_schedule.observe(float(metrics[self.rdrop_auto_start_metric]),
                                    step=int(self.global_step))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the start rule's state in the checkpoint."""
        if self.rdrop_schedule.rule is not None:
            checkpoint["rdrop_auto_start"] = self.rdrop_schedule.rule.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the start rule's state from the checkpoint."""
        if self.rdrop_schedule.rule is not None and "rdrop_auto_start" in checkpoint:
            self.rdrop_schedule.rule.load_state_dict(checkpoint["rdrop_auto_start"])

    def rdrop_batch(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor]:
        """Split a batch into the model's ``(args, kwargs)`` and the target. Default: a
        ``(x, y)`` pair, or a dict with ``"labels"`` (the rest are keyword inputs)."""
        if isinstance(batch, dict):
            inputs = dict(batch)
            return (), inputs, inputs.pop("labels")
        x, y = batch
        return (x,), {}, y

    def rdrop_loss(self, *args: Any, target: Tensor, **kwargs: Any) -> RDropOutput:
        """The R-Drop loss of one training micro-batch at the current optimizer step."""
        if self.rdrop_noise is None:
            self.rdrop_noise = attach_noise(self, self.rdrop_step_options.noise)
        return self.rdrop_training_step(self, args, kwargs, target, self.rdrop_decision()).out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """R-Drop on the batch; logs the loss and its parts, returns the loss."""
        args, kwargs, target = self.rdrop_batch(batch)
        out = self.rdrop_loss(*args, target=target, **kwargs)
        step = self.rdrop_decision()
        # CE terms in the task loss: one per pass with gradient
        options = self.rdrop_step_options
        passes = options.num_passes if step.active and not options.stop_gradient else 1
        size = target.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size)
        self.log("train/task_loss", out.task_loss, batch_size=size)
        self.log("train/consistency_loss", out.consistency_loss, batch_size=size)
        self.log("train/task_loss_per_pass", out.task_loss / passes, batch_size=size)
        self.log("train/rdrop_alpha", step.alpha, batch_size=size)
        return out.loss

"""R-Drop for the Hugging Face ``Trainer`` and ``Seq2SeqTrainer``: change one import.

.. code-block:: diff

    -from transformers import Trainer, TrainingArguments
    +from rdrop.integrations.hf import RDropTrainer as Trainer
    +from rdrop.integrations.hf import RDropTrainingArguments as TrainingArguments
     args = TrainingArguments(output_dir="out", ..., rdrop_alpha=1.0)

What changes, and only in training (``model.training``): ``compute_loss`` pops ``labels``, runs ONE
forward over the batch duplicated along dim 0 (``[x; x]``, so each copy draws its own dropout
masks), splits the logits into the passes and returns
:func:`rdrop.multi_pass_rdrop_loss` with ``ignore_index=-100`` and
``label_smoothing=args.label_smoothing_factor`` (the Trainer's own label smoother is not applied on
top). Evaluation, prediction and generation go through the parent class unchanged (one pass).

One module per job:

* :mod:`.arguments`: ``RDropTrainingArguments`` / ``RDropSeq2SeqTrainingArguments`` (the
  ``rdrop_...`` fields and their checks);
* :mod:`.labels`: which labels count and which logits predict them (the normalization by
  ``num_items_in_batch``, so gradient accumulation gives the full-batch gradient);
* :mod:`.logits`: the logits path (split, loss, packed-batch metadata check);
* :mod:`.fused`: the fused output layer (``rdrop_fused_linear=True``);
* :mod:`.logs`: the loss parts, averaged over the logging window like ``loss``;
* :mod:`.guards`: refusals and warnings (checkpointing without the RNG state, no dropout);
* :mod:`.callbacks`: ``RDropPlateauStartCallback`` (R-Drop on at the validation plateau,
  :class:`rdrop.PlateauStart`) and ``RDropAutoStartCallback`` (once validation stops
  improving, :class:`rdrop.AutoStart`);
* :mod:`.trainer`: the trainers, composing the above; :class:`rdrop.Schedule` of
  ``state.global_step`` decides when R-Drop runs and with which alpha.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "rdrop.integrations.hf needs Hugging Face transformers and accelerate: "
        "pip install 'torch-rdrop[hf]'"
    ) from err

from .arguments import RDropSeq2SeqTrainingArguments, RDropTrainingArguments
from .callbacks import RDropAutoStartCallback, RDropPlateauStartCallback
from .trainer import RDropSeq2SeqTrainer, RDropTrainer, RDropTrainerMixin
from .tryout import tryout

__all__ = [
    "RDropAutoStartCallback",
    "RDropPlateauStartCallback",
    "RDropSeq2SeqTrainer",
    "RDropSeq2SeqTrainingArguments",
    "RDropTrainer",
    "RDropTrainerMixin",
    "RDropTrainingArguments",
    "tryout",
]

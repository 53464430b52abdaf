"""The config fields the two encoder-decoder families share (translation and summarization).

One level below :class:`CommonConfig`; each family subclasses it once, adds its data fields and
sets its own defaults (dropout, alpha, sizes). The recipe they share is
:func:`rdrop_experiments.seq2seq.run_seq2seq`. The module name starts with ``_``, so
:func:`rdrop_experiments.registry.discover` does not import it as a family.
"""

from __future__ import annotations

from dataclasses import dataclass

from rdrop_experiments.config import (
    CommonConfig,
    ConfigError,
    check_heads,
    check_rates,
    check_vocab_size,
)

__all__ = ["Seq2SeqConfig"]


@dataclass(frozen=True)
class Seq2SeqConfig(CommonConfig):
    """Fields of an encoder-decoder family (see :class:`CommonConfig` for the shared ones).

    Attributes:
        data_path: folder for the full-size data formats (``dataset=text|hf``).
        split_seed: seed of the train/valid/test split.
        vocab_size: joint BPE vocabulary, trained on the training split only.
        train_size, valid_size, test_size: caps per split after filtering (0 = all); validation
            pairs score the curves, ``valid_bleu_size`` of them decoded (the name is the
            translation recipe's; summarization decodes them for ROUGE).
        dim, heads, ffn, encoder_layers, decoder_layers: the pre-LN Transformer.
        dropout, attention_dropout, activation_dropout: residual/embedding, attention weights,
            feed-forward (the paper's IWSLT model: 0.3 / 0.1 / 0.1).
        label_smoothing: on the task term (0.1, as the paper).
        select_on: what picks the best-validation checkpoint: ``metric`` (the family's score of
            greedy decoding of ``valid_bleu_size`` validation pairs) or ``loss`` (teacher-forced
            validation NLL per token, lower is better: smooth, and it needs no decoding).
        decode_max_len: greedy decoding stops after this many subwords.
        eval_batch_size: batch size for evaluation and decoding.

    Example:
        >>> Seq2SeqConfig(dim=64, heads=3)
        Traceback (most recent call last):
        ...
        rdrop_experiments.config.ConfigError: dim (64) must be divisible by heads (3).
    """

    data_path: str | None = None
    split_seed: int = 0
    vocab_size: int = 4000
    train_size: int = 0
    valid_size: int = 400
    valid_bleu_size: int = 100
    test_size: int = 1000
    dim: int = 128
    heads: int = 4
    ffn: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 2
    dropout: float = 0.3
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    label_smoothing: float = 0.1
    select_on: str = "metric"
    decode_max_len: int = 40
    eval_batch_size: int = 200
    max_steps: int = 350
    eval_every: int = 70
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 40

    def validate(self) -> None:
        super().validate()
        check_heads(self)
        check_rates(self, "dropout", "attention_dropout", "activation_dropout",
                    "label_smoothing")
        check_vocab_size(self)
        if self.select_on not in ("metric", "loss"):
            raise ConfigError(f"select_on must be metric or loss, got {self.select_on!r}.")
        if self.decode_max_len < 1:
            raise ConfigError(f"decode_max_len must be >= 1, got {self.decode_max_len}.")

"""Abstractive summarization: Debian package long description -> its one-line synopsis, a small
pre-LN Transformer encoder-decoder trained from scratch, baseline vs R-Drop, each trained to
its best validation ROUGE-1; ROUGE-1/2/L (rouge-score, stemmed F1) on a held-out test
split, **greedy** decoding.

The paper fine-tunes BART-large on CNN/DailyMail with alpha = 0.7 (ROUGE-1/2/L 44.16/21.28/40.90
-> 44.51/21.58/41.24). We keep alpha and use the only real document/summary set that ships here:
the Debian descriptions (a paragraph of human-written English and the maintainer's synopsis),
split by a seeded hash of the *source* package so sibling binary packages stay together.
``dataset=text|hf data_path=...`` runs the same recipe on CNN/DailyMail from a local path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rdrop_experiments.config import ConfigError, apply_overrides
from rdrop_experiments.families._seq2seq import Seq2SeqConfig
from rdrop_experiments.protocol import plateau_grid, protocol_grid
from rdrop_experiments.registry import ArmRun, Experiment, RunResult, register
from rdrop_experiments.seq2seq import EncodedPairs, encode_pairs, run_seq2seq

__all__ = ["SummarizationConfig", "rouge_scores", "run_summarization"]


@dataclass(frozen=True)
class SummarizationConfig(Seq2SeqConfig):
    """Summarization config (see :class:`Seq2SeqConfig` for the encoder-decoder fields; BART's
    fine-tuning recipe uses label smoothing 0.1 and dropout 0.1).

    Attributes:
        dataset: ``debian`` | ``text`` (``{split}.source``/``.target``) | ``hf`` (saved dataset
            with ``article``/``highlights``); ``data_path``: apt lists folder or data folder.
        max_src_len: documents are truncated to this many subwords. max_tgt_len: pairs whose
            summary is longer are dropped.
    """

    dataset: str = "debian"
    max_src_len: int = 64
    max_tgt_len: int = 16
    train_size: int = 20000
    dropout: float = 0.1
    decode_max_len: int = 18
    alpha: float = 0.7

    def validate(self) -> None:
        super().validate()
        if self.max_src_len < 2 or self.max_tgt_len < 1:
            raise ConfigError(f"max_src_len must be >= 2 and max_tgt_len >= 1, got "
                              f"{self.max_src_len} and {self.max_tgt_len}.")


def rouge_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 with the rouge-score package (Porter stemming on), as fractions in
    [0, 1]; the report shows them x100, on the paper's scale.

    Example:
        >>> rouge_scores(["a small tool"], ["a small tool"])["rouge1"]
        1.0
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyps, refs, strict=True):
        s = scorer.score(r, h)
        for k in sums:
            sums[k] += s[k].fmeasure
    n = max(1, len(hyps))
    return {k: v / n for k, v in sums.items()}


@lru_cache(maxsize=4)
def _data(dataset: str, path: str | None, split_seed: int, vocab_size: int, max_src_len: int,
          max_tgt_len: int, train_size: int, valid_size: int, test_size: int) -> EncodedPairs:
    from rdrop_experiments.data.text import load_summarization

    raw = load_summarization(dataset, path, seed=split_seed)
    return encode_pairs(raw, vocab_size=vocab_size, src_max=max_src_len, tgt_max=max_tgt_len,
                        truncate_src=True, cache_name=f"summarization-{dataset}",
                        caps={"train": train_size, "valid": valid_size, "test": test_size})


def run_summarization(cfg: SummarizationConfig, ctx: ArmRun) -> RunResult:
    """One seed of one arm: BPE data, train the Transformer, greedy-decode the test split,
    ROUGE-1/2/L."""
    data = _data(cfg.dataset, cfg.data_path, cfg.split_seed, cfg.vocab_size, cfg.max_src_len,
                 cfg.max_tgt_len, cfg.train_size, cfg.valid_size, cfg.test_size)
    return run_seq2seq(cfg, ctx, data, rouge_scores, "rouge1")


# Second protocol (docs/EXPERIMENTS.md), a reduced form: 1,500 training pairs, a 1+1-layer
# d=64 Transformer and a 1k BPE, so the baseline passes its validation optimum within a few
# hundred steps on a shared CPU core. Checkpoints are selected on the teacher-forced
# validation NLL (200 pairs); test: greedy decoding of 200 pairs at each new best checkpoint.
PROTOCOL = {"train_size": 1500, "vocab_size": 1000, "dim": 64, "ffn": 128, "encoder_layers": 1,
            "decoder_layers": 1, "valid_size": 200, "test_size": 200, "batch_size": 32,
            "eval_every": 47, "patience": 3, "max_sample_passes": 32 * 3000, "max_steps": 6000,
            "warmup_steps": 30, "lr": 3e-3, "select_on": "loss"}
# The cap was 32 * 1200 until the amendment of 2026-11-25 20:28: every R-Drop run at alpha 2.0
# hit it before its validation optimum. Grids: dropout 0.1 / 0.3, alpha 0.7 (the paper's CNN/DM
# alpha) / 2.0 (amendment of 19:50).
ALPHA_GRID = (0.7, 2.0)
DROPOUT_GRID = (0.1, 0.3)

register(Experiment(
    name="summarization",
    config=apply_overrides(SummarizationConfig(), PROTOCOL),
    recipe=run_summarization,
    metric="rouge1",
    metrics=("rouge1", "rouge2", "rougeL", "test_loss", "loss_gap"),
    description="Transformer 1+1 (d=64) from scratch, Debian description -> synopsis, 1.5k "
                "pairs sampled (about 820 kept by the synopsis-length filter), BPE 1k, greedy; "
                "trained to best validation NLL",
    data="Debian bookworm Translation-en: long description (truncated to 64 subwords) -> "
         "synopsis (<= 16 subwords), train_size caps the raw pairs before that filter (the "
         "record's extra.sizes holds the kept counts), split by sha256 of the source package",
    paper="CNN/DM (BART-large) ROUGE-1/2/L 44.16/21.28/40.90 -> 44.51/21.58/41.24 (+0.35 R-1)",
    variants={"quick": {"train_size": 300, "valid_size": 20, "valid_bleu_size": 10,
                        "test_size": 20, "eval_every": 10, "patience": 1,
                        "max_sample_passes": 16 * 20, "seeds": 1, "dim": 32, "ffn": 64,
                        "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "warmup_steps": 2,
                        "batch_size": 16, "vocab_size": 300}},
    grid=protocol_grid(dropout_key="dropout", dropout_grid=DROPOUT_GRID, alpha_grid=ALPHA_GRID)
    + plateau_grid(),
))

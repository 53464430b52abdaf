"""Multi-label classification: Debian package description -> its debtags, fine-tuning the packaged
all-MiniLM-L6-v2 encoder with a fresh sigmoid head; baseline (BCE) vs R-Drop with the Bernoulli
symmetric KL (:func:`rdrop.multilabel_rdrop_loss`) vs ``rdrop_alpha0``.

The label set is the ``num_tags`` most frequent debtags over the distinct descriptions (fixed by
that rule before any run; :func:`rdrop_experiments.data.debtags.load_debtags`). Metrics: mean
average precision over the labels (the primary metric, threshold-free; also the validation
metric that selects the checkpoint) and macro-F1 at a 0.5 sigmoid threshold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdrop_experiments.config import CommonConfig, ConfigError, apply_overrides, check_rates
from rdrop_experiments.families.text_classification import encoder_classifier, minilm_path
from rdrop_experiments.protocol import protocol_grid, run_task
from rdrop_experiments.registry import ArmRun, Experiment, RunResult, register
from rdrop_experiments.task import Task
from rdrop_experiments.training import resolve_device

__all__ = ["MultiLabelConfig", "mean_average_precision", "multilabel_macro_f1", "run_multilabel"]


@dataclass(frozen=True)
class MultiLabelConfig(CommonConfig):
    """Multi-label config (see :class:`CommonConfig` for the shared fields).

    Attributes:
        data_path: apt lists folder (default ``/var/lib/apt/lists``).
        num_tags: the most frequent debtags kept as labels. text_field: ``synopsis``, ``long``
            or ``synopsis+long``. split_seed: seed of the hash split.
        train_size, valid_size, test_size: caps per split after a seeded shuffle (0 = all).
        model_path: encoder folder (default: the packaged all-MiniLM-L6-v2).
        max_length: tokens per example. pooling: ``mean`` or ``cls``.
        dropout: hidden and attention dropout of the encoder; head_dropout: before the head.
        encoder_layers: keep the first this many pre-trained layers (0 = all six).
        freeze_embeddings: keep the word-embedding matrix fixed.
        threshold: sigmoid threshold of the F1 metrics.
        eval_batch_size: batch size of evaluation forwards.
    """

    data_path: str | None = None
    num_tags: int = 20
    text_field: str = "synopsis+long"
    split_seed: int = 0
    train_size: int = 1000
    valid_size: int = 500
    test_size: int = 1000
    model_path: str | None = None
    max_length: int = 40
    pooling: str = "mean"
    dropout: float = 0.1
    head_dropout: float = 0.1
    freeze_embeddings: bool = True
    encoder_layers: int = 2
    threshold: float = 0.5
    eval_batch_size: int = 128
    consistency: str = "bernoulli"
    alpha: float = 1.0
    max_steps: int = 5000
    eval_every: int = 63
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30

    def validate(self) -> None:
        super().validate()
        if self.consistency != "bernoulli":
            raise ConfigError(f"the multi-label family compares sigmoid heads with "
                              f"consistency='bernoulli', got {self.consistency!r}.")
        if self.pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be mean or cls, got {self.pooling!r}.")
        check_rates(self, "dropout", "head_dropout")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must lie in (0, 1), got {self.threshold}.")
        if self.num_tags < 2 or self.max_length < 4:
            raise ConfigError(f"num_tags must be >= 2 and max_length >= 4, got {self.num_tags} "
                              f"and {self.max_length}.")


def mean_average_precision(scores: Tensor, target: Tensor) -> float:
    """Mean over labels (with at least one positive) of the average precision of ranking the
    examples by score: ``AP_c = (1 / P_c) sum_{k: y_kc = 1} precision@rank(k)``.

    Example:
        >>> s = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
        >>> y = torch.tensor([[1, 0], [0, 1], [1, 0]])
        >>> round(mean_average_precision(s, y), 4)   # label 0: (1/1 + 2/3) / 2; label 1: 1
        0.9167
    """
    aps = []
    for c in range(target.shape[1]):
        rel = target[torch.argsort(scores[:, c], descending=True, stable=True), c].double()
        if rel.sum() == 0:
            continue
        precision = rel.cumsum(0) / torch.arange(1, len(rel) + 1, dtype=torch.float64)
        aps.append(float((precision * rel).sum() / rel.sum()))
    return sum(aps) / max(1, len(aps))


def multilabel_macro_f1(pred: Tensor, target: Tensor) -> float:
    """Unweighted mean over labels of F1 = 2TP / (2TP + FP + FN), over labels that occur in
    ``target`` or ``pred``.

    Example:
        >>> p = torch.tensor([[1, 0], [1, 1]]).bool()
        >>> y = torch.tensor([[1, 0], [0, 1]]).bool()
        >>> round(multilabel_macro_f1(p, y), 4)    # label 0: 2/3, label 1: 1
        0.8333
    """
    scores = []
    for c in range(target.shape[1]):
        tp = int((pred[:, c] & target[:, c]).sum())
        fp = int((pred[:, c] & ~target[:, c]).sum())
        fn = int((~pred[:, c] & target[:, c]).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / max(1, len(scores))


def _multi_hot(label_sets: list[list[int]], n: int) -> Tensor:
    y = torch.zeros(len(label_sets), n)
    for i, labels in enumerate(label_sets):
        y[i, labels] = 1.0
    return y


@lru_cache(maxsize=2)
def _data(data_key: tuple[Any, ...], model_path: str, max_length: int):  # type: ignore[no-untyped-def]
    """Load, cap and tokenize every split once per process (every arm and seed shares it)."""
    from transformers import AutoTokenizer

    from rdrop_experiments.data.debtags import load_debtags

    data_path, num_tags, text_field, split_seed, caps = data_key
    data = load_debtags(num_tags=num_tags, text_field=text_field, split_seed=split_seed,
                        lists_dir=data_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tensors = {}
    for split, (texts, label_sets) in data.splits.items():
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(1234)).tolist()
        if dict(caps)[split]:
            order = order[: dict(caps)[split]]
        enc = tokenizer([texts[i] for i in order], truncation=True, max_length=max_length,
                        padding="max_length", return_tensors="pt")
        y = _multi_hot([label_sets[i] for i in order], len(data.labels))
        tensors[split] = (enc["input_ids"], enc["attention_mask"], y)
    return data, tensors


@torch.no_grad()
def _evaluate(model: nn.Module, split: tuple[Tensor, Tensor, Tensor], batch_size: int,
              threshold: float) -> dict[str, float]:
    model.eval()
    ids, mask, y = split
    logits = torch.cat([model(ids[i : i + batch_size], mask[i : i + batch_size])
                        for i in range(0, len(y), batch_size)])
    scores = torch.sigmoid(logits)
    return {"loss": F.binary_cross_entropy_with_logits(logits, y).item(),
            "map": mean_average_precision(scores, y),
            "macro_f1": multilabel_macro_f1(scores > threshold, y.bool())}


def run_multilabel(cfg: MultiLabelConfig, ctx: ArmRun) -> RunResult:
    """One seed of one arm: fine-tune until validation mAP stalls, test at its best checkpoint
    (:func:`run_task`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model_path = cfg.model_path or minilm_path()
    caps = (("test", cfg.test_size), ("train", cfg.train_size), ("valid", cfg.valid_size))
    data, splits = _data((cfg.data_path, cfg.num_tags, cfg.text_field, cfg.split_seed, caps),
                         model_path, cfg.max_length)
    device = resolve_device(cfg.device)
    splits = {k: tuple(t.to(device) for t in v) for k, v in splits.items()}
    ids, mask, y = splits["train"]
    n_probe = min(len(y), 128)  # fixed training slice for the curves
    ctx.record_data(splits)
    splits["train"] = (ids[:n_probe], mask[:n_probe], y[:n_probe])

    def batch(idx: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        idx = idx.to(device)
        return (ids[idx], mask[idx]), y[idx]

    return run_task(Task(
        model=lambda: encoder_classifier(cfg, model_path, len(data.labels)), batch=batch,
        n_train=len(y), device=device, metric="map", clip_norm=1.0, report_valid=True,
        evaluate=lambda net, split: _evaluate(net, splits[split], cfg.eval_batch_size,
                                              cfg.threshold),
        parameters_key="trainable_parameters",
        extra={"data": data.source, "labels": data.labels,
               "sizes": {k: len(v[2]) for k, v in splits.items() if k != "train"}
               | {"train": len(y)},
               "available": data.sizes(), "data_meta": data.meta}), cfg, ctx)


# Registered in docs/EXPERIMENTS.md (issue 17, 2026-12-04) before any run. Sizes: one baseline
# calibration run at 1000 / 500 / 1000 sentences of 40 tokens passed its validation optimum at
# epoch 6 and stopped on patience at epoch 9 (about 3 CPU-minutes); the family was then shrunk,
# by cost alone, to fit the CPU budget of 5 seeds x 3 arms.
PROTOCOL = {"train_size": 600, "valid_size": 400, "test_size": 800, "max_length": 32,
            "eval_every": 38, "patience": 3, "max_sample_passes": 16 * 1500, "seeds": 5}

register(Experiment(
    name="multilabel-debtags",
    config=apply_overrides(MultiLabelConfig(), PROTOCOL),
    recipe=run_multilabel,
    metric="map",
    metrics=("map", "macro_f1", "test_loss", "loss_gap"),
    description="fine-tune all-MiniLM-L6-v2 (packaged, first 2 layers) with a sigmoid head on "
                "Debian description -> its debtags (20 most frequent), 600 training texts; "
                "R-Drop with the Bernoulli symmetric KL; trained to best validation mAP",
    data="Debian bookworm package descriptions (apt lists) -> their debtags (Tag: field), the "
         "20 most frequent tags; 600 train / 400 valid / 800 test, split by seeded hash of the "
         "source package",
    paper="no multi-label result in the paper (R-Drop's KL is for softmax heads)",
    variants={"quick": {"train_size": 32, "valid_size": 16, "test_size": 16, "max_length": 12,
                        "eval_every": 2, "patience": 1, "max_sample_passes": 16 * 4, "seeds": 1,
                        "num_tags": 5, "eval_batch_size": 32, "warmup_steps": 1}},
    grid=protocol_grid(dropout_key="dropout", dropout_grid=(0.1,), alpha_grid=(1.0,)),
))

"""The encoder-decoder recipe shared by the translation and summarization families: encode text
pairs with a BPE trained on the training split, train a small Transformer until the validation
metric stalls (:func:`rdrop_experiments.protocol.run_task`), score greedy decodings of the test
split at the best-validation checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rdrop_experiments.protocol import run_task
from rdrop_experiments.registry import ArmRun, RunResult
from rdrop_experiments.task import Task
from rdrop_experiments.training import resolve_device

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "EncodedPairs", "encode_pairs", "pad",
           "run_seq2seq"]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class EncodedPairs:
    """Token ids per split (``src``/``tgt`` lists of 1-D tensors; ``tgt`` wrapped in BOS/EOS)
    and the raw reference texts, with the tokenizer used."""

    src: dict[str, list[Tensor]]
    tgt: dict[str, list[Tensor]]
    refs: dict[str, list[str]]
    tokenizer: Any
    source: str
    meta: dict[str, Any]

    def sizes(self) -> dict[str, int]:
        """Pairs per split."""
        return {k: len(v) for k, v in self.src.items()}


def _cap(items: list[Any], n: int) -> list[Any]:
    return items if n <= 0 else items[:n]


def encode_pairs(data: Any, *, vocab_size: int, src_max: int, tgt_max: int, truncate_src: bool,
                 caps: dict[str, int], cache_name: str | None) -> EncodedPairs:
    """Train a joint BPE on the training pairs only, encode every split.

    Each split is first put in a fixed pseudo-random order (seed 1234, the same for every run;
    loaders return canonical or alphabetical order, and a cap must not keep only Genesis or
    only packages starting with "a"). The training split is capped to ``caps["train"]`` pairs
    *before* the BPE is trained (0 = all), so the vocabulary sees exactly the training text
    used. Pairs whose target exceeds ``tgt_max`` subwords are dropped; the source is dropped
    too when over ``src_max`` unless ``truncate_src`` (summarization truncates documents).
    ``valid``/``test`` are capped after filtering.
    """
    from rdrop_experiments.data.text import train_bpe

    shuffled = {}
    for split, pairs in data.splits.items():
        perm = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(1234))
        shuffled[split] = [pairs[i] for i in perm.tolist()]
    shuffled["train"] = _cap(shuffled["train"], caps.get("train", 0))
    train_text = [t for pair in shuffled["train"] for t in pair]
    tok = train_bpe(train_text, vocab_size, cache_name=cache_name)
    src, tgt, refs = {}, {}, {}
    for split, pairs in shuffled.items():
        s_ids = tok.encode_batch([p[0] for p in pairs])
        t_ids = tok.encode_batch([p[1] for p in pairs])
        keep_s, keep_t, keep_r = [], [], []
        for (_, ref), s, t in zip(pairs, s_ids, t_ids, strict=True):
            s, t = s.ids, t.ids
            if not s or not t or len(t) > tgt_max or (len(s) > src_max and not truncate_src):
                continue
            keep_s.append(torch.tensor([*s[:src_max], EOS_ID]))
            keep_t.append(torch.tensor([BOS_ID, *t, EOS_ID]))
            keep_r.append(ref)
        n = 0 if split == "train" else caps.get(split, 0)
        src[split], tgt[split], refs[split] = _cap(keep_s, n), _cap(keep_t, n), _cap(keep_r, n)
    return EncodedPairs(src, tgt, refs, tok, data.source,
                        {**data.meta, "vocab_size": tok.get_vocab_size(),
                         "raw_sizes": data.sizes()})


def pad(seqs: Sequence[Tensor], pad_id: int = PAD_ID) -> Tensor:
    """Right-pad 1-D id tensors to a (B, T) batch.

    Example:
        >>> pad([torch.tensor([5, 6]), torch.tensor([7])]).tolist()
        [[5, 6], [7, 0]]
    """
    return nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_id)


@torch.no_grad()
def _teacher_forced_nll(model: nn.Module, src: list[Tensor], tgt: list[Tensor],
                        batch_size: int) -> float:
    """Per-token NLL (no label smoothing, padding excluded), eval mode."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(src), batch_size):
        t = pad(tgt[i : i + batch_size]).to(device)
        logits = model(pad(src[i : i + batch_size]).to(device), t[:, :-1])
        y = t[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                 ignore_index=PAD_ID, reduction="sum").item()
        count += int((y != PAD_ID).sum())
    return total / max(1, count)


@torch.no_grad()
def _decode(model: Any, tok: Any, src: list[Tensor], batch_size: int, max_len: int) -> list[str]:
    model.eval()
    device = next(model.parameters()).device
    hyps: list[str] = []
    order = sorted(range(len(src)), key=lambda i: len(src[i]))  # less padding per batch
    out: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        # Stop at twice the longest source (+4) when that is shorter than max_len: an untrained
        # model repeats itself until the limit, and the limit is what decoding time pays for.
        limit = min(max_len, 2 * max(len(src[j]) for j in idx) + 4)
        ids = model.greedy_decode(pad([src[j] for j in idx]).to(device), bos_id=BOS_ID,
                                  eos_id=EOS_ID, max_len=limit)
        for j, row in zip(idx, ids.tolist(), strict=True):
            row = row[: row.index(EOS_ID)] if EOS_ID in row else row
            out[j] = tok.decode([t for t in row if t != PAD_ID])
    hyps = [out[j] for j in range(len(src))]
    return hyps


def run_seq2seq(cfg: Any, ctx: ArmRun, data: EncodedPairs,
                score: Callable[[list[str], list[str]], dict[str, float]],
                metric: str) -> RunResult:
    """One seed of one arm for an encoder-decoder family (:func:`run_task`).

    Every arm: label-smoothed CE (``ignore_index`` = padding) on the token logits (B, T, V),
    trained until ``valid_<metric>`` (greedy decoding of ``cfg.valid_bleu_size`` validation
    pairs, or the teacher-forced NLL with ``select_on=loss``) stalls. Curves also carry
    eval-mode per-token NLL on a fixed training slice and on the validation split. Test: greedy
    decoding of the whole test split at each new best-validation checkpoint, scored by
    ``score(hyps, refs)``; the record keeps five samples of it.
    """
    from rdrop_experiments.models.seq2seq import Seq2SeqTransformer

    src_tr, tgt_tr = data.src["train"], data.tgt["train"]
    n_probe = min(len(src_tr), 128)  # fixed training slice for the curves
    ctx.record_data(data.src, data.tgt, data.refs)
    device = resolve_device(cfg.device)
    n_vb = 0 if cfg.select_on == "loss" else min(cfg.valid_bleu_size, len(data.src["valid"]))
    samples: list[dict[str, str]] = []

    def model() -> nn.Module:
        return Seq2SeqTransformer(
            vocab_size=data.tokenizer.get_vocab_size(), dim=cfg.dim, heads=cfg.heads,
            ffn=cfg.ffn, encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
            dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout, pad_id=PAD_ID,
            max_len=max(512, cfg.decode_max_len + 2))

    def batch(idx: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        rows = idx.tolist()
        tgt = pad([tgt_tr[i] for i in rows]).to(device)
        return (pad([src_tr[i] for i in rows]).to(device), tgt[:, :-1]), tgt[:, 1:]

    def evaluate(net: nn.Module, split: str) -> dict[str, float]:
        if split == "train":
            return {"loss": _teacher_forced_nll(net, src_tr[:n_probe], tgt_tr[:n_probe],
                                                cfg.eval_batch_size)}
        src, tgt, refs = data.src[split], data.tgt[split], data.refs[split]
        scores = {"loss": _teacher_forced_nll(net, src, tgt, cfg.eval_batch_size)}
        if split == "valid":
            if not n_vb:  # selecting on the loss: no validation decoding
                return scores
            src, refs = src[:n_vb], refs[:n_vb]
        hyps = _decode(net, data.tokenizer, src, cfg.eval_batch_size, cfg.decode_max_len)
        scores.update(score(hyps, refs))
        if split == "test":
            samples[:] = [{"hyp": h, "ref": r} for h, r in zip(hyps[:5], refs[:5], strict=False)]
        return scores

    return run_task(Task(
        model=model, batch=batch, n_train=len(src_tr), evaluate=evaluate,
        metric="loss" if cfg.select_on == "loss" else metric,
        higher_is_better=cfg.select_on != "loss", device=device, ignore_index=PAD_ID,
        label_smoothing=cfg.label_smoothing, clip_norm=1.0, betas=(0.9, 0.98),
        extra={"data": data.source, "sizes": data.sizes(), "data_meta": data.meta,
               "decoding": "greedy", "samples": samples}), cfg, ctx)

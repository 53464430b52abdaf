"""Tiny models for the integration tests, and a dropout whose masks are reproducible.

``KeyedDropout`` draws each row's mask from a generator seeded by (sample id, pass), where the pass
of a row is how many times the layer saw that sample id before (earlier rows of the same forward
in concat mode, earlier forwards in twice mode). The masks then do
not depend on how samples are grouped into batches, micro-batches or ranks, so a gradient computed
in pieces can be compared exactly with the full-batch gradient while dropout is really on (the two
passes differ, so the consistency term is not zero). It also records the ids of every forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class KeyedDropout(nn.Dropout):
    def __init__(self, p: float = 0.3) -> None:
        super().__init__(p)
        self.seen: list[list[int]] = []  # sample ids of each training forward, in row order
        self.times_seen: dict[int, int] = {}

    def forward(self, h: Tensor, ids: Tensor) -> Tensor:
        if not self.training:
            return h
        self.seen.append(ids.tolist())
        masks = []
        for sid in ids.tolist():
            k = self.times_seen.get(sid, 0)
            self.times_seen[sid] = k + 1
            g = torch.Generator().manual_seed(1000 * int(sid) + k)
            masks.append(torch.rand(h.shape[1:], generator=g) >= self.p)
        mask = torch.stack(masks).to(device=h.device, dtype=h.dtype)
        return h * mask / (1 - self.p)


class TokenTagger(nn.Module):
    """(B, T) token ids -> (B, T, V) logits, with keyed dropout; a stand-in for a seq model."""

    def __init__(self, vocab: int = 11, hidden: int = 8, p: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, hidden)
        self.drop = KeyedDropout(p)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, input_ids: Tensor, sample_id: Tensor, labels: Tensor | None = None) -> Any:
        h = torch.tanh(self.emb(input_ids))
        return {"logits": self.out(self.drop(h, sample_id))}


class TokenTaggerKw(TokenTagger):
    """The same model with ``**kwargs`` in forward, so the HF Trainer counts num_items itself."""

    def forward(self, input_ids: Tensor, sample_id: Tensor, labels: Tensor | None = None,
                **kwargs: Any) -> Any:
        return super().forward(input_ids, sample_id)


def tagging_data(n: int = 8, length: int = 6, vocab: int = 11, seed: int = 0) -> list[dict]:
    """Samples with a different number of padded (-100) label positions each."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(0, vocab, (length,), generator=g)
        labels = torch.randint(0, vocab, (length,), generator=g)
        labels[1 + (i * 3) % (length - 1):] = -100
        rows.append({"input_ids": ids, "sample_id": torch.tensor(i), "labels": labels})
    return rows


def tiny_bert(num_labels: int = 3, dropout: float = 0.1, seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=num_labels,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg)


def classification_data(n: int = 16, length: int = 8, regression: bool = False,
                        seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        label: Any = float(torch.randn((), generator=g)) if regression else i % 3
        rows.append({"input_ids": torch.randint(1, 50, (length,), generator=g), "labels": label})
    return rows


def tiny_bart(seed: int = 0) -> nn.Module:
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, max_position_embeddings=32, dropout=0.1, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    return BartForConditionalGeneration(cfg)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    return GPT2LMHeadModel(cfg)


def seq2seq_data(n: int = 8, seed: int = 0) -> list[dict]:
    """Source/target pairs of varying length (BART ids: pad 1, eos 2)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        src = [*torch.randint(3, 40, (4 + i % 3,), generator=g).tolist(), 2]
        tgt = [*torch.randint(3, 40, (2 + i % 4,), generator=g).tolist(), 2]
        rows.append({"input_ids": src, "labels": tgt})
    return rows


def pad_collate(rows: list[dict]) -> dict[str, Tensor]:
    """Pad input_ids with 1 (mask 0) and labels with -100."""
    width = max(len(r["input_ids"]) for r in rows)
    lwidth = max(len(r["labels"]) for r in rows)
    ids = torch.full((len(rows), width), 1)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), lwidth), -100)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, :len(r["input_ids"])] = 1
        labels[i, :len(r["labels"])] = torch.tensor(r["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_args(tmp_path: Any, cls: Any = None, **kw: Any) -> Any:
    """Quiet CPU training arguments for the trainer tests (``cls`` defaults to
    ``RDropTrainingArguments``); ``kw`` overrides."""
    if cls is None:
        from rdrop.integrations.hf import RDropTrainingArguments as cls
    base = {"output_dir": str(tmp_path), "report_to": "none", "use_cpu": True,
            "save_strategy": "no", "logging_steps": 1, "per_device_train_batch_size": 4,
            "disable_tqdm": True, "seed": 0}
    base.update(kw)
    return cls(**base)


def grad_recorder() -> Any:
    """A Trainer callback keeping a copy of every parameter gradient just before each optimizer
    step (``.grads``: one ``{name: grad}`` per step)."""
    from transformers import TrainerCallback

    class GradRecorder(TrainerCallback):
        def __init__(self) -> None:
            self.grads: list[dict[str, Tensor]] = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                               if p.grad is not None})

    return GradRecorder()


def tiny_tokenizer(words: list[str] | None = None) -> Any:
    """A word-level fast tokenizer built offline (no hub): specials <pad> <eos> <unk>, then
    ``words``; a chat template so TRL can also take conversational data."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = words or [f"w{i}" for i in range(29)]
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def tiny_llama(vocab_size: int = 32, dropout: float = 0.1, seed: int = 0) -> nn.Module:
    """A 1-layer Llama with attention dropout (Llama has no other dropout), random init."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, attention_dropout=dropout, pad_token_id=0,
                      eos_token_id=1, bos_token_id=None, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def sft_texts(n: int = 8, seed: int = 0) -> list[str]:
    """Texts of 3 to 9 words over tiny_tokenizer's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, 29, (3 + k % 7,), generator=g))
            for k in range(n)]


class VarlenTagger(nn.Module):
    """A packed-sequence model that reads the varlen metadata as a flash-attention varlen kernel
    does, and refuses metadata that does not describe its tokens: one row of ``N`` tokens,
    ``cu_seq_lens_q/k`` the boundaries (ending at ``N``), ``max_length_q/k`` the longest
    sequence, ``position_ids`` restarting at each boundary. "Attention" is a causal running mean
    inside each sequence, so tokens never see another sequence (or another R-Drop copy)."""

    def __init__(self, vocab: int = 11, hidden: int = 8, p: float = 0.3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(p)
        self.out = nn.Linear(hidden, vocab)
        self.calls: list[dict[str, Any]] = []

    def forward(self, input_ids: Tensor, position_ids: Tensor, cu_seq_lens_q: Tensor,
                cu_seq_lens_k: Tensor, max_length_q: int, max_length_k: int,
                labels: Tensor | None = None, **kwargs: Any) -> Any:
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"varlen: expected one row of tokens, got {tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        for cu, longest in ((cu_seq_lens_q, max_length_q), (cu_seq_lens_k, max_length_k)):
            if int(cu[0]) != 0 or int(cu[-1]) != n:
                raise ValueError(f"varlen: boundaries {cu.tolist()} do not cover {n} tokens")
            if int(cu.diff().max()) != int(longest):
                raise ValueError(f"varlen: max_length {longest} != longest {cu.diff().max()}")
        self.calls.append({"n": n, "cu": cu_seq_lens_q.tolist()})
        h = self.emb(input_ids[0])
        pieces = []
        for s, e in zip(cu_seq_lens_q[:-1].tolist(), cu_seq_lens_q[1:].tolist(), strict=True):
            if position_ids[0, s:e].tolist() != list(range(e - s)):
                raise ValueError("varlen: position_ids do not restart at the boundaries")
            seg = h[s:e]
            pieces.append(seg.cumsum(0) / torch.arange(1, e - s + 1)[:, None])
        h = torch.tanh(torch.cat(pieces))
        return {"logits": self.out(self.drop(h))[None]}


def packed_batch(lengths: tuple[int, ...] = (3, 4, 2), vocab: int = 11,
                 seed: int = 0) -> dict[str, Tensor]:
    """A padding-free batch as TRL's collator builds it (labels -100 at each sequence start)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=g)
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[position_ids == 0] = -100
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": position_ids, "labels": labels,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(),
            "max_length_q": max(lengths), "max_length_k": max(lengths)}

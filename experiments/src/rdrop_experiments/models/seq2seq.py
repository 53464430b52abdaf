"""A small pre-LN Transformer encoder-decoder with tied embeddings, for translation and
summarization trained from scratch on CPU.

Dropout sits where the paper's fairseq Transformer has it: on the scaled embeddings plus
positions (``dropout``), on every residual branch (``dropout``), on the attention weights
(``attention_dropout``) and inside the feed-forward block (``activation_dropout``). Every rate is
an ``nn.Dropout`` module or an ``attention_dropout`` float attribute, so
:func:`rdrop_experiments.training.set_dropout` (the harness's per-pass dropout rates) and
:func:`rdrop.training.inspection.active_dropout_rates` reach all of them.

Decoding is **greedy** (batched, no beam): :meth:`Seq2SeqTransformer.greedy_decode`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DecoderLayer",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "Seq2SeqTransformer",
    "sinusoidal_positions",
]


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The Transformer's fixed sinusoidal position table, shape ``(length, dim)``.

    Example:
        >>> sinusoidal_positions(4, 6).shape
        torch.Size([4, 6])
    """
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``F.scaled_dot_product_attention``.

    ``attention_dropout`` is a float attribute (dropout on the attention weights, training only),
    which :func:`rdrop_experiments.training.set_dropout` recognises.
    """

    def __init__(self, dim: int, heads: int, attention_dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.attention_dropout = float(attention_dropout)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: Tensor, memory: Tensor, *, mask: Tensor | None = None, causal: bool = False
    ) -> Tensor:
        """``x`` (B, T, D) attends to ``memory`` (B, S, D); ``mask`` (B, 1, 1|T, S) is True
        where attention is allowed."""
        b, t, d = x.shape
        h = self.heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(memory).view(b, memory.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                           is_causal=causal and mask is None)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout (``activation_dropout``) -> Linear."""

    def __init__(self, dim: int, hidden: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(activation_dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Pre-LN self-attention block and feed-forward block, dropout on each residual branch."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, activation_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask=mask))
        return x + self.drop(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention, cross-attention (skipped when ``memory`` is None: a
    decoder-only LM), feed-forward; dropout on each residual branch."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, *, cross: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.cross = cross
        if cross:
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attn = MultiHeadAttention(dim, heads, attention_dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn, activation_dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor | None = None,
                memory_mask: Tensor | None = None) -> Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.self_attn(h, h, causal=True))
        if self.cross and memory is not None:
            x = x + self.drop(self.cross_attn(self.norm2(x), memory, mask=memory_mask))
        return x + self.drop(self.ffn(self.norm3(x)))


class Seq2SeqTransformer(nn.Module):
    """Pre-LN Transformer encoder-decoder, one vocabulary shared by source and target, with the
    encoder embedding, decoder embedding and output projection tied (one matrix).

    ``forward(src, tgt_in) -> logits (B, T, V)``; ``pad_id`` positions of ``src`` are masked out
    of attention (padded target positions are ignored by the loss, ``ignore_index``).

    Args:
        vocab_size: shared vocabulary size. dim, heads, ffn: widths. encoder_layers,
            decoder_layers: depths. dropout: embeddings and residual branches (the paper's
            IWSLT setting is 0.3). attention_dropout, activation_dropout: inside attention and
            the feed-forward block. pad_id: padding token. max_len: position table length.

    Example:
        >>> m = Seq2SeqTransformer(vocab_size=20, dim=16, heads=2, ffn=32, encoder_layers=1,
        ...                        decoder_layers=1)
        >>> m(torch.randint(4, 20, (3, 7)), torch.randint(4, 20, (3, 5))).shape
        torch.Size([3, 5, 20])
    """

    def __init__(self, *, vocab_size: int, dim: int = 128, heads: int = 4, ffn: int = 512,
                 encoder_layers: int = 3, decoder_layers: int = 3, dropout: float = 0.3,
                 attention_dropout: float = 0.1, activation_dropout: float = 0.1,
                 pad_id: int = 0, max_len: int = 512) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.dim = dim
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.embed.weight, std=dim**-0.5)
        with torch.no_grad():
            self.embed.weight[pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_len, dim), persistent=False)
        self.embed_drop = nn.Dropout(dropout)
        args = (dim, heads, ffn, dropout, attention_dropout, activation_dropout)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(decoder_layers))
        self.enc_norm = nn.LayerNorm(dim)
        self.dec_norm = nn.LayerNorm(dim)

    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.dim) + self.positions[: tokens.shape[1]]
        return self.embed_drop(x)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder states (B, S, D) and the key mask (B, 1, 1, S), True on real tokens."""
        mask = (src != self.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Logits (B, T, V) for the decoder inputs ``tgt_in`` given encoder states."""
        x = self._embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, memory_mask)
        return F.linear(self.dec_norm(x), self.embed.weight)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    @torch.no_grad()
    def greedy_decode(self, src: Tensor, *, bos_id: int, eos_id: int, max_len: int) -> Tensor:
        """Greedy decoding (argmax each step; no beam search, no length penalty).

        Returns:
            Token ids (B, <= max_len) without the leading BOS; positions after EOS are ``pad_id``.
        """
        memory, mask = self.encode(src)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            nxt = self.decode(out, memory, mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return out[:, 1:]
